"""Configs of the CRSM family: the model (`CRSMConfig`) and the four-stage pipeline (`PipelineConfig`)."""

from __future__ import annotations

import dataclasses
import math

from ..core.config import Config
from ..core.errors import ConfigError


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
class PipelineConfig(Config):
    """The four stages (backbone, distill, assemble, value) on one task, with the model's size."""

    task: str = "pathstar"  # pathstar | lm
    # model
    d_model: int = 96
    n_layers: int = 3
    d_state: int = 16
    expand: int = 2
    tokenizer: str = "byte"
    bpe_vocab_size: int = 512
    # tasks
    pathstar_degree: int = 2
    pathstar_length: int = 4
    corpus_bytes: int = 400_000  # bytes of Python standard-library source for the lm task
    seq_len: int = 128  # lm window
    # stage budgets
    batch_size: int = 32
    backbone_steps: int = 1500
    backbone_lr: float = 2e-3
    distill_steps: int = 400
    distill_sequences: int = 256
    value_steps: int = 300
    value_rollouts: int = 256
    seed: int = 0
    # planner used by evaluate / generate
    mcts_simulations: int = 48
    transition: str = "backbone"

    def __post_init__(self):
        if self.task not in ("pathstar", "lm"):
            raise ConfigError(f"PipelineConfig.task={self.task!r}: expected pathstar or lm")
        if self.pathstar_degree < 2 or self.pathstar_length < 2:
            raise ConfigError("path-star needs degree >= 2 and length >= 2")

    def model_config(self, vocab_size: int) -> CRSMConfig:
        return CRSMConfig(vocab_size=vocab_size, d_model=self.d_model, n_layers=self.n_layers, d_state=self.d_state,
                          expand=self.expand, tokenizer=self.tokenizer, mcts_simulations=self.mcts_simulations,
                          transition=self.transition, mcts_max_depth=self.pathstar_length + 2)
