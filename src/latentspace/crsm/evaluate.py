"""Evaluation of a CRSM checkpoint: path-star accuracy (greedy vs planner) or held-out perplexity."""

from __future__ import annotations

import json
from pathlib import Path

from ..core.errors import ConfigError
from .config import PipelineConfig
from .tasks import PathStarTask, pathstar_accuracy, perplexity


def run_config_of(checkpoint: Path) -> PipelineConfig:
    """The pipeline config of the run a stage checkpoint belongs to (runs/crsm/<name>/<stage>/model)."""
    for parent in (Path(checkpoint).parent, Path(checkpoint).parent.parent):
        path = parent / "config.json"
        if path.is_file():
            try:
                return PipelineConfig.from_dict(json.loads(path.read_text()))
            except Exception:  # a run config of another shape: fall back to defaults
                continue
    return PipelineConfig()


def evaluate_checkpoint(model, checkpoint: Path, task: str | None = None, degree: int | None = None,
                        length: int | None = None, samples: int = 100, simulations: int = 48) -> dict:
    config = run_config_of(checkpoint)
    task = task or config.data.task
    if task == "pathstar":
        t = PathStarTask(degree or config.data.pathstar_degree, length or config.data.pathstar_length)
        model.config.mcts_max_depth = max(model.config.mcts_max_depth, t.length + 2)
        return {"task": "pathstar", "pathstar_degree": t.degree, "pathstar_length": t.length,
                "pathstar_acc_greedy": pathstar_accuracy(model, t, samples),
                "pathstar_acc_planner": pathstar_accuracy(model, t, samples, planner="sync",
                                                          num_simulations=simulations)}
    if task == "lm":
        from .pipeline import corpus_tokens

        _, val = corpus_tokens(model, config)
        return {"task": "lm", "ppl": perplexity(lambda x: model(x)[0], val, config.data.seq_len)}
    raise ConfigError(f"--task {task!r}: expected pathstar or lm")
