"""Continuous-time latent dynamics: ODE/SDE integration behind one function, and flow matching.

`integrate` hides the solver behind a string, as torchdiffeq does: ODEs go to `torchdiffeq.odeint`
(euler, midpoint, rk4, dopri5, ...), SDEs (when a diffusion is given) to `torchsde.sdeint`
(euler = Euler-Maruyama, milstein, srk, ...). Trajectories come back time-first, (T, B, D).

Flow matching (Lipman et al., 2023; Tong et al., 2024) trains a velocity field v(x, t) on the linear
path x_t = (1 - (1 - sigma_min) t) x0 + t x1 between noise x0 and data x1; with `ot=True` the batch is
re-paired by an exact minibatch optimal-transport assignment first (OT-CFM).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torchdiffeq
import torchsde
from scipy.optimize import linear_sum_assignment

Drift = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (t scalar, z (B, D)) -> dz/dt (B, D)

ODE_METHODS = ("euler", "midpoint", "rk4", "explicit_adams", "dopri5", "bosh3", "adaptive_heun")
SDE_METHODS = ("euler", "milstein", "srk", "heun", "midpoint", "reversible_heun")


class _SDE(torch.nn.Module):
    """Adapter from (drift, diffusion) callables to torchsde's `f`/`g` interface (diagonal Ito noise)."""

    noise_type = "diagonal"
    sde_type = "ito"

    def __init__(self, drift: Drift, diffusion: Drift):
        super().__init__()
        self.drift = drift
        self.diffusion = diffusion

    def f(self, t, y):
        return self.drift(t, y)

    def g(self, t, y):
        return self.diffusion(t, y)


def integrate(
    drift: Drift,
    z0: torch.Tensor,
    t: torch.Tensor,
    method: str = "rk4",
    diffusion: Drift | None = None,
    dt: float | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-6,
    adjoint: bool = False,
    bm: torchsde.BrownianInterval | None = None,
) -> torch.Tensor:
    """Integrate dz = drift(t, z) dt [+ diffusion(t, z) dW] from z0 over the times t.

    Args:
        drift: f(t, z) with t a 0-dim tensor and z (B, D); returns (B, D). An nn.Module is needed for
            `adjoint=True`.
        z0: initial state, (B, D).
        t: increasing times, (T,); t[0] is the time of z0.
        method: solver name; ODE: one of ODE_METHODS ("dopri5" is adaptive), SDE: one of SDE_METHODS.
        diffusion: g(t, z) -> (B, D) diagonal noise; when given the equation is an Ito SDE.
        dt: step of fixed-step solvers (default: the spacing of t, i.e. one step per output time).
        rtol, atol: tolerances of adaptive solvers.
        adjoint: backpropagate with the adjoint method (memory O(1) in the number of steps).
        bm: optional Brownian motion for reproducible SDE paths.

    Returns:
        The trajectory, (T, B, D).
    """
    if t.dim() != 1 or t.numel() < 2:
        raise ValueError(f"t must be a 1-D tensor of at least 2 times, got shape {tuple(t.shape)}")
    t = t.to(z0)
    options = {}
    if dt is None:
        dt = float((t[1:] - t[:-1]).min())
    if diffusion is None:
        if method not in ODE_METHODS:
            raise ValueError(f"unknown ODE method {method!r}: expected one of {ODE_METHODS}")
        if method in ("euler", "midpoint", "rk4", "explicit_adams"):
            options["step_size"] = dt
        solve = torchdiffeq.odeint_adjoint if adjoint else torchdiffeq.odeint
        return solve(drift, z0, t, method=method, rtol=rtol, atol=atol, options=options or None)
    if method not in SDE_METHODS:
        raise ValueError(f"unknown SDE method {method!r}: expected one of {SDE_METHODS}")
    sde = _SDE(drift, diffusion)
    solve = torchsde.sdeint_adjoint if adjoint else torchsde.sdeint
    return solve(sde, z0, t, method=method, dt=dt, bm=bm, rtol=rtol, atol=atol)


def ot_pairing(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """Permutation of x0 that minimises the total squared distance to x1 (exact minibatch OT).

    Args:
        x0, x1: (B, D) source and target batches.

    Returns:
        x0 re-ordered, (B, D).
    """
    cost = torch.cdist(x1.detach().float(), x0.detach().float()).pow(2).cpu().numpy()  # (B, B)
    _, cols = linear_sum_assignment(cost)
    return x0[torch.as_tensor(cols, device=x0.device)]


def flow_matching_loss(
    velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x1: torch.Tensor,
    x0: torch.Tensor | None = None,
    sigma_min: float = 0.0,
    ot: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Conditional flow-matching loss on the linear (optionally OT-paired) path from noise to data.

    Args:
        velocity: v(x_t, t) with x_t (B, D) and t (B,); returns (B, D).
        x1: data samples, (B, D).
        x0: noise samples (default N(0, I)), (B, D).
        sigma_min: width of the path at t = 1.
        ot: re-pair x0 with x1 by minibatch optimal transport.

    Returns:
        Scalar mean squared error between v and the path's velocity.
    """
    if x0 is None:
        x0 = torch.randn(x1.shape, device=x1.device, dtype=x1.dtype, generator=generator)
    if ot:
        x0 = ot_pairing(x0, x1)
    t = torch.rand(x1.shape[0], device=x1.device, dtype=x1.dtype, generator=generator)  # (B,)
    tb = t.view(-1, *([1] * (x1.dim() - 1)))
    xt = (1.0 - (1.0 - sigma_min) * tb) * x0 + tb * x1  # (B, D)
    target = x1 - (1.0 - sigma_min) * x0  # (B, D)
    return (velocity(xt, t) - target).pow(2).mean()


@torch.no_grad()
def flow_matching_sample(
    velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    steps: int = 32,
    method: str = "rk4",
) -> torch.Tensor:
    """Push noise x0 (B, D) through the learned flow from t = 0 to 1; returns samples (B, D)."""

    def drift(t, x):
        return velocity(x, t.expand(x.shape[0]))

    times = torch.linspace(0.0, 1.0, steps + 1, device=x0.device, dtype=x0.dtype)
    if method in ("euler", "midpoint", "rk4"):
        return integrate(drift, x0, times[[0, -1]], method=method, dt=1.0 / steps)[-1]
    return integrate(drift, x0, times[[0, -1]], method=method)[-1]
