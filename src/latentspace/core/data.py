"""Where data sets are found and how they are fetched; the few file helpers every family reads and writes with.

A data set is found, in order, in `--data-dir`, in `$LATENTSPACE_DATA`, in the user's data cache
(`latentspace data fetch NAME` fills it), and last in the small real samples that ship inside the package
(`latentspace/samples/`), which is what lets `make demo` run offline in a fresh clone. Benchmarks and the
tests that need a full data set pass `sample=False` and never run on a sample by accident.

`datasets.json` (beside this file, built by `scripts/build_data_manifest.py`) pins each data set: origin
repository, commit, and every file's path, size and sha256. `fetch` downloads with pooch, checks each
checksum, and moves the finished folder into place in one rename, so an interrupted or corrupted download
never leaves a half-written data set where the finder looks.

The file helpers: `read_jsonl` (a malformed line is a DataError naming file:line), `looks_binary` (NUL or
control bytes at a file's start), `atomic_write` and `atomic_folder` (readers see the old or the new content,
never a torn one). This module imports no torch, so torch-free paths (a BM25 search, log parsing) use them too.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from .errors import DataError

log = logging.getLogger("latentspace")

ENV_VAR = "LATENTSPACE_DATA"
CACHE_ENV = "LATENTSPACE_CACHE"
GITHUB_RAW = "https://raw.githubusercontent.com"
SAMPLES_DIR = Path(__file__).resolve().parents[1] / "samples"
NOTICE = "NOTICE.md"

# Data sets resolved since the last `reset_used()`: name -> "full (path)" or "embedded sample"; the demo
# report says which data each family used.
_used: dict[str, str] = {}


def cache_root() -> Path:
    """The user cache of latentspace: `$LATENTSPACE_CACHE`, else the platform's user cache folder."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("latentspace"))


def data_home() -> Path:
    """Where `data fetch` writes: `$LATENTSPACE_DATA` when set, else `<cache_root>/data`."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    return cache_root() / "data"


def data_roots(data_dir: str | Path | None = None) -> list[Path]:
    """The folders searched for full data sets, in order: --data-dir, $LATENTSPACE_DATA, the data cache."""
    roots: list[Path] = []
    if data_dir is not None:
        roots.append(Path(data_dir))
    roots.append(data_home())
    roots.append(cache_root() / "data")
    seen, out = set(), []
    for root in roots:
        key = root.resolve()
        if key not in seen and root.is_dir():
            seen.add(key)
            out.append(root)
    return out


@cache
def manifest() -> dict[str, dict]:
    """The pinned data sets: name -> {repo, commit, licence, what, used_by, files, notices, sample}."""
    return json.loads((Path(__file__).with_name("datasets.json")).read_text())


def sample_path(name: str) -> Path | None:
    """The embedded sample of data set `name`, or None when none ships."""
    folder = SAMPLES_DIR / name
    spec = manifest().get(name)
    if spec is None or not folder.is_dir() or not (spec["sample"]["files"] or spec["sample"]["derived"]):
        return None
    return folder


def fetch_hint(name: str) -> str:
    return f"run `latentspace data fetch {name}`, or pass --data-dir / set ${ENV_VAR} to a folder holding {name}/"


def find_dataset(name: str, data_dir: str | Path | None = None, required: bool = True,
                 sample: bool = True) -> Path | None:
    """The folder of data set `name` (e.g. "loghub", "gsm8k", "time-mmd").

    Full copies win; the embedded sample is used when `sample` and no full copy is found, with a warning.

    Raises:
        DataError naming the searched places and `latentspace data fetch`, when `required` and not found.
    """
    searched = []
    if data_dir is not None and not Path(data_dir).is_dir():
        raise DataError(f"--data-dir {data_dir} is not a folder")
    for root in data_roots(data_dir):
        candidate = root / name
        searched.append(str(candidate))
        if candidate.is_dir():
            _used[name] = f"full ({candidate})"
            return candidate
        if root.name == name:
            _used[name] = f"full ({root})"
            return root
    if sample and (embedded := sample_path(name)) is not None:
        if name not in _used:
            log.warning("using the embedded sample of %s (%s); for the full data set %s", name,
                        describe_sample(name), fetch_hint(name))
        _used[name] = "embedded sample"
        return embedded
    if required:
        where = ", ".join(searched) or "no data folder exists"
        raise DataError(f"data set '{name}' not found (searched: {where}); {fetch_hint(name)}")
    return None


def describe_sample(name: str) -> str:
    """One line saying what the embedded sample of `name` holds."""
    spec = manifest()[name]["sample"]
    parts = list(spec["derived"].values())
    if spec["files"]:
        parts.append(f"{len(spec['files'])} unchanged files")
    return "; ".join(parts)


def reset_used() -> None:
    _used.clear()


def used_datasets() -> dict[str, str]:
    """Data sets resolved since `reset_used()`: name -> "full (path)" or "embedded sample"."""
    return dict(_used)


def notice_text(name: str) -> str:
    """NOTICE.md written beside a fetched data set or a sample: origin, commit, licence."""
    spec = manifest()[name]
    lines = [f"# {name}", "", f"{spec['what']}.", "",
             f"Origin: https://github.com/{spec['repo']} at commit {spec['commit']}.",
             f"Licence / terms: {spec['licence']}." + (
                 f" See {', '.join(sorted(spec['notices']))}." if spec["notices"] else "")]
    if name == "babi-tasks":
        lines.append("bAbI tasks v1.2 by Facebook AI Research (Weston et al. 2015), CC BY 3.0; unchanged files.")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- fetching


def file_url(spec: dict, source: str, mirror: str | None = None) -> str:
    """The pinned URL of one file: `<base>/<repo>/<commit>/<source>`; `mirror` replaces GitHub's raw host."""
    return f"{(mirror or GITHUB_RAW).rstrip('/')}/{spec['repo']}/{spec['commit']}/{source}"


