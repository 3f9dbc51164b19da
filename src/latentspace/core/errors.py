"""Error types that the command line turns into one clear line and exit code 2; checks for missing paths."""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator
from pathlib import Path


class LatentspaceError(Exception):
    """Base of every error that names a bad input and what was expected (exit code 2 on the CLI)."""

    exit_code = 2


class DataError(LatentspaceError):
    """A data file or data set is missing, empty, malformed or holds invalid values (NaN, binary)."""


class CheckpointError(LatentspaceError):
    """A checkpoint is missing, truncated, of another family, of a newer format, or a pickle."""


class BackboneError(LatentspaceError):
    """A model id or path cannot be loaded (offline hub, missing files)."""


class ConfigError(LatentspaceError):
    """A configuration holds an unknown field or an invalid value."""


class DiskError(LatentspaceError):
    """A result cannot be written: the disk is full, or the folder is read-only or not writable."""


class RunInUseError(LatentspaceError):
    """Another process is writing the same run folder."""


DISK_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "the disk quota is exceeded",
               errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
               errno.EPERM: "operation not permitted"}


def disk_error_message(err: OSError, what: str) -> str | None:
    """One line for a write that failed for lack of space or permission, or None for another OSError."""
    reason = DISK_ERRNOS.get(err.errno)
    if reason is None:
        return None
    where = f" ({err.filename})" if err.filename else ""
    return (f"cannot write {what}: {reason}{where}; earlier results are intact; free space or fix the "
            "permissions, then run the command again (with --resume where it has one)")


@contextlib.contextmanager
def disk_errors(what: str) -> Iterator[None]:
    """Turn a full disk or a read-only folder while writing `what` into one clear `DiskError` (exit code 2)."""
    try:
        yield
    except OSError as err:
        message = disk_error_message(err, what)
        if message is None:
            raise
        raise DiskError(message) from None


def require_path(path: str | Path | None, what: str, kind: str = "any", error: type[LatentspaceError] = DataError,
                 hint: str = "") -> Path | None:
    """`path` as a Path once it exists as a `kind` ("file", "folder" or "any"), else `error` naming it.

    Commands call it before any other work, so a mistyped path is reported before a model is loaded or
    trained. None or "" (an option not given) passes through as None; `hint` says what to do instead.
    """
    if path is None or path == "":
        return None
    path = Path(path)
    if not path.exists():
        problem = "does not exist"
    elif kind == "file" and not path.is_file():
        problem = "is not a file"
    elif kind == "folder" and not path.is_dir():
        problem = "is not a folder"
    else:
        return path
    raise error(f"{what} {path} {problem}" + (f"; {hint}" if hint else ""))


def require_file(path: str | Path | None, what: str, error: type[LatentspaceError] = DataError,
                 hint: str = "") -> Path | None:
    """`require_path` for a file: a log, a document, a JSON or JSONL input."""
    return require_path(path, what, "file", error, hint)


def require_dir(path: str | Path | None, what: str, error: type[LatentspaceError] = DataError,
                hint: str = "") -> Path | None:
    """`require_path` for a folder: a data folder, a checkpoint, a run, an index."""
    return require_path(path, what, "folder", error, hint)
