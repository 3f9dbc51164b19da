"""Configs of the CRSM family: the model (`CRSMConfig`) and the run config of the four-stage pipeline
(`PipelineConfig`, nesting the model, the task (`TaskConfig`) and one `TrainConfig` per training stage)."""

from __future__ import annotations

import dataclasses
import math

from ..core.config import Config
from ..core.errors import ConfigError
from ..core.training import TrainConfig


@dataclasses.dataclass
class CRSMConfig(Config):
    """A Mamba backbone, its value head, its latent dynamics and the planner's search settings."""

    vocab_size: int = 260
    d_model: int = 96
    n_layers: int = 3
    d_state: int = 16
    expand: int = 2
    d_conv: int = 4
    dt_rank: int = 0  # 0: ceil(d_model / 16), as in Mamba
    scan: str = "auto"  # auto (triton on CUDA, else pscan) | pscan | reference | triton
    tie_embeddings: bool = True
    value_hidden: int = 128
    dynamics_hidden: int = 256
    tokenizer: str = "byte"  # byte | bpe (the tokenizer itself is saved with every checkpoint)
    # planner (MCTS over next tokens)
    mcts_simulations: int = 48
    mcts_top_k: int = 4
    mcts_c_puct: float = 1.5
    mcts_batch: int = 8  # leaves evaluated together in one batched transition
    mcts_max_depth: int = 12
    transition: str = "backbone"  # backbone (exact) | dynamics (learned latent dynamics, fast)
    delta_scale: float = 0.1
    planner_budget_s: float = 0.05  # wall-clock bound on one asynchronous search

    PRESETS = {
        "tiny": {"d_model": 32, "n_layers": 2, "d_state": 8, "value_hidden": 32, "dynamics_hidden": 64},
        "small": {},
        "mamba-130m": {"vocab_size": 50280, "d_model": 768, "n_layers": 24, "d_state": 16},
    }

    def __post_init__(self):
        if self.scan not in ("auto", "pscan", "reference", "triton"):
            raise ConfigError(f"CRSMConfig.scan={self.scan!r}: expected auto, pscan, reference or triton")
        if self.transition not in ("backbone", "dynamics"):
            raise ConfigError(f"CRSMConfig.transition={self.transition!r}: expected backbone or dynamics")
        if self.tokenizer not in ("byte", "bpe"):
            raise ConfigError(f"CRSMConfig.tokenizer={self.tokenizer!r}: expected byte or bpe")
        if self.d_state & (self.d_state - 1):
            raise ConfigError(f"CRSMConfig.d_state={self.d_state} must be a power of two")
        for name in ("d_model", "n_layers", "d_state", "expand", "d_conv", "mcts_top_k", "mcts_batch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"CRSMConfig.{name} must be >= 1")

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def dt_rank_(self) -> int:
        return self.dt_rank or math.ceil(self.d_model / 16)


@dataclasses.dataclass
class TaskConfig(Config):
    """The task the pipeline trains on and the data each stage draws from it."""

    task: str = "pathstar"  # pathstar | lm
    pathstar_degree: int = 2
    pathstar_length: int = 4
    corpus_bytes: int = 400_000  # bytes of Python standard-library source for the lm task
    seq_len: int = 128  # lm window
    bpe_vocab_size: int = 512  # size of the BPE tokenizer trained on the corpus (model.tokenizer=bpe, lm task)
    batch_size: int = 32  # sequences per backbone step
    distill_sequences: int = 256  # sequences whose backbone traces stage 2 distills
    value_rollouts: int = 256  # sampled continuations (pathstar) or windows (lm) stage 4 learns values from

    def __post_init__(self):
        if self.task not in ("pathstar", "lm"):
            raise ConfigError(f"TaskConfig.task={self.task!r}: expected pathstar or lm")
        if self.pathstar_degree < 2 or self.pathstar_length < 2:
            raise ConfigError("path-star needs degree >= 2 and length >= 2")


def stage_train(steps: int, lr: float) -> TrainConfig:
    """A stage's optimisation defaults: AdamW (weight decay 0.01), warm-up min(50, steps // 10), cosine."""
    return TrainConfig(steps=steps, lr=lr, warmup_steps=None, weight_decay=0.01, log_every=10,
                       checkpoint_every=max(50, steps // 4))


@dataclasses.dataclass
class PipelineConfig(Config):
    """The run config of the four stages (backbone, distill, assemble, value): model, task and one
    `TrainConfig` per training stage (`--model.d-model`, `--data.task`, `--backbone.steps`, `--value.lr`)."""

    # vocab_size 0: the tokenizer's size; mcts_max_depth 0: data.pathstar_length + 2 (both filled in by the pipeline)
    model: CRSMConfig = dataclasses.field(default_factory=lambda: CRSMConfig(vocab_size=0, mcts_max_depth=0))
    data: TaskConfig = dataclasses.field(default_factory=TaskConfig)
    backbone: TrainConfig = dataclasses.field(default_factory=lambda: stage_train(1500, 2e-3))
    distill: TrainConfig = dataclasses.field(default_factory=lambda: stage_train(400, 2e-3))
    value: TrainConfig = dataclasses.field(default_factory=lambda: stage_train(300, 3e-3))
    seed: int = 0  # the tasks' samples, the traces, the rollouts and the model's initialisation

    PRESETS = {
        # the CPU demo (`latentspace demo`): ~2 minutes
        "demo": {"model": {"d_model": 64, "n_layers": 2}, "data": {"distill_sequences": 64, "value_rollouts": 64},
                 "backbone": {"steps": 150, "lr": 3e-3, "checkpoint_every": 50},
                 "distill": {"steps": 50, "checkpoint_every": 50}, "value": {"steps": 50, "checkpoint_every": 50}},
        # tests: seconds
        "tiny": {"model": {"d_model": 32, "n_layers": 2, "d_state": 8, "mcts_simulations": 8},
                 "data": {"pathstar_length": 3, "batch_size": 8, "distill_sequences": 8, "value_rollouts": 8},
                 "backbone.steps": 12, "distill.steps": 4, "value.steps": 4},
    }

    @classmethod
    def from_dict(cls, data):
        """Build from a dict; a flat config.json of a run from before the nested tree is converted."""
        if any(key in data for key in _LEGACY):
            data = _convert_legacy(data)
        return super().from_dict(data)

    def model_config(self, vocab_size: int) -> CRSMConfig:
        """The model config with what the pipeline fills in: the tokenizer's size, the search depth."""
        if self.model.vocab_size not in (0, vocab_size):
            raise ConfigError(f"--model.vocab-size {self.model.vocab_size} differs from the tokenizer's size "
                              f"{vocab_size}; leave it at 0")
        return self.model.replace(vocab_size=vocab_size,
                                  mcts_max_depth=self.model.mcts_max_depth or self.data.pathstar_length + 2)


# fields of the flat PipelineConfig before the tree (runs/crsm/<name>/config.json) -> their place now
_LEGACY = {
    **{k: f"model.{k}" for k in ("d_model", "n_layers", "d_state", "expand", "tokenizer", "mcts_simulations",
                                 "transition")},
    **{k: f"data.{k}" for k in ("task", "pathstar_degree", "pathstar_length", "corpus_bytes", "seq_len",
                                "bpe_vocab_size", "batch_size", "distill_sequences", "value_rollouts")},
    "backbone_steps": "backbone.steps", "backbone_lr": "backbone.lr", "distill_steps": "distill.steps",
    "value_steps": "value.steps",
}


def _convert_legacy(flat) -> dict:
    """A flat pipeline config as the nested one: its fields moved, its stages' implicit settings made explicit."""
    out = {_LEGACY.get(key, key): value for key, value in flat.items()}
    defaults = PipelineConfig()
    seed = flat.get("seed", 0)
    for stage in ("backbone", "distill", "value"):
        steps = out.get(f"{stage}.steps", getattr(defaults, stage).steps)
        out.update({f"{stage}.seed": seed, f"{stage}.checkpoint_every": max(50, steps // 4)})
    return out


def _setting(default, text: str):
    return dataclasses.field(default=default, metadata={"help": text})


@dataclasses.dataclass
class GenerateConfig(Config):
    """The settings of `crsm generate`. Planner settings left at None are the checkpoint's own (its
    `model.mcts_simulations`, `model.transition`): the trained model's config is not nested here, so that its
    defaults never override what the checkpoint was built with."""

    max_new_tokens: int = _setting(64, "Tokens to generate.")
    planner: str = _setting("off", "off | sync | async")
    simulations: int | None = _setting(None, "MCTS simulations per token (default: the checkpoint's "
                                             "model.mcts_simulations).")
    transition: str | None = _setting(None, "backbone | dynamics (default: the checkpoint's model.transition).")
    pathstar: bool = _setting(False, "Verify the answer as a path-star prompt (reward).")
    planner_backend: str = _setting(
        "thread", "Where the async search runs: thread (no start-up; right for one generation) or process (no GIL "
                  "shared with generation; its process takes a few seconds to start, worth it for many "
                  "generations).")

    def __post_init__(self):
        if self.planner not in ("off", "sync", "async"):
            raise ConfigError(f"--planner {self.planner!r}: expected off, sync or async")
        if self.planner_backend not in ("thread", "process"):
            raise ConfigError(f"--planner-backend {self.planner_backend!r}: expected thread or process")
        if self.transition not in (None, "backbone", "dynamics"):
            raise ConfigError(f"--transition {self.transition!r}: expected backbone or dynamics")
        if self.max_new_tokens < 1:
            raise ConfigError(f"--max-new-tokens {self.max_new_tokens}: expected >= 1")


@dataclasses.dataclass
class EvaluateConfig(Config):
    """The settings of `crsm evaluate`; task settings left at None are the run's (its `data.*`)."""

    samples: int = _setting(100, "Path-star graphs to answer.")
    simulations: int = _setting(48, "MCTS simulations per token of the planner's answers.")
    degree: int | None = _setting(None, "Path-star degree (default: the run's data.pathstar_degree).")
    length: int | None = _setting(None, "Path-star arm length (default: the run's data.pathstar_length).")
    task: str | None = _setting(None, "pathstar | lm (default: the run's data.task).")

    def __post_init__(self):
        if self.task not in (None, "pathstar", "lm"):
            raise ConfigError(f"--task {self.task!r}: expected pathstar or lm")