def fetch(name: str, dest: Path | None = None, mirror: str | None = None, force: bool = False,
          progress: Callable[[int, int, str], None] | None = None, spec: dict | None = None) -> Path:
    """Download data set `name` into `dest/name` (default: `data_home()`), checking every sha256.

    Files go to `dest/.partial-<name>/` first (pooch writes each through a temporary file and deletes one
    whose checksum does not match); the folder is renamed into place only when every file is verified,
    so the finder never sees a half-fetched data set. Verified files stay in the partial folder, so a
    rerun after a failure downloads only what is missing.

    Raises:
        DataError for an unknown name, an unreachable server or a checksum mismatch, naming the file.
    """
    import pooch
    import requests

    pooch.get_logger().setLevel(logging.WARNING)  # one line per file otherwise; the caller shows progress
    known = manifest()
    if spec is None:
        if name not in known:
            raise DataError(f"unknown data set {name!r}; known: {', '.join(known)}")
        spec = known[name]
    dest = Path(dest) if dest is not None else data_home()
    final = dest / name
    if final.is_dir() and not force:
        return final
    partial = dest / f".partial-{name}"
    partial.mkdir(parents=True, exist_ok=True)
    files = spec["files"]
    for i, entry in enumerate(files):
        target = partial / entry["path"]
        url = file_url(spec, entry["source"], mirror)
        if progress:
            progress(i, len(files), entry["path"])
        try:
            pooch.retrieve(url, known_hash=f"sha256:{entry['sha256']}", fname=target.name, path=target.parent,
                           progressbar=False)
        except ValueError as err:  # pooch: "SHA256 hash of downloaded file (...) does not match the known hash"
            raise DataError(f"{name}: {entry['path']} from {url} failed its checksum ({err}); nothing was "
                            f"installed, rerun to retry") from None
        except (requests.RequestException, OSError) as err:
            raise DataError(f"{name}: cannot download {url} ({type(err).__name__}: {err}); check the network "
                            f"or pass --mirror; files verified so far are kept in {partial}") from None
    for local, text in spec.get("notices", {}).items():
        (partial / local).write_bytes(text.encode())  # bytes: keep the notice's own line endings
    (partial / NOTICE).write_text(notice_text(name) if name in known else f"# {name}\n\nOrigin: {spec['repo']}\n")
    if progress:
        progress(len(files), len(files), "")
    if final.exists():
        shutil.rmtree(final)
    os.replace(partial, final)
    return final


@dataclass
class DatasetInfo:
    name: str
    origin: str
    description: str
    licence: str
    used_by: str
    path: Path | None
    sample: str | None
    files: int
    size: int


def list_datasets(data_dir: str | Path | None = None) -> list[DatasetInfo]:
    """Every pinned data set, with where its full copy was found (or None) and what its sample holds."""
    infos = []
    for name, spec in manifest().items():
        path = find_dataset(name, data_dir, required=False, sample=False)
        _used.pop(name, None)
        infos.append(DatasetInfo(name, f"{spec['repo']}@{spec['commit'][:7]}", spec["what"], spec["licence"],
                                 spec["used_by"], path, describe_sample(name) if sample_path(name) else None,
                                 len(spec["files"]), sum(f["size"] for f in spec["files"])))
    return infos


