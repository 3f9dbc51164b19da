"""The search's per-round functions: the reference (the model's own methods) and the fused fast path for a CRSM.

The MCTS evaluates a round's new leaves with three calls, the `SearchKernels` interface:

- `dynamics(state (N, D), tokens (N,), out=None)` -> next latents (N, D): h' = h + f(h, e(a));
- `transition(buffer (S, D), parents, tokens, rows)`: the same step reading the parents' rows of the tree's state
  buffer and writing the new states into buffer[rows], in place;
- `heads(latents (N, D), k)` -> flat Python lists: the top-k tokens (N*K, row by row), their priors = the softmax
  over each row's top-k logits (the renormalised top-k of the full softmax) and the values (N).

`ReferenceKernels` computes them with the model's own `dynamics_step`, `logits` and `value`, for any duck-typed
model. `FusedKernels` computes the same for a CRSM's frozen weights: the dynamics with the action half of its
first layer precomputed as a (V, H) table (`FusedDynamics`), the LM head and the value head's first layer as one
product (`SearchHeads`). For small CPU float32 batches with a single-threaded OpenBLAS the products run in NumPy
on views of the same weights, into scratch arrays made once per thread (`Workspace`): at these sizes the
per-call overhead, not the arithmetic, is what a round costs. `search_kernels(model)` picks one and keeps the
fused ones while the weights they were built from are unchanged. Tests check the two against each other.
"""

from __future__ import annotations

import math
import os
import threading
import weakref
from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch
from torch import nn

from .dynamics import LatentDynamics
from .model import CRSM, ValueHead

NUMPY_MAX_ROWS = 32  # batches up to this many rows multiply in NumPy on CPU


