"""CRSM: the Mamba backbone plus a value head and latent dynamics, with one canonical latent state the planner nudges.

The latent state is the backbone's final normalised hidden vector h_t (B, D): logits are lm_head(h_t),
values value_head(h_t), and the latent dynamics maps (h_t, embedding(a)) to h_{t+1} - h_t. During
generation `latent_state` is the canonical state; `apply_state_delta(delta, scale)` adds the planner's
delta to it under a lock (the planner thread computes deltas, the generating thread applies them at token
boundaries). One checkpoint format for every pipeline stage: config.json + model.safetensors + tokenizer.json.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..core.checkpoint import CheckpointMixin
from ..core.errors import CheckpointError, ConfigError
from .config import CRSMConfig
from .dynamics import FusedDynamics, LatentDynamics, Workspace, numpy_blas_single_threaded, numpy_fits, silu_
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


class SearchHeads:
    """The LM head and the value head in one `addmm` over a batch of latents, for frozen weights (the search's).

    Returns flat Python lists: the top-k tokens (N*K), their priors (N*K) = the softmax over each row's top-k
    logits (equal to the renormalised top-k of the full softmax) and the values (N) = sigmoid(value_head), the
    sigmoid taken in Python on the N numbers. Equal to `CRSM.logits` and `CRSM.value` up to float rounding. The
    product and the value head's last layer run in NumPy for small CPU float32 batches (like `FusedDynamics`'s
    products: cheaper calls at these sizes), the SiLU, top-k and softmax in PyTorch on views of the same memory,
    every array of a call preallocated (`Workspace`: per thread, per row count), the top-k and softmax written into
    flat buffers so that each list is one `tolist`.
    """

    def __init__(self, lm_head: nn.Linear, value_head: ValueHead):
        first, last = value_head.net[0], value_head.net[2]
        with torch.no_grad():
            self.vocab = lm_head.weight.shape[0]
            self.w_t = torch.cat([lm_head.weight, first.weight]).t().contiguous()  # (D, V + Hv)
            self.bias = torch.cat([first.bias.new_zeros(self.vocab), first.bias])  # (V + Hv,)
            self.w_value = last.weight[0].detach().clone()  # (Hv,)
            self.b_value = float(last.bias[0])
        self.numpy = self.w_t.device.type == "cpu" and self.w_t.dtype == torch.float32 and numpy_blas_single_threaded()
        if self.numpy:  # views of the same memory
            self._w_np, self._bias_np, self._w_value_np = self.w_t.numpy(), self.bias.numpy(), self.w_value.numpy()
        self._work = Workspace(self._arrays)

    def _arrays(self, n: int, k: int) -> tuple:
        """The scratch arrays of an (n rows, top k) call: NumPy arrays and PyTorch views of the same memory, the bias
        repeated over the n rows."""
        v = self.vocab
        out = np.empty((n, self.w_t.shape[1]), np.float32)  # (N, V + Hv)
        out_t = torch.from_numpy(out)
        top, tokens, priors = torch.empty(n * k), torch.empty(n * k, dtype=torch.long), torch.empty(n * k)
        return (out, np.tile(self._bias_np, (n, 1)), out[:, v:], out_t[:, :v], out_t[:, v:], top.view(n, k), tokens,
                tokens.view(n, k), priors, priors.view(n, k))

    def __call__(self, latents: torch.Tensor, k: int) -> tuple[list[int], list[float], list[float]]:
        """latents (N, D) -> top tokens (N*K), priors (N*K), values (N)."""
        b, exp = self.b_value, math.exp
        n = latents.shape[0]
        if self.numpy and numpy_fits(latents, n):
            out, bias, hidden, logits_t, hidden_t, top, tokens, tokens_nk, priors, priors_nk = self._work.get(n, k)
            np.matmul((latents.detach() if latents.requires_grad else latents).numpy(), self._w_np, out=out)
            out += bias  # (N, V + Hv)
            torch.topk(logits_t, k, out=(top, tokens_nk))
            silu_(hidden_t)  # (N, Hv), in place
            scores = (hidden @ self._w_value_np).tolist()
            torch.softmax(top, dim=-1, out=priors_nk)
            values = [1.0 / (1.0 + exp(-(x + b))) for x in scores]
            return tokens.tolist(), priors.tolist(), values
        out = torch.addmm(self.bias, latents, self.w_t)  # (N, V + Hv)
        top_logits, top_tokens = out[:, : self.vocab].topk(k, dim=-1)
        hidden = torch.nn.functional.silu(out[:, self.vocab :], inplace=True)  # (N, Hv)
        scores = hidden.mv(self.w_value).tolist()
        values = [1.0 / (1.0 + exp(-(x + b))) for x in scores]
        return top_tokens.view(-1).tolist(), torch.softmax(top_logits, dim=-1).view(-1).tolist(), values


class SearchKernels:
    """What the MCTS calls per round, built once for the current weights: `transition` (fused dynamics) and `heads`."""

    def __init__(self, model: CRSM):
        self.dynamics = FusedDynamics(model.dynamics, model.backbone.embedding.weight)
        self.transition = self.dynamics.step_rows
        self.heads = SearchHeads(model.backbone.lm_head, model.value_head)


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
        self._kernels: tuple | None = None  # (weights' versions, SearchKernels)

    def __getstate__(self):  # picklable (the process planner sends the model, weights in shared memory)
        state = self.__dict__.copy()
        state["_state_lock"] = None
        state["_kernels"] = None
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
        """latent (B, D) -> next-token logits (B, V)."""
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
        """One latent-dynamics step (the fast path): latent (B, D), token (B,) -> next latent (B, D)."""
        return self.dynamics.next_state(latent, self.backbone.embedding(token))

    def search_kernels(self):
        """The fused per-round functions of the search, rebuilt when any weight they use has changed.

        A subclass that overrides `logits`, `value` or `dynamics_step` gets the generic ones, which call its methods.
        """
        cls = type(self)
        if (cls.logits, cls.value, cls.dynamics_step) != (CRSM.logits, CRSM.value, CRSM.dynamics_step):
            from .mcts import GenericKernels

            return GenericKernels(self)
        # every weight the kernels read, by name, through the modules' own dicts: this runs once per search, and
        # `nn.Module.__getattr__` and `Sequential[i]` cost about 1 µs a step (27 steps: most of a 1-simulation search's
        # fixed cost before)
        mods = self._modules
        backbone = mods["backbone"]._modules
        dyn, val = mods["dynamics"]._modules["net"]._modules, mods["value_head"]._modules["net"]._modules
        params = (backbone["embedding"]._parameters["weight"], backbone["lm_head"]._parameters["weight"],
                  *(p for layer in (dyn["0"], dyn["2"], dyn["4"], val["0"], val["2"])
                    for p in (layer._parameters["weight"], layer._parameters["bias"])))
        key = tuple((p.data_ptr(), p._version, p.device, p.dtype) for p in params)
        if self._kernels is None or self._kernels[0] != key:
            self._kernels = (key, SearchKernels(self))
        return self._kernels[1]

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