# ---------------------------------------------------------------------------------------------- files


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, record) for each JSON object of a JSONL file; blank lines are skipped.

    Raises:
        DataError naming `file:line` for a line that is not UTF-8, not JSON or not a JSON object.
    """
    path = Path(path)
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                raise DataError(f"{path}:{number}: not UTF-8 text") from None
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{number}: not valid JSON ({err.msg})") from None
            if not isinstance(record, dict):
                raise DataError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
            yield number, record


_CONTROL_BYTES = re.compile(rb"[\x00-\x08\x0e-\x1f\x7f]")


def looks_binary(path_or_bytes: str | Path | bytes, probe: int = 8192) -> bool:
    """Whether a file (or its first bytes) looks binary: a NUL byte (git's rule) or over 10% control bytes.

    Tab, newline, form feed and carriage return are text; only the first `probe` bytes are read.
    """
    if isinstance(path_or_bytes, bytes):
        head = path_or_bytes[:probe]
    else:
        with open(path_or_bytes, "rb") as handle:
            head = handle.read(probe)
    if b"\x00" in head:
        return True
    return len(_CONTROL_BYTES.findall(head)) > 0.1 * len(head)


def atomic_write(path: str | Path, data: bytes | str) -> Path:
    """Write a file so that readers see the old or the new content, never a torn one.

    The data goes to a temporary file in the same folder, is flushed to disk (fsync), then renamed over `path`;
    a crash or an error leaves `path` as it was and no temporary file behind. Text is written as UTF-8.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


_fault_hits: dict[str, int] = {}


def fault_point(name: str) -> None:
    """A hook for the fault-injection tests (tests/faults, benchmarks/faults.py); does nothing unless asked.

    With `$LATENTSPACE_FAULT_LOG` set, appends `name` and the process id to that file when reached; with
    `$LATENTSPACE_FAULT_POINT` equal to `name`, then sleeps `$LATENTSPACE_FAULT_SLEEP` seconds (default 30), so
    that a SIGKILL sent meanwhile lands exactly there (inside a checkpoint write, inside an index write); with
    `$LATENTSPACE_FAULT_ERRNO` also set, raises that OSError there instead (a full disk: 28, a read-only folder: 30).
    `$LATENTSPACE_FAULT_SKIP=N` lets the process pass the point N times first (a later checkpoint).
    """
    log_path = os.environ.get("LATENTSPACE_FAULT_LOG")
    if log_path:
        with open(log_path, "a") as handle:
            handle.write(f"{name} {os.getpid()}\n")
    if os.environ.get("LATENTSPACE_FAULT_POINT") == name:
        _fault_hits[name] = _fault_hits.get(name, 0) + 1
        if _fault_hits[name] <= int(os.environ.get("LATENTSPACE_FAULT_SKIP", "0")):
            return  # pass the first N times this process reaches the point
        if os.environ.get("LATENTSPACE_FAULT_ERRNO"):  # a failing write: a full disk (28), a read-only folder (30)
            code = int(os.environ["LATENTSPACE_FAULT_ERRNO"])
            raise OSError(code, os.strerror(code), os.environ.get("LATENTSPACE_FAULT_PATH", name))
        import time

        time.sleep(float(os.environ.get("LATENTSPACE_FAULT_SLEEP", "30")))


def _fsync_tree(folder: Path) -> None:
    """Flush every file of `folder` and the folder itself to disk, so that a power loss after the rename finds
    the content and not empty files."""
    for root, _, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(root))


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # some file systems refuse to fsync a folder
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


@contextlib.contextmanager
def atomic_folder(target: str | Path) -> Iterator[Path]:
    """A fresh temporary folder beside `target` to write into, swapped into place when the block ends.

    One of the two complete folders (the previous `target` or the new one) exists at every moment; if the
    block raises, the temporary folder is removed and `target` is left untouched. The new content is flushed
    to disk before the swap. On Linux the swap is one atomic exchange (renameat2), so `target` itself is never
    missing; elsewhere it is two renames, and a kill between them leaves the previous folder as
    `.<name>.old-<pid>`, which `recover_folder` puts back.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        fault_point("atomic_folder.before_swap")
        _fsync_tree(tmp)
        if target.exists() and _exchange(tmp, target):
            _fsync_dir(target.parent)
            shutil.rmtree(tmp, ignore_errors=True)  # now the previous content
            return
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            if old.exists():
                shutil.rmtree(old)
            os.replace(target, old)
            fault_point("atomic_folder.between_renames")
        os.replace(tmp, target)
        _fsync_dir(target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def recover_folder(target: str | Path) -> bool:
    """After a kill inside `atomic_folder`: put a previous folder left aside back, and remove the leftovers.

    Call it only while no other process writes `target` (under the run's lock). Returns whether `target`
    was restored from a `.<name>.old-*` folder.
    """
    target = Path(target)
    if not target.parent.is_dir():
        return False
    restored = False
    olds = sorted(target.parent.glob(f".{target.name}.old-*"), key=lambda p: p.stat().st_mtime, reverse=True)
    if not target.exists() and olds:
        os.replace(olds.pop(0), target)
        log.warning("restored %s from the copy a killed checkpoint write left aside", target)
        restored = True
    for leftover in [*olds, *target.parent.glob(f".{target.name}.tmp-*")]:
        shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)
    return restored
