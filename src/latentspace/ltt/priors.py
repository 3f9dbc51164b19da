"""Priors over latent paths behind one interface: `PriorODE`, `PriorSDE` (torchsde), `FlowMatchingPrior`.

Every prior knows how to
  * `matching_loss(z_path)`: fit itself to the encoder's path (B, T, D) (ltt.md "ODE Matching Loss"),
  * `sample_z0(n)`: draw initial states (n, D),
  * `rollout(z0, T)`: integrate its dynamics on the grid t_k = k / (T - 1) -> a path (B, T, D).
The drift f(z, t) is an MLP on [z, time features]; with `multiscale` it is fast(z, t) + slow_scale * slow(z, t)
(ltt.md "Hierarchical Time Scales"). Time runs over [0, 1], one grid step per token: dt = 1 / (T - 1).
"""

from __future__ import annotations

import math

import torch
import torchsde
from torch import nn

from ..core.dynamics import flow_matching_loss, flow_matching_sample, integrate
from ..core.errors import ConfigError
from .config import LTTConfig


def time_features(t: torch.Tensor, n_freq: int) -> torch.Tensor:
    """t (N,) in [0, 1] -> (N, 1 + 2 n_freq): [t, sin(pi k t), cos(pi k t)] for k = 1..n_freq."""
    k = torch.arange(1, n_freq + 1, device=t.device, dtype=t.dtype)  # (K,)
    angles = math.pi * t[:, None] * k  # (N, K)
    return torch.cat([t[:, None], torch.sin(angles), torch.cos(angles)], dim=-1)


class DriftNet(nn.Module):
    """f(z, t): z (N, D), t (N,) -> (N, D); an MLP on [z, time features]."""

    def __init__(self, latent_dim: int, hidden: int, n_freq: int = 8):
        super().__init__()
        self.n_freq = n_freq
        self.mlp = nn.Sequential(nn.Linear(latent_dim + 1 + 2 * n_freq, hidden), nn.SiLU(), nn.Linear(hidden, hidden),
                                 nn.SiLU(), nn.Linear(hidden, latent_dim))

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([z, time_features(t, self.n_freq)], dim=-1))


class MultiScaleDrift(nn.Module):
    """fast(z, t) + slow_scale * slow(z, t): the fast net sees high time frequencies, the slow net only low ones."""

    def __init__(self, latent_dim: int, hidden: int, slow_scale: float):
        super().__init__()
        self.fast_net = DriftNet(latent_dim, hidden, n_freq=8)
        self.slow_net = DriftNet(latent_dim, hidden, n_freq=1)
        self.slow_scale = slow_scale

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.fast_net(z, t) + self.slow_scale * self.slow_net(z, t)


