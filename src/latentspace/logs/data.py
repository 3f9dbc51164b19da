"""Loghub tasks: raw lines of the 2k samples, labels carried by the lines, and seeded stratified splits."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from ..core.data import find_dataset
from ..core.errors import DataError
from .parse import prepare, read_log_file


@dataclass
class Examples:
    """Raw lines (label field still in), their labels, and the system each came from."""

    lines: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    systems: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.lines)

    def extend(self, other: Examples) -> None:
        self.lines += other.lines
        self.labels += other.labels
        self.systems += other.systems

    def subset(self, index: list[int]) -> Examples:
        return Examples([self.lines[i] for i in index], [self.labels[i] for i in index],
                        [self.systems[i] for i in index])


def system_file(system: str, data_dir: str | Path | None = None) -> Path:
    """The raw `<System>_2k.log` of a loghub system."""
    root = find_dataset("loghub", data_dir)
    path = root / system / f"{system}_2k.log"
    if not path.is_file():
        known = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise DataError(f"loghub system {system!r} not found at {path}; known systems: {known}")
    return path


def load_examples(task: str, systems: list[str], data_dir: str | Path | None = None) -> Examples:
    """Lines of the given systems that carry a label for `task` (lines without one are left out)."""
    out = Examples()
    for system in systems:
        lines, _ = read_log_file(system_file(system, data_dir))
        for line in lines:
            label, _ = prepare(line, task)
            if label is not None:
                out.lines.append(line)
                out.labels.append(label)
                out.systems.append(system)
        if not out.systems or out.systems[-1] != system:
            raise DataError(f"loghub system {system!r} has no line labelled for task {task!r}")
    return out


def split(examples: Examples, test_frac: float, seed: int = 0) -> tuple[Examples, Examples]:
    """Stratified by (system, label): each group keeps test_frac of its lines for the test side."""
    groups: dict[tuple[str, str], list[int]] = {}
    for i, key in enumerate(zip(examples.systems, examples.labels, strict=True)):
        groups.setdefault(key, []).append(i)
    rng = random.Random(seed)
    train, test = [], []
    for key in sorted(groups):
        index = groups[key]
        rng.shuffle(index)
        n_test = round(len(index) * test_frac) if len(index) > 1 else 0
        test += index[:n_test]
        train += index[n_test:]
    return examples.subset(sorted(train)), examples.subset(sorted(test))
