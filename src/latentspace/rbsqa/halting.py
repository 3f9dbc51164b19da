"""The halting rule: when the tracker's belief is confident and steady enough to stop reading a document.

A reader halts after a segment when the belief's calibrated confidence has reached the threshold, its trend over
the last three segments is not falling fast (with trend analysis on), and the believed span has been the same for
`stable_segments` segments. `BeliefStateTracker.should_halt` applies it to the live belief; the threshold is
selected on validation documents by `train.fit_halting_threshold`, which replays it on recorded trajectories.
"""

from __future__ import annotations


def confidence_slope(history: list[float]) -> float:
    """Least-squares slope of a confidence sequence (per segment); 0 with fewer than 2 values."""
    n = len(history)
    if n < 2:
        return 0.0
    if n == 2:
        return history[1] - history[0]
    if n == 3:  # the halting window: x - mean(x) = (-1, 0, 1)
        return (history[2] - history[0]) / 2
    mean_x, mean_y = (n - 1) / 2, sum(history) / n
    num = sum((x - mean_x) * (y - mean_y) for x, y in enumerate(history))
    return num / (n * (n * n - 1) / 12)  # sum of (x - mean_x)^2 over x = 0..n-1


def halts(confidence_history: list[float], threshold: float, trend_analysis: bool = True, stable_for: int = 1,
          stable_segments: int = 1) -> bool:
    """`should_halt` after a belief confidence history: confident, (with trend analysis) not falling fast, and
    the belief's span unchanged for the last `stable_segments` segments (`stable_for`: how many it has been)."""
    if not confidence_history or confidence_history[-1] < threshold or stable_for < stable_segments:
        return False
    return not trend_analysis or confidence_slope(confidence_history[-3:]) > -0.25
