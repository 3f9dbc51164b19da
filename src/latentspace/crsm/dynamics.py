"""Latent dynamics: a small MLP f(state, action embedding) -> delta h, the planner's fast world model.

Distilled (pipeline stage 2) from the backbone's own traces: for each position t it learns
h_{t+1} - h_t from (h_t, embedding(token_{t+1})), with an MSE loss. MCTS then steps h' = h + f(h, a)
instead of running every Mamba layer.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

NUMPY_MAX_ROWS = 32  # batches up to this many rows multiply in NumPy on CPU (see FusedDynamics)


def numpy_blas_single_threaded() -> bool:
    """Whether NumPy's OpenBLAS runs on one thread (OMP_NUM_THREADS=1, threadpoolctl), the NumPy path's condition.

    Multithreaded, OpenBLAS splits these small products over its threads and spends more on that than they take
    (16 x 256 @ 256 x 388 here: 730 µs on 2 threads vs 113 µs on one), so the kernels then stay in PyTorch.
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


# SiLU in place (on PyTorch views of the NumPy kernels' arrays: cheaper there than in NumPy): the op that
# `F.silu(x, inplace=True)` calls, without its two Python wrappers (~1 µs a call, three calls a round).
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


class LatentDynamics(nn.Module):
    """f_theta(h (B, D), a (B, D)) -> delta h (B, D)."""

    def __init__(self, d_model: int, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(2 * d_model, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, d_model)
        )

    def forward(self, state: torch.Tensor, action_embedding: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([state, action_embedding], dim=-1))

    def next_state(self, state: torch.Tensor, action_embedding: torch.Tensor) -> torch.Tensor:
        """h' = h + f(h, a): (B, D)."""
        return state + self(state, action_embedding)


def dynamics_loss(dynamics: LatentDynamics, state, action_embedding, next_state) -> torch.Tensor:
    """MSE between the predicted and the observed delta h (all (B, D))."""
    return torch.nn.functional.mse_loss(dynamics(state, action_embedding), next_state - state)


class FusedDynamics:
    """The search's form of h' = h + f(h, e(a)), for frozen weights: the action half of the first layer is a table.

    The first layer W1 [h; e(a)] + b1 splits into W1_h h + (W1_e e(a) + b1); the second term depends on the token
    only, so it is precomputed for the whole vocabulary (V, H) and a step is one row gather plus three matrix
    products, written straight into the caller's buffer. Equal to `LatentDynamics.next_state` up to float rounding.

    On CPU in float32, for at most `NUMPY_MAX_ROWS` rows, with NumPy's BLAS on one thread
    (`numpy_blas_single_threaded`), the three products run in NumPy (OpenBLAS) on views of the same weights: at a
    few rows they take about half the time of PyTorch's (MKL) here; at 16-32 rows the products take about as long
    in either, and the NumPy path's preallocated arrays (`Workspace`) still make the call cheaper (d 256, 32-leaf
    rounds: +7% searches/s over MKL from 17 rows on). The SiLUs stay in PyTorch, on views of the same memory
    (cheaper than NumPy's).

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
        the biases repeated over the n rows (an add of equal shapes takes half the time of a broadcast one here)."""
        _, _, _, b2, _, b3 = self._np
        hidden = self.w2_t.shape[0]
        x, y = np.empty((n, hidden), np.float32), np.empty((n, hidden), np.float32)
        return x, torch.from_numpy(x), y, torch.from_numpy(y), np.tile(b2, (n, 1)), np.tile(b3, (n, 1))

    def _numpy_step(self, state: np.ndarray, tokens, out: np.ndarray) -> None:
        """The CPU float32 step: products in NumPy, SiLU in PyTorch on a view of the same memory (cheaper there)."""
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
