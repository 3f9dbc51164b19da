"""Plots of RBS-QA: a belief trajectory (confidence per segment, revisions, halting) and a reliability diagram."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from .data import EncodedDocument  # noqa: E402
from .reading import Trajectory  # noqa: E402


def plot_trajectory(traj: Trajectory, doc: EncodedDocument, path: str | Path, threshold: float | None = None) -> Path:
    """Belief confidence and each segment's candidate confidence per segment, with revisions and halting marked."""
    segments = [s.segment for s in traj.steps]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    ax.plot(segments, [s.candidate_confidence for s in traj.steps], "o--", color="tab:gray", lw=1,
            label="segment's best span")
    ax.plot(segments, [s.confidence for s in traj.steps], "o-", color="tab:blue", lw=2, label="belief")
    for step in traj.steps:
        ax.annotate(step.belief_text or "-", (step.segment, step.confidence), textcoords="offset points",
                    xytext=(0, 8), ha="center", fontsize=8)
        if step.revised:
            ax.axvline(step.segment, color="tab:orange", alpha=0.5, lw=1)
    for point in doc.revision_points:
        ax.plot([point], [0.02], marker="^", color="tab:red", ms=8, ls="none")
    if traj.halted_at is not None:
        ax.axvline(traj.halted_at, color="tab:green", lw=2, label="halted")
    if threshold is not None:
        ax.axhline(threshold, color="tab:green", ls=":", lw=1, label="halting threshold")
    ax.plot([], [], color="tab:orange", label="tracker revision")
    ax.plot([], [], marker="^", color="tab:red", ls="none", label="true answer change")
    ax.set_ylim(0, 1.1)
    ax.set_xlabel("segment")
    ax.set_ylabel("calibrated confidence")
    ax.set_title(f"{doc.doc.question}  (answer: {doc.doc.answer})", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_reliability(z: torch.Tensor, correct: torch.Tensor, calibrate, path: str | Path, bins: int = 10) -> Path:
    """Reliability diagram: accuracy against confidence before (sigmoid z) and after calibration."""
    fig, ax = plt.subplots(figsize=(4.2, 4))
    for name, conf in (("uncalibrated", torch.sigmoid(z)), ("calibrated", calibrate(z).detach())):
        index = torch.clamp((conf * bins).long(), max=bins - 1)
        xs, ys = [], []
        for b in range(bins):
            sel = index == b
            if sel.any():
                xs.append(float(conf[sel].mean()))
                ys.append(float(correct[sel].float().mean()))
        ax.plot(xs, ys, "o-", label=name)
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