def time_grid(T: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """The T token times in [0, 1], (T,)."""
    if T < 2:
        raise ConfigError(f"a latent path needs at least 2 steps, got T={T}")
    return torch.linspace(0.0, 1.0, T, device=device, dtype=dtype)


def ode_matching_loss(drift, z_path: torch.Tensor, relative: bool = False) -> torch.Tensor:
    """Euler increment matching (ltt.md): mean over (B, T-1) of |(z_{t+1} - z_t) - f(z_t, t) dt|^2, summed over D.

    Zero exactly when the path follows the drift's Euler steps. z_path: (B, T, D).

    relative: divide by the latents' total variance over (B, T) (not detached). The plain loss falls with
    the scale of z, so training the encoder through it collapses every latent to one point (where the
    Epps-Pulley gradient vanishes by symmetry, so nothing pushes back); divided by the variance it is
    scale-free, and only paths that really follow a drift score well.
    """
    B, T, D = z_path.shape
    t = time_grid(T, z_path.device, z_path.dtype)
    dt = 1.0 / (T - 1)
    z_prev, z_next = z_path[:, :-1], z_path[:, 1:]  # (B, T-1, D)
    f = drift(z_prev.reshape(-1, D), t[:-1].repeat(B)).view(B, T - 1, D)  # (B, T-1, D)
    loss = (z_next - z_prev - f * dt).pow(2).sum(-1).mean()
    if relative:
        loss = loss / (z_path.reshape(-1, D).var(0).sum() + 1e-6)
    return loss


def euler_rollout(drift, z0: torch.Tensor, T: int) -> torch.Tensor:
    """Differentiable explicit Euler rollout of f from z0 (B, D) on the token grid -> (B, T, D) (used in training)."""
    t = time_grid(T, z0.device, z0.dtype)
    dt = 1.0 / (T - 1)
    path = [z0]
    for k in range(T - 1):
        path.append(path[-1] + drift(path[-1], t[k].expand(z0.shape[0])) * dt)
    return torch.stack(path, dim=1)


class Prior(nn.Module):
    """The interface of every prior over latent paths; subclasses define `matching_loss`."""

    kind = ""

    def __init__(self, config: LTTConfig):
        super().__init__()
        self.config = config
        self.latent_dim = config.latent_dim
        if config.multiscale:
            self.drift_net = MultiScaleDrift(config.latent_dim, config.prior_hidden, config.slow_scale)
        else:
            self.drift_net = DriftNet(config.latent_dim, config.prior_hidden)

    def drift(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """dz/dt at scalar time t (0-dim or (B,)) for states z (B, D) -> (B, D)."""
        return self.drift_net(z, t.to(z).expand(z.shape[0]))

    def matching_loss(self, z_path: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def sample_z0(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Initial states z0 ~ N(0, I), (n, D)."""
        device = next(self.parameters()).device
        return torch.randn(n, self.latent_dim, generator=generator, device=device)

    def rollout(self, z0: torch.Tensor, T: int, method: str | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Integrate dz/dt = f(z, t) from z0 (B, D) over the T token times -> path (B, T, D)."""
        t = time_grid(T, z0.device, z0.dtype)
        path = integrate(self.drift, z0, t, method=method or self.config.solver, dt=1.0 / (T - 1))  # (T, B, D)
        return path.transpose(0, 1)


class PriorODE(Prior):
    """Deterministic latent ODE dz/dt = f(z, t), fitted by matching the encoder's increments; z0 ~ N(0, I)."""

    kind = "ode"

    def matching_loss(self, z_path):
        loss = ode_matching_loss(self.drift_net, z_path, self.config.ode_relative)
        return loss, {"ode": float(loss.detach())}


class PriorSDE(Prior):
    """Latent SDE dz = f(z, t) dt + g(z, t) dW (diagonal, Ito), for Raccoon-style stochastic exploration.

    The drift is fitted by increment matching (its gradient also shapes the encoder); the diffusion g > 0
    by the Gaussian likelihood of the residual increments, z_{t+1} - z_t ~ N(f dt, g^2 dt), on a detached
    path (so the encoder cannot shrink its increments to buy likelihood). Sampling uses torchsde.
    """

    kind = "sde"

    def __init__(self, config: LTTConfig, min_diffusion: float = 1e-3):
        super().__init__(config)
        self.diffusion_net = DriftNet(config.latent_dim, config.prior_hidden // 2, n_freq=4)
        self.min_diffusion = min_diffusion

    def diffusion(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """g(z, t) > 0 at scalar time t for states z (B, D) -> (B, D)."""
        raw = self.diffusion_net(z, t.to(z).expand(z.shape[0]))
        return nn.functional.softplus(raw - 3.0) + self.min_diffusion

    def diffusion_nll(self, z_path: torch.Tensor) -> torch.Tensor:
        """Mean Gaussian NLL per (B, T-1) transition of the increments under N(f dt, g^2 dt); z_path (B, T, D)."""
        B, T, D = z_path.shape
        t = time_grid(T, z_path.device, z_path.dtype)[:-1].repeat(B)  # (B (T-1),)
        dt = 1.0 / (T - 1)
        z_prev = z_path[:, :-1].reshape(-1, D)
        increment = z_path[:, 1:].reshape(-1, D) - z_prev  # (N, D)
        f = self.drift_net(z_prev, t).detach()
        var = self.diffusion(t, z_prev).pow(2) * dt  # (N, D)
        nll = 0.5 * ((increment - f * dt).pow(2) / var + var.log() + math.log(2 * math.pi))
        return nll.sum(-1).mean()

    def matching_loss(self, z_path):
        drift_loss = ode_matching_loss(self.drift_net, z_path, self.config.ode_relative)
        nll = self.diffusion_nll(z_path.detach())
        return drift_loss + 1e-2 * nll, {"ode": float(drift_loss.detach()), "sde_nll": float(nll.detach())}

    def rollout(self, z0, T, method=None, generator=None):
        """Euler-Maruyama (or another torchsde solver) from z0 (B, D) -> path (B, T, D); reproducible via generator."""
        t = time_grid(T, z0.device, z0.dtype)
        method = method or self.config.sde_solver
        device = generator.device if generator is not None else "cpu"
        entropy = int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=device))
        # the strong order-1.5 solver (srk) needs the Brownian motion's space-time Levy area as well
        levy_area = "space-time" if method == "srk" else "none"
        bm = torchsde.BrownianInterval(t0=0.0, t1=1.0, size=z0.shape, dtype=z0.dtype, device=z0.device,
                                       entropy=entropy, levy_area_approximation=levy_area)
        path = integrate(self.drift, z0, t, method=method, diffusion=self.diffusion, dt=1.0 / (T - 1),
                         bm=bm)  # (T, B, D)
        return path.transpose(0, 1)


class FlowMatchingPrior(Prior):
    """z0 from a flow-matching model of the encoder's initial states (ltt.md "Scaling with Flow Matching"),
    then the path from the ODE drift.

    z0 ~ N(0, I) only matches the encoder when Epps-Pulley made the encoder's z0 exactly Gaussian; the flow
    learns the encoder's actual z0 distribution instead, closing that gap.
    """

    kind = "flow"

    def __init__(self, config: LTTConfig):
        super().__init__(config)
        self.velocity_net = DriftNet(config.latent_dim, config.prior_hidden, n_freq=4)

    def velocity(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """v(x, t): x (B, D), t (B,) -> (B, D)."""
        return self.velocity_net(x, t)

    def matching_loss(self, z_path):
        drift_loss = ode_matching_loss(self.drift_net, z_path, self.config.ode_relative)
        flow_loss = flow_matching_loss(self.velocity, z_path[:, 0].detach(), ot=self.config.flow_ot)
        return drift_loss + flow_loss, {"ode": float(drift_loss.detach()), "flow": float(flow_loss.detach())}

    def sample_z0(self, n, generator=None):
        noise = super().sample_z0(n, generator)
        return flow_matching_sample(self.velocity, noise, steps=self.config.flow_steps, method="midpoint")


PRIOR_CLASSES = {"ode": PriorODE, "sde": PriorSDE, "flow": FlowMatchingPrior}


def build_prior(config: LTTConfig, kind: str | None = None) -> Prior:
    """The prior named by `kind` (default config.prior)."""
    kind = kind or config.prior
    if kind not in PRIOR_CLASSES:
        raise ConfigError(f"unknown prior {kind!r}; expected one of {sorted(PRIOR_CLASSES)}")
    return PRIOR_CLASSES[kind](config)
