"""CRSM: the Mamba backbone plus a value head and latent dynamics, with one canonical latent state the planner nudges.

The latent state is the backbone's final normalised hidden vector h_t (B, D): logits are lm_head(h_t),
values value_head(h_t), and the latent dynamics maps (h_t, embedding(a)) to h_{t+1} - h_t. During
generation `latent_state` is the canonical state; `apply_state_delta(delta, scale)` adds the planner's
delta to it under a lock (the planner thread computes deltas, the generating thread applies them at token
boundaries). One checkpoint format for every pipeline stage: config.json + model.safetensors + tokenizer.json.
"""

from __future__ import annotations

import threading
from pathlib import Path

import torch
from torch import nn

from ..core.checkpoint import CheckpointMixin
from ..core.errors import CheckpointError, ConfigError
from .config import CRSMConfig
from .dynamics import LatentDynamics
from .mamba import LayerCache, MambaLM
from .tokenizer import make_tokenizer, tokenizer_from_json, tokenizer_to_json

TOKENIZER_FILE = "tokenizer.json"


class ValueHead(nn.Module):
    """v(h (B, D)) -> logit (B,) that the continuation succeeds; `value` is its sigmoid in [0, 1]."""

    def __init__(self, d_model: int, hidden: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_model, hidden), nn.SiLU(), nn.Linear(hidden, 1))

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.net(state).squeeze(-1)

    def value(self, state: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self(state))


class CRSM(nn.Module, CheckpointMixin):
    """Continuous Reasoning State Model.

    Args:
        config: sizes and planner settings.
        tokenizer: a HF fast tokenizer whose length is config.vocab_size (default: the byte tokenizer).
    """

    family = "crsm"
    config_class = CRSMConfig

    def __init__(self, config: CRSMConfig, tokenizer=None):
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer if tokenizer is not None else make_tokenizer("byte")
        if len(self.tokenizer) != config.vocab_size:
            raise ConfigError(f"tokenizer has {len(self.tokenizer)} tokens but vocab_size={config.vocab_size}")
        self.backbone = MambaLM(config)
        self.value_head = ValueHead(config.d_model, config.value_hidden)
        self.dynamics = LatentDynamics(config.d_model, config.dynamics_hidden)
        self.latent_state: torch.Tensor | None = None  # canonical state during generation: (B, D)
        self._state_lock = threading.Lock()

    def __getstate__(self):  # picklable: the lock is dropped and rebuilt
        state = self.__dict__.copy()
        state["_state_lock"] = None
        state["latent_state"] = None  # the generating thread's own (it may be replacing it right now)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._state_lock = threading.Lock()

    # ---- checkpoint -----------------------------------------------------------------------------
    def checkpoint_files(self) -> dict[str, str]:
        return {TOKENIZER_FILE: tokenizer_to_json(self.tokenizer)}

    @classmethod
    def _build_from_checkpoint(cls, config: CRSMConfig, directory: Path):
        path = Path(directory) / TOKENIZER_FILE
        if not path.is_file():
            raise CheckpointError(f"{directory} lacks {TOKENIZER_FILE}: a CRSM checkpoint carries its tokenizer")
        return cls(config, tokenizer_from_json(path.read_text(), expected_size=config.vocab_size))

    # ---- text ------------------------------------------------------------------------------------
    @property
    def eos_id(self) -> int:
        return self.tokenizer.eos_token_id

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def decode(self, ids) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

    # ---- backbone views --------------------------------------------------------------------------
    def forward(self, tokens: torch.Tensor):
        """tokens (B, T) -> logits (B, T, V), latent states (B, T, D)."""
        hidden = self.backbone.hidden(tokens)
        return self.backbone.lm_head(hidden), hidden

    def logits(self, latent: torch.Tensor) -> torch.Tensor:
        """latent (B, D) -> next-token logits (B, V). With `value`, the reference of `kernels.SearchHeads`."""
        return self.backbone.lm_head(latent)

    def value(self, latent: torch.Tensor) -> torch.Tensor:
        """latent (B, D) -> value in [0, 1] (B,)."""
        return self.value_head.value(latent)

    def prefill(self, tokens: torch.Tensor) -> tuple[torch.Tensor, list[LayerCache]]:
        """Parallel forward over a prompt (B, T): the last latent state (B, D) and the recurrent caches."""
        hidden, caches = self.backbone.hidden(tokens, return_cache=True)
        return hidden[:, -1], caches

    def step(self, token: torch.Tensor, caches: list[LayerCache]) -> tuple[torch.Tensor, list[LayerCache]]:
        """One exact backbone step: token (B,) -> latent (B, D), caches."""
        return self.backbone.step(token, caches)

    def dynamics_step(self, latent: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        """One latent-dynamics step (the search's cheap transition): latent (B, D), token (B,) -> next latent (B, D).

        The reference of the search's fused dynamics (`kernels.FusedDynamics`)."""
        return self.dynamics.next_state(latent, self.backbone.embedding(token))

    # ---- the canonical state and the planner's deltas --------------------------------------------
    def set_latent_state(self, latent: torch.Tensor) -> None:
        with self._state_lock:
            self.latent_state = latent

    def get_latent_state(self) -> torch.Tensor | None:
        with self._state_lock:
            return None if self.latent_state is None else self.latent_state.clone()

    def apply_state_delta(self, delta: torch.Tensor, scale: float | None = None) -> None:
        """latent_state += scale * delta (thread-safe); delta (B, D) or (D,)."""
        scale = self.config.delta_scale if scale is None else scale
        with self._state_lock:
            if self.latent_state is None:
                raise RuntimeError("apply_state_delta called before generation set a latent state")
            if not torch.isfinite(delta).all():
                return
            self.latent_state = self.latent_state + scale * delta.to(self.latent_state)

    def components(self) -> dict[str, nn.Module]:
        return {"backbone": self.backbone, "value_head": self.value_head, "dynamics": self.dynamics}
