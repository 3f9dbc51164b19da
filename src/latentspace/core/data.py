"""Where data sets are found: `--data-dir`, then `$LATENTSPACE_DATA`, then `../shared/data` beside a checkout.

`list_datasets` reads the table of the data root's README.md (folder, origin, what, licence, used by)
so `latentspace data` can show what is present and where it came from.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import DataError

ENV_VAR = "LATENTSPACE_DATA"


def _checkout_candidates() -> list[Path]:
    """`shared/data` beside the checkout (found from this file and from the working directory)."""
    out = []
    for start in (Path(__file__).resolve(), Path.cwd().resolve()):
        for parent in [start, *start.parents]:
            candidate = parent.parent / "shared" / "data"
            if (parent / "pyproject.toml").exists() and candidate.is_dir():
                out.append(candidate)
                break
    return out


def data_roots(data_dir: str | Path | None = None) -> list[Path]:
    """The folders searched for data sets, in order; only those that exist."""
    roots: list[Path] = []
    if data_dir is not None:
        roots.append(Path(data_dir))
    if os.environ.get(ENV_VAR):
        roots.append(Path(os.environ[ENV_VAR]))
    roots.extend(_checkout_candidates())
    seen, out = set(), []
    for root in roots:
        key = root.resolve()
        if key not in seen and root.is_dir():
            seen.add(key)
            out.append(root)
    return out


def find_dataset(name: str, data_dir: str | Path | None = None, required: bool = True) -> Path | None:
    """The folder of data set `name` (e.g. "loghub", "gsm8k", "time-mmd").

    Raises:
        DataError naming the searched places, when `required` and it is not found.
    """
    searched = []
    if data_dir is not None and not Path(data_dir).is_dir():
        raise DataError(f"--data-dir {data_dir} is not a folder")
    for root in data_roots(data_dir):
        candidate = root / name
        searched.append(str(candidate))
        if candidate.is_dir():
            return candidate
        if root.name == name:
            return root
    if required:
        where = ", ".join(searched) or "no data root exists"
        raise DataError(
            f"data set '{name}' not found (searched: {where}); pass --data-dir or set ${ENV_VAR} to a "
            f"folder holding {name}/"
        )
    return None


@dataclass
class DatasetInfo:
    name: str
    origin: str
    description: str
    licence: str
    used_by: str
    path: Path | None


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def list_datasets(data_dir: str | Path | None = None) -> list[DatasetInfo]:
    """Data sets described in the first data root's README.md table, with where each was found."""
    infos: list[DatasetInfo] = []
    for root in data_roots(data_dir):
        readme = root / "README.md"
        if not readme.is_file():
            continue
        lines = readme.read_text().splitlines()
        for line in lines:
            if not line.startswith("|") or set(line.replace("|", "").strip()) <= {"-", " "}:
                continue
            cells = _cells(line)
            if len(cells) < 5 or cells[0].lower() == "folder":
                continue
            name = re.sub(r"[`/]", "", cells[0])
            infos.append(DatasetInfo(name, cells[1], cells[2], cells[3], cells[4],
                                     (root / name) if (root / name).is_dir() else None))
        if infos:
            break
    return infos
