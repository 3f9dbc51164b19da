"""Fault injection: run a long command in a subprocess, SIGKILL it at chosen moments, resume, check what survived.

A kill point is one of
- "step": mid-interval, once the run has logged `at` steps (steps are slowed by the `fit.step` fault point so
  the kill lands while training);
- a fault point name (`checkpoint.write`, `atomic_folder.before_swap`, `index.write`): the process sleeps there
  (core/data.py `fault_point`) and is killed while it does, i.e. inside a checkpoint or an index write.

After each kill the harness records the checkpoint's step (it must load), the last step the killed process had
logged, and the work lost, then starts the command again with --resume. `benchmarks/faults.py` runs a heavier
sweep of the same harness.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def env(extra: dict[str, str] | None = None) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("LATENTSPACE_FAULT")}
    out.update({"PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"})
    out.update(extra or {})
    return out


def cli(args: list[str], cwd: Path, extra_env: dict[str, str] | None = None, timeout: float = 300):
    """Run `latentspace ARGS` to the end; returns the CompletedProcess."""
    return subprocess.run([sys.executable, "-m", "latentspace.cli", *args], cwd=cwd, env=env(extra_env),
                          capture_output=True, text=True, timeout=timeout)


def logged_steps(metrics: Path) -> int:
    """The last step a run logged to metrics.jsonl (0 if none); a torn last line is ignored."""
    if not metrics.exists():
        return 0
    last = 0
    for raw in metrics.read_bytes().splitlines():
        try:
            row = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if "loss" in row:
            last = max(last, int(row["step"]))
    return last


def checkpoint_step(last: Path) -> int | None:
    """The step of a fit checkpoint folder (`checkpoints/last`), loading the model and the trainer state fully;
    None when there is none yet. Raises if it exists but does not load."""
    from latentspace.core.checkpoint import load_checkpoint, load_state

    if not last.exists():
        return None
    load_checkpoint(last / "model")
    return int(load_state(last / "trainer_state")["step"])


@dataclass
class Kill:
    point: str  # "step" or a fault point name
    at: int = 0  # for "step": kill once this many steps are logged
    skip: int = 0  # for a fault point: pass it this many times first (kill inside a later checkpoint write)
    killed_step: int = 0  # the last step the killed process logged
    checkpoint_step: int | None = None  # the step of the checkpoint it left (None: none)
    recovered: bool = False  # the checkpoint (or index) left is intact and loadable
    landed: bool = True  # the kill happened before the process ended by itself

    def work_lost(self) -> int:
        return self.killed_step - (self.checkpoint_step or 0)


@dataclass
class KillRun:
    kills: list[Kill] = field(default_factory=list)
    returncode: int = 0
    stderr: str = ""


def kill_when(args: list[str], cwd: Path, ready, extra_env: dict[str, str], timeout: float = 240) -> bool:
    """Start `latentspace ARGS`, SIGKILL it once `ready()` is true; False if it ended first."""
    proc = subprocess.Popen([sys.executable, "-m", "latentspace.cli", *args], cwd=cwd, env=env(extra_env),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if ready():
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return True
            time.sleep(0.01)
        if proc.poll() is None:
            raise TimeoutError(f"{args} did not reach its kill point in {timeout} s")
        err = proc.stderr.read()
        if proc.returncode != 0:
            raise RuntimeError(f"{args} failed before its kill point: {err[-2000:]}")
        return False
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def fault_env(kill: Kill, log: Path, step_sleep: float) -> dict[str, str]:
    if kill.point == "step":
        return {"LATENTSPACE_FAULT_LOG": str(log), "LATENTSPACE_FAULT_POINT": "fit.step",
                "LATENTSPACE_FAULT_SLEEP": str(step_sleep)}
    return {"LATENTSPACE_FAULT_LOG": str(log), "LATENTSPACE_FAULT_POINT": kill.point, "LATENTSPACE_FAULT_SLEEP": "60",
            "LATENTSPACE_FAULT_SKIP": str(kill.skip)}


def reached(log: Path, point: str, times: int = 1) -> bool:
    """Whether the fault log shows `point` reached `times` times (the process now sleeps there)."""
    if not log.exists():
        return False
    return sum(line.split()[0] == point for line in log.read_text().splitlines() if line.strip()) >= times


def kill_and_resume_fit(args: list[str], resume_args: list[str], cwd: Path, run_dir, kills: list[Kill],
                        step_sleep: float = 0.05) -> KillRun:
    """Run a fit-based command (`args`), kill it at each of `kills` in turn (every restart adds `resume_args`),
    then let the last restart finish. Fills each Kill's fields; returns the final process's code.

    `run_dir` is the fit's run folder, or a function returning it (None until the command made it)."""
    def metrics() -> Path:
        folder = run_dir() if callable(run_dir) else run_dir
        return folder / "metrics.jsonl" if folder is not None else cwd / "no-metrics-yet"

    out = KillRun(kills)
    for i, kill in enumerate(kills):
        log = cwd / f"faults-{i}.log"
        log.unlink(missing_ok=True)
        start = logged_steps(metrics()) if i else 0
        if kill.point == "step":
            target = start + kill.at

            def ready(target=target) -> bool:
                return logged_steps(metrics()) >= target
        else:
            def ready(log=log, point=kill.point, times=kill.skip + 1) -> bool:
                return reached(log, point, times)
        restart = resume_args if i else []
        kill.landed = kill_when(args + restart, cwd, ready, fault_env(kill, log, step_sleep))
        kill.killed_step = logged_steps(metrics())
        try:
            kill.checkpoint_step = checkpoint_step(metrics().parent / "checkpoints" / "last")
            kill.recovered = True
        except Exception:  # noqa: BLE001 (any failure to load is what the harness counts)
            kill.recovered = False
    final = cli(args + resume_args, cwd)
    out.returncode, out.stderr = final.returncode, final.stderr
    return out


def same_tensors(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---- the jobs -------------------------------------------------------------------------------------------------

LTT_TINY = ["--preset", "tiny", "--model.d-model", "16", "--model.seq-len", "8", "--model.block-len", "2",
            "--model.max-len", "12", "--batch-size", "8", "--train.log-every", "1"]


def ltt_args(runs: Path, steps: int, name: str) -> list[str]:
    return ["ltt", "train", *LTT_TINY, "--train.steps", str(steps), "--runs-dir", str(runs), "--name", name,
            "--quiet"]


def ltt_weights(run_dir: Path) -> dict:
    from latentspace.core.checkpoint import load_checkpoint

    return load_checkpoint(run_dir / "checkpoints" / "last" / "model")[1]


def make_code_tree(root: Path) -> Path:
    from tests.codesearch.conftest import make_repo

    return make_repo(root)


def codesearch_args(tree: Path, output: Path, steps: int) -> list[str]:
    return ["codesearch", "index", str(tree), "--output", str(output), "--encoders", "ltt", "--preset", "tiny",
            "--ltt.train.steps", str(steps), "--ltt.train.log-every", "1", "--quiet"]


def index_vectors(output: Path) -> dict:
    from latentspace.codesearch.index import CodeIndex

    index = CodeIndex.load(output)
    import torch

    return {name: torch.from_numpy(v.copy()) for name, v in index.vectors.items()}