class SearchKernels(Protocol):
    """What the MCTS calls per round (see the module docstring); `ReferenceKernels` or `FusedKernels`."""

    def dynamics(self, state: torch.Tensor, tokens: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        ...

    def transition(self, buffer: torch.Tensor, parents: list[int], tokens: list[int], rows: slice) -> torch.Tensor:
        ...

    def heads(self, latents: torch.Tensor, k: int) -> tuple[list[int], list[float], list[float]]:
        ...


class ReferenceKernels:
    """The per-round functions from the model's own `dynamics_step`, `logits` and `value` (any duck-typed model)."""

    def __init__(self, model):
        self.model = model

    def dynamics(self, state: torch.Tensor, tokens: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        latents = self.model.dynamics_step(state, tokens)
        return latents if out is None else out.copy_(latents)

    def transition(self, buffer: torch.Tensor, parents: list[int], tokens: list[int], rows: slice) -> torch.Tensor:
        """buffer[rows] = the next states of buffer[parents] under `tokens` (N, D)."""
        index = torch.tensor(parents + tokens, device=buffer.device)
        n = len(parents)
        return self.dynamics(buffer.index_select(0, index[:n]), index[n:], out=buffer[rows])

    def heads(self, latents: torch.Tensor, k: int) -> tuple[list[int], list[float], list[float]]:
        top_logits, top_tokens = self.model.logits(latents).float().topk(k, dim=-1)
        return (top_tokens.reshape(-1).tolist(), torch.softmax(top_logits, dim=-1).reshape(-1).tolist(),
                self.model.value(latents).float().tolist())


# ---- the fast path's NumPy helpers -------------------------------------------------------------------------------

def numpy_blas_single_threaded() -> bool:
    """Whether NumPy's OpenBLAS runs on one thread (OMP_NUM_THREADS=1, threadpoolctl), the NumPy path's condition.

    Multithreaded, OpenBLAS splits these small products over its threads and spends more on that than they take,
    so the kernels then stay in PyTorch.
    """
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return os.environ.get("OPENBLAS_NUM_THREADS", os.environ.get("OMP_NUM_THREADS")) == "1"
    return all(info.get("num_threads") == 1 for info in threadpool_info() if info.get("internal_api") == "openblas")


def numpy_fits(t: torch.Tensor, rows: int) -> bool:
    """Whether a product over `rows` rows of `t` runs in NumPy: a small batch of a CPU float32 tensor."""
    return rows <= NUMPY_MAX_ROWS and t.is_cpu and t.dtype is torch.float32


def _silu_(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.silu(x, inplace=True)


# SiLU in place, on PyTorch views of the NumPy kernels' arrays (cheaper there than in NumPy): the op that
# `F.silu(x, inplace=True)` calls, without its Python wrappers.
silu_ = getattr(getattr(torch._C, "_nn", None), "silu_", None) or _silu_


class Workspace:
    """A kernel's scratch arrays, made by `make(*shape)` once per thread and call shape, then reused by every call.

    Per thread: concurrent searches on one model (threads of one process) each get their own arrays.
    """

    def __init__(self, make: Callable[..., tuple]):
        self._make = make
        self._local = threading.local()

    def get(self, *shape) -> tuple:
        made = self._local.__dict__.setdefault("arrays", {})  # this thread's arrays, by call shape
        arrays = made.get(shape)
        if arrays is None:
            arrays = made[shape] = self._make(*shape)
        return arrays


# ---- the fused kernels -------------------------------------------------------------------------------------------

class FusedDynamics:
    """The search's form of h' = h + f(h, e(a)), for frozen weights: the action half of the first layer is a table.

    The first layer W1 [h; e(a)] + b1 splits into W1_h h + (W1_e e(a) + b1); the second term depends on the token
    only, so it is precomputed for the whole vocabulary (V, H) and a step is one row gather plus three matrix
    products, written straight into the caller's buffer. Equal to `LatentDynamics.next_state` up to float rounding.
    On CPU in float32, for at most `NUMPY_MAX_ROWS` rows, with NumPy's BLAS on one thread, the three products run
    in NumPy (OpenBLAS) on views of the same weights, the SiLUs in PyTorch on views of the same memory.

    Args:
        dynamics: the trained dynamics MLP.
        embedding: the backbone's token embedding (V, D).
    """

    def __init__(self, dynamics: LatentDynamics, embedding: torch.Tensor):
        first, second, third = dynamics.net[0], dynamics.net[2], dynamics.net[4]
        d = embedding.shape[-1]
        with torch.no_grad():
            self.action_table = torch.addmm(first.bias, embedding, first.weight[:, d:].t())  # (V, H)
            self.w1_t = first.weight[:, :d].t().contiguous()  # (D, H)
            self.w2_t, self.b2 = second.weight.t().contiguous(), second.bias.detach().clone()  # (H, H), (H,)
            self.w3_t, self.b3 = third.weight.t().contiguous(), third.bias.detach().clone()  # (H, D), (D,)
        self.numpy = (self.action_table.device.type == "cpu" and self.action_table.dtype == torch.float32
                      and numpy_blas_single_threaded())
        if self.numpy:  # views of the same memory
            self._np = tuple(t.detach().numpy() for t in (self.action_table, self.w1_t, self.w2_t, self.b2,
                                                          self.w3_t, self.b3))
        self._work = Workspace(self._arrays)

    def __call__(self, state: torch.Tensor, tokens: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """state (N, D), tokens (N,) -> next state (N, D), into `out` when given."""
        if self.numpy and numpy_fits(state, state.shape[0]):
            if out is None:
                out = torch.empty_like(state)
            self._numpy_step(state.detach().numpy(), tokens.numpy(), out.detach().numpy())
            return out
        x = torch.addmm(self.action_table.index_select(0, tokens), state, self.w1_t)  # (N, H)
        torch.nn.functional.silu(x, inplace=True)
        x = torch.addmm(self.b2, x, self.w2_t)
        torch.nn.functional.silu(x, inplace=True)
        out = torch.addmm(self.b3, x, self.w3_t, out=out)  # f(h, a): (N, D)
        return out.add_(state)

    def step_rows(self, buffer: torch.Tensor, parents: list[int], tokens: list[int], rows: slice) -> torch.Tensor:
        """The search's call: buffer[rows] = next states of buffer[parents] under `tokens`; returns buffer[rows]."""
        out = buffer[rows]
        n = len(parents)
        if self.numpy and numpy_fits(buffer, n):
            array = buffer.numpy()
            self._numpy_step(array[parents], tokens, array[rows])
            return out
        index = torch.tensor(parents + tokens, device=buffer.device)
        return self(buffer.index_select(0, index[:n]), index[n:], out=out)

    def _arrays(self, n: int) -> tuple:
        """The scratch arrays of an n-row step: the two hidden layers (NumPy arrays and PyTorch views of them) and
        the biases repeated over the n rows (an add of equal shapes is cheaper than a broadcast one)."""
        _, _, _, b2, _, b3 = self._np
        hidden = self.w2_t.shape[0]
        x, y = np.empty((n, hidden), np.float32), np.empty((n, hidden), np.float32)
        return x, torch.from_numpy(x), y, torch.from_numpy(y), np.tile(b2, (n, 1)), np.tile(b3, (n, 1))

    def _numpy_step(self, state: np.ndarray, tokens, out: np.ndarray) -> None:
        """The CPU float32 step: products in NumPy, SiLU in PyTorch on a view of the same memory."""
        table, w1, w2, _, w3, _ = self._np
        x, x_t, y, y_t, b2, b3 = self._work.get(state.shape[0])
        np.matmul(state, w1, out=x)  # (N, H)
        x += table[tokens]
        silu_(x_t)
        np.matmul(x, w2, out=y)
        y += b2
        silu_(y_t)
        np.matmul(y, w3, out=out)  # f(h, a): (N, D)
        out += b3
        out += state


class SearchHeads:
    """The LM head and the value head in one `addmm` over a batch of latents, for frozen weights (the search's).

    Returns flat Python lists: the top-k tokens (N*K), their priors (N*K) = the softmax over each row's top-k
    logits (equal to the renormalised top-k of the full softmax) and the values (N) = sigmoid(value_head), the
    sigmoid taken in Python on the N numbers. Equal to `CRSM.logits` and `CRSM.value` up to float rounding. The
    product and the value head's last layer run in NumPy for small CPU float32 batches (as `FusedDynamics`'s
    products), the SiLU, top-k and softmax in PyTorch on views of the same memory, every array of a call
    preallocated (`Workspace`: per thread, per row count), the top-k and softmax written into flat buffers so that
    each list is one `tolist`.
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


class FusedKernels:
    """The per-round functions of a CRSM, built once for its current weights: fused dynamics and heads.

    `dynamics`, `transition` and `heads` are the bound calls themselves (no method in between: they run every
    round).
    """

    def __init__(self, model: CRSM):
        self.dynamics = FusedDynamics(model.dynamics, model.backbone.embedding.weight)
        self.transition = self.dynamics.step_rows
        self.heads = SearchHeads(model.backbone.lm_head, model.value_head)


# ---- choosing and keeping them -----------------------------------------------------------------------------------

_FUSED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> (weights key, FusedKernels)


def _fusable(model) -> bool:
    """A CRSM whose `logits`, `value` and `dynamics_step` are its class's own (a subclass may override them)."""
    cls = type(model)
    return isinstance(model, CRSM) and (cls.logits, cls.value, cls.dynamics_step) == (
        CRSM.logits, CRSM.value, CRSM.dynamics_step)


def _weights_key(model: CRSM) -> tuple:
    """(data pointer, version, device, dtype) of every weight the fused kernels read: equal while none changed.

    Reads the weights by name through the modules' own dicts, and torch's version counter to see in-place updates:
    this runs once per search, and `nn.Module.__getattr__` and `Sequential[i]` would cost more than the check.
    """
    mods = model._modules
    backbone = mods["backbone"]._modules
    dyn, val = mods["dynamics"]._modules["net"]._modules, mods["value_head"]._modules["net"]._modules
    params = (backbone["embedding"]._parameters["weight"], backbone["lm_head"]._parameters["weight"],
              *(p for layer in (dyn["0"], dyn["2"], dyn["4"], val["0"], val["2"])
                for p in (layer._parameters["weight"], layer._parameters["bias"])))
    return tuple((p.data_ptr(), p._version, p.device, p.dtype) for p in params)


def search_kernels(model, rebuild: bool = False) -> SearchKernels:
    """The search's per-round functions for `model`: fused for a CRSM (kept while its weights are unchanged),
    else the reference.

    Args:
        model: a CRSM, or any model with `dynamics_step`, `logits` and `value`.
        rebuild: build the fused kernels anew even if the weights look unchanged (another process may have
            written them in shared memory: its writes do not move this process's version counters).
    """
    if not _fusable(model):
        return ReferenceKernels(model)
    key = _weights_key(model)
    cached = _FUSED.get(model)
    if rebuild or cached is None or cached[0] != key:
        cached = _FUSED[model] = (key, FusedKernels(model))
    return cached[1]
