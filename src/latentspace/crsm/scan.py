"""The selective scan h_t = exp(delta_t A) h_{t-1} + delta_t B_t x_t, y_t = C_t h_t + D x_t: reference and parallel.

`selective_scan_ref` is the slow, obviously-correct sequential loop; `selective_scan_pscan` computes the
same recurrence with a Hillis-Steele parallel prefix scan (log2 T steps of (B, T, ED, N) tensor ops, fully
differentiable by autograd). The GPU fast path (`scan_triton.py`) has the same interface. Every variant
returns y (B, T, ED) and the final state h_T (B, ED, N), which `MambaBlock.step` continues from.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _discretize(x, delta, A, B):
    """deltaA = exp(delta A), deltaB_x = delta B x, both (B, T, ED, N)."""
    deltaA = torch.exp(delta.unsqueeze(-1) * A)  # (B, T, ED, N)
    deltaB_x = (delta * x).unsqueeze(-1) * B.unsqueeze(2)  # (B, T, ED, 1) * (B, T, 1, N) -> (B, T, ED, N)
    return deltaA, deltaB_x


def selective_scan_ref(x, delta, A, B, C, D, h0=None):
    """Sequential selective scan, one time step at a time (the reference).

    Args:
        x: (B, T, ED) input; delta: (B, T, ED) positive step sizes; A: (ED, N) negative;
        B, C: (B, T, N); D: (ED,) skip; h0: optional (B, ED, N) initial state.

    Returns:
        y (B, T, ED), h_T (B, ED, N)
    """
    batch, length, ed = x.shape
    h = x.new_zeros(batch, ed, A.shape[1]) if h0 is None else h0  # h : (B, ED, N)
    ys = []
    for t in range(length):
        deltaA = torch.exp(delta[:, t, :, None] * A)  # (B, ED, N)
        h = deltaA * h + (delta[:, t] * x[:, t])[:, :, None] * B[:, t, None, :]  # (B, ED, N)
        ys.append((h * C[:, t, None, :]).sum(-1))  # (B, ED)
    y = torch.stack(ys, dim=1) + D * x  # (B, T, ED)
    return y, h


def pscan(a, b):
    """Inclusive linear-recurrence scan h_t = a_t h_{t-1} + b_t over dim 1 (h_0 = 0), in log2(T) steps.

    Args:
        a, b: (B, T, ...) decay and input.

    Returns:
        h: (B, T, ...) all states.
    """
    length = a.shape[1]
    step = 1
    while step < length:
        # combine (a_prev, b_prev) then (a, b): a' = a a_prev, b' = a b_prev + b
        b = torch.cat([b[:, :step], a[:, step:] * b[:, :-step] + b[:, step:]], dim=1)
        a = torch.cat([a[:, :step], a[:, step:] * a[:, :-step]], dim=1)
        step *= 2
    return b


def selective_scan_pscan(x, delta, A, B, C, D, h0=None):
    """Parallel selective scan (same arguments and returns as `selective_scan_ref`)."""
    deltaA, deltaB_x = _discretize(x, delta, A, B)  # (B, T, ED, N) each
    if h0 is not None:
        # fold the initial state into the first input: h_1 = a_1 h0 + b_1
        deltaB_x = torch.cat([deltaB_x[:, :1] + deltaA[:, :1] * h0.unsqueeze(1), deltaB_x[:, 1:]], dim=1)
    hs = pscan(deltaA, deltaB_x)  # (B, T, ED, N)
    y = (hs @ C.unsqueeze(-1)).squeeze(-1) + D * x  # (B, T, ED, N) @ (B, T, N, 1) -> (B, T, ED)
    return y, hs[:, -1]


def triton_available() -> bool:
    """True when the Triton fast path can run here (CUDA and the triton package)."""
    if not torch.cuda.is_available():
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def selective_scan(x, delta, A, B, C, D, h0=None, mode: str = "auto", z=None, delta_bias=None,
                   delta_softplus: bool = False):
    """Dispatch: `reference`, `pscan`, `triton`, or `auto`.

    `auto` takes triton for CUDA tensors when available, pscan elsewhere on CUDA, and the sequential loop on
    CPU, where it is measured faster than pscan at the lengths used here (pscan moves log2(T) extra
    (B, T, ED, N) tensors through memory; on 1 CPU core at B=32, T=33 it was 15x slower).

    Mamba's pre- and post-processing can be handed in: `delta_bias` (ED,) is added to delta, then softplus when
    `delta_softplus`; with a gate `z` (B, T, ED) the output is y * silu(z). The triton path fuses them into its
    kernels (fewer passes over (B, T, ED) tensors and fewer saved activations); the others apply them in PyTorch.
    """
    if mode == "auto":
        if x.is_cuda:
            mode = "triton" if h0 is None and triton_available() else "pscan"
        else:
            mode = "reference"
    if mode == "triton":
        from .scan_triton import selective_scan_triton

        if h0 is not None:
            raise ValueError("the triton scan starts from h0 = 0; use pscan to continue from a state")
        return selective_scan_triton(x, delta, A, B, C, D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus)
    if mode not in ("reference", "pscan"):
        raise ValueError(f"unknown scan mode {mode!r}: expected auto, reference, pscan or triton")
    if delta_bias is not None:
        delta = delta + delta_bias
    if delta_softplus:
        delta = F.softplus(delta)
    fn = selective_scan_ref if mode == "reference" else selective_scan_pscan
    y, h = fn(x, delta, A, B, C, D, h0)
    if z is not None:
        y = y * F.silu(z)
    return y, h
