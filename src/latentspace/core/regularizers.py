"""The sliced Epps-Pulley statistic: a differentiable test of samples toward N(0, I).

For a 1-D sample x_1..x_N, Epps and Pulley (1983) compare the empirical characteristic function
phi_N(t) = mean_n exp(i t x_n) with that of N(0, 1), exp(-t^2 / 2), under the weight w(t) = exp(-t^2 / 2):

    EP = integral |phi_N(t) - exp(-t^2/2)|^2 w(t) dt        (ltt.md "Epps-Pulley Regularization")

Evaluated on a fixed grid of t this is O(N * M) per projection, not the O(N^2) closed form. For a D-dim
latent we project on K random unit directions (Cramer-Wold: all 1-D projections are N(0, 1) iff the
joint is N(0, I)) and average, so the cost is O(N * K * M) for any D.
"""

from __future__ import annotations

import torch


def _random_directions(dim: int, num_slices: int, device, dtype, generator=None) -> torch.Tensor:
    """K unit vectors in R^D as columns: (D, K)."""
    directions = torch.randn(dim, num_slices, device=device, dtype=dtype, generator=generator)
    return directions / directions.norm(dim=0, keepdim=True).clamp_min(1e-12)


def epps_pulley_1d(x: torch.Tensor, num_points: int = 17, t_max: float = 4.0) -> torch.Tensor:
    """Epps-Pulley statistic of each column of x toward N(0, 1).

    Args:
        x: samples, (N, K): K independent 1-D samples of size N.
        num_points: grid points on [0, t_max] (the integrand is even in t, so we integrate one side x 2).
        t_max: end of the grid; the weight exp(-t^2/2) makes the tail beyond 4 negligible.

    Returns:
        (K,) statistics, >= 0, ~0 for standard normal samples (expected value O(1/N)).
    """
    t = torch.linspace(0.0, t_max, num_points, device=x.device, dtype=x.dtype)  # (M,)
    xt = x.unsqueeze(-1) * t  # (N, K, M)
    real = torch.cos(xt).mean(0)  # (K, M)
    imag = torch.sin(xt).mean(0)  # (K, M)
    target = torch.exp(-0.5 * t.pow(2))  # (M,)
    integrand = ((real - target).pow(2) + imag.pow(2)) * target  # (K, M), weight w(t) = exp(-t^2/2)
    return 2.0 * torch.trapezoid(integrand, t, dim=-1)  # (K,)


def epps_pulley(
    z: torch.Tensor,
    num_slices: int = 64,
    num_points: int = 17,
    t_max: float = 4.0,
    generator: torch.Generator | None = None,
    directions: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sliced Epps-Pulley statistic of samples z toward N(0, I); differentiable.

    Args:
        z: samples, (N, D) or (..., D) (leading dims are flattened into N).
        num_slices: K random projections, drawn afresh each call unless `directions` is given.
        directions: optional fixed projections, (D, K).

    Returns:
        Scalar: the mean statistic over slices.
    """
    z = z.reshape(-1, z.shape[-1])  # (N, D)
    if z.shape[0] < 2:
        raise ValueError("epps_pulley needs at least 2 samples")
    if directions is None:
        directions = _random_directions(z.shape[-1], num_slices, z.device, z.dtype, generator)
    projected = z @ directions  # (N, K)
    return epps_pulley_1d(projected, num_points=num_points, t_max=t_max).mean()
