"""Error types that the command line turns into one clear line and exit code 2."""

from __future__ import annotations


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
