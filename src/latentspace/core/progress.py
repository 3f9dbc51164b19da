"""Rich progress bars with rate and ETA, silenced by `quiet`; the one way long work reports progress."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

console = Console(stderr=True)


class RateColumn(ProgressColumn):
    """Items per second (or seconds per item when slower than one a second)."""

    def __init__(self, unit: str = "it"):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        if not speed:
            return Text(f"? {self.unit}/s", style="progress.data.speed")
        if speed >= 1:
            return Text(f"{speed:,.1f} {self.unit}/s", style="progress.data.speed")
        return Text(f"{1 / speed:,.1f} s/{self.unit}", style="progress.data.speed")


def progress_bar(quiet: bool = False, unit: str = "it") -> Progress:
    """A rich Progress: description, bar, n/N, rate, elapsed, ETA, and a free `info` field.

    Use as `with progress_bar(quiet) as bar: task = bar.add_task("training", total=N, info="")`.
    """
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(unit),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        disable=quiet,
        transient=False,
    )


def track(iterable, total: int | None = None, description: str = "working", quiet: bool = False, unit: str = "it"):
    """Iterate with a progress bar."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    with progress_bar(quiet, unit) as bar:
        task = bar.add_task(description, total=total, info="")
        for item in iterable:
            yield item
            bar.advance(task)
