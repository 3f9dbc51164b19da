"""Run directories: `runs/<family>/<name>/` with config.json, metrics.jsonl, plots/*.png, summary.md.

A `Run` is where a training or evaluation command leaves everything a reader needs afterwards;
checkpoints live under `checkpoints/` inside it so `--resume` finds them. `set_threads` is the one place
that sets torch's CPU threads for a command or a benchmark.

A `Run` holds an exclusive lock on `<run>/.lock` (fcntl.flock) while it lives: a second process that opens
the same run folder gets a clear `RunInUseError` naming the holder's process id, instead of two writers
corrupting one folder. The lock dies with its process, so a run killed with SIGKILL leaves no stale lock.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
import time
import weakref
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

from .data import atomic_write, fault_point, read_jsonl
from .errors import DiskError, RunInUseError, disk_error_message, disk_errors

try:
    import fcntl
except ImportError:  # Windows: no run lock
    fcntl = None

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def default_run_name() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def set_threads(n: int, at_most: bool = False, blas: bool = False) -> int:
    """Set the CPU threads of torch's intra-op pool: the one place that does, for commands and benchmarks.

    Args:
        n: the number of threads (at least 1 is used).
        at_most: never raise the current count (the cores, or OMP_NUM_THREADS when the user set it), only
            lower it to n: what a command does on a shared machine, where oversubscribing is slower.
        blas: limit NumPy's BLAS pool to the same number (threadpoolctl), for code whose small matrix
            products run there.

    Returns:
        the number of threads set.
    """
    import torch

    threads = max(1, min(n, torch.get_num_threads()) if at_most else n)
    torch.set_num_threads(threads)
    if blas:
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads, user_api="blas")
    return threads


LOCK_FILE = ".lock"
# run folder (resolved) -> [open lock file descriptor, number of live Run objects of this process on it]
_locks: dict[str, list[int]] = {}
_locks_guard = threading.Lock()


def _lock_holder(path: Path) -> str:
    with contextlib.suppress(OSError, ValueError):
        return f"process {int((path / LOCK_FILE).read_text().split()[0])}"
    return "another process"


def acquire_run_lock(path: Path) -> str:
    """Take (or share, within this process) the exclusive lock of run folder `path`; returns its key.

    Raises:
        RunInUseError when another process holds it; DiskError when the folder is not writable.
    """
    key = str(Path(path).resolve())
    with _locks_guard:
        if key in _locks:
            _locks[key][1] += 1
            return key
        if fcntl is None:
            _locks[key] = [-1, 1]
            return key
        try:
            fault_point("run.lock")
            fd = os.open(Path(path) / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            message = disk_error_message(err, f"run folder {path}")
            if message is None:
                raise
            raise DiskError(message) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunInUseError(
                f"run folder {path} is in use by {_lock_holder(Path(path))}; wait for it to end, or pass "
                "another --name / output folder"
            ) from None
        with contextlib.suppress(OSError):  # the holder's id, for the message above; the lock is the flock
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _locks[key] = [fd, 1]
        return key


def release_run_lock(key: str) -> None:
    """Drop one reference to a run lock of this process; the last one unlocks the folder."""
    with _locks_guard:
        entry = _locks.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] > 0:
            return
        del _locks[key]
        if entry[0] >= 0:
            with contextlib.suppress(OSError):
                os.close(entry[0])  # closing the descriptor releases the flock


class Run:
    """One run directory.

    Args:
        family: the family name, the first path component under `root`.
        name: the run name (default: a timestamp).
        root: where runs live (default `runs/`).
        path: an explicit folder, overriding root/family/name.
    """

    def __init__(self, family: str, name: str | None = None, root: str | Path = "runs", path: str | Path | None = None):
        self.family = family
        self.name = name or default_run_name()
        self.path = Path(path) if path is not None else Path(root) / family / self.name
        with disk_errors(f"run folder {self.path}"):
            self.path.mkdir(parents=True, exist_ok=True)
        self._lock_key = acquire_run_lock(self.path)
        self._lock_release = weakref.finalize(self, release_run_lock, self._lock_key)
        with disk_errors(f"run folder {self.path}"):
            self.plots_dir.mkdir(exist_ok=True)

    def close(self) -> None:
        """Release the run folder's lock now (it is released anyway when the Run is collected or the process ends)."""
        self._lock_release()

    @property
    def plots_dir(self) -> Path:
        return self.path / "plots"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    def write_config(self, config: Any) -> Path:
        """Save the run's config (a `Config` or a dict) to config.json."""
        data = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        path = self.path / "config.json"
        with disk_errors(f"{path}"):
            atomic_write(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
        return path

    def log(self, step: int, **metrics: float) -> None:
        """Append one line {"step", "time", **metrics} to metrics.jsonl (flushed, so a crash keeps it)."""
        record = {"step": int(step), "time": round(time.time(), 3)}
        for key, value in metrics.items():
            record[key] = float(value) if hasattr(value, "__float__") else value
        with disk_errors(f"{self.metrics_path}"), open(self.metrics_path, "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        return [row for _, row in read_jsonl(self.metrics_path)]

    def truncate_metrics(self, after_step: int) -> None:
        """Drop metric lines past `after_step` (on resume, steps after the checkpoint are re-done)."""
        if not self.metrics_path.exists():
            return
        lines = self.metrics_path.read_bytes().splitlines()
        rows = []
        for number, raw in enumerate(lines, 1):
            try:
                rows.append(json.loads(raw))
            except (json.JSONDecodeError, UnicodeDecodeError):
                if number == len(lines):
                    break  # a line torn by a kill during its write
                raise
        rows = [r for r in rows if isinstance(r, dict) and r.get("step", 0) <= after_step]
        with disk_errors(f"{self.metrics_path}"):
            atomic_write(self.metrics_path, "".join(json.dumps(r) + "\n" for r in rows))

    def plot_metrics(self, keys: Sequence[str], filename: str = "loss.png", title: str | None = None,
                     logy: bool = False) -> Path | None:
        """Line plot of the given metric keys against step; one panel per key. None if nothing logged."""
        rows = self.read_metrics()
        keys = [k for k in keys if any(k in r for r in rows)]
        if not keys:
            return None
        fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.2), squeeze=False)
        for ax, key in zip(axes[0], keys, strict=True):
            points = [(r["step"], r[key]) for r in rows if key in r and _finite(r[key])]
            if points:
                steps, values = zip(*points, strict=True)
                ax.plot(steps, values, lw=1.4)
            ax.set_title(key)
            ax.set_xlabel("step")
            if logy:
                ax.set_yscale("log")
            ax.grid(alpha=0.3)
        if title:
            fig.suptitle(title)
        return self.save_figure(fig, filename)

    def save_figure(self, fig, filename: str) -> Path:
        path = self.plots_dir / filename
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path

    def write_summary(self, title: str, metrics: dict[str, Any] | None = None, notes: str = "",
                      tables: Iterable[str] = ()) -> Path:
        """Write summary.md: a title, a metric table, extra Markdown tables, notes and the plots."""
        lines = [f"# {title}", "", f"Run folder: `{self.path}`", ""]
        if metrics:
            lines += [markdown_table(["metric", "value"], [[k, format_value(v)] for k, v in metrics.items()]), ""]
        for table in tables:
            lines += [table, ""]
        if notes:
            lines += [notes.strip(), ""]
        for plot in sorted(self.plots_dir.glob("*.png")):
            lines.append(f"![{plot.stem}](plots/{plot.name})")
        path = self.path / "summary.md"
        path.write_text("\n".join(lines).rstrip() + "\n")
        return path


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub Markdown table."""
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    for row in rows:
        out.append("| " + " | ".join(format_value(v).replace("|", "\\|") for v in row) + " |")
    return "\n".join(out)


class DemoResult:
    """What a family's `demo(out_dir, quiet)` returns for `latentspace demo`'s report.

    Args:
        metrics: headline numbers, name -> value, all measured in this run.
        plots: PNG files to show in the report; the first is the family's summary plot.
        summary: one paragraph of Markdown.
        tables: extra Markdown tables (for example a table of samples).
        headline: one line for the report's summary table: the effect and its figure with the baseline beside
            it, e.g. "planner 0.62 vs greedy 0.31 path accuracy (200 graphs)".
        effect_shown: whether the family's effect showed in this run (True/False), None where not judged.
        full_command: the command that shows the effect at full scale, quoted where it does not show here.
    """

    def __init__(self, metrics: dict[str, Any], plots: Sequence[Path] = (), summary: str = "",
                 tables: Sequence[str] = (), headline: str = "", effect_shown: bool | None = None,
                 full_command: str = ""):
        self.metrics = dict(metrics)
        self.plots = [Path(p) for p in plots]
        self.summary = summary
        self.tables = list(tables)
        self.headline = headline
        self.effect_shown = effect_shown
        self.full_command = full_command
