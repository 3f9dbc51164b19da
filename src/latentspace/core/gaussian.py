"""Diagonal Gaussians and the KL machinery every latent-state family uses.

`DiagGaussian` carries `(mu, logvar)`; `kl_to` is the closed form. `kl_loss` adds the two tricks of
RSSM training: free nats (with the linear anneal of ../shared/seeds/lbs.md `kl_loss`) and DreamerV3-style
KL balancing. `beta_schedule` gives the KL weight schedules (the linear warm-up of lipo.md and friends).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

LOG_2PI = math.log(2.0 * math.pi)


@dataclass
class DiagGaussian:
    """A batch of diagonal Gaussians N(mu, diag(exp(logvar))); the event is the last dimension.

    Args:
        mu: means, shape (..., D).
        logvar: log variances, same shape as `mu`.
    """

    mu: torch.Tensor
    logvar: torch.Tensor

    def __post_init__(self) -> None:
        if self.mu.shape != self.logvar.shape:
            raise ValueError(f"mu {tuple(self.mu.shape)} and logvar {tuple(self.logvar.shape)} differ in shape")

    @classmethod
    def from_params(cls, params: torch.Tensor, min_logvar: float = -10.0, max_logvar: float = 5.0):
        """Split a (..., 2D) network output into mean and a soft-clamped log variance."""
        mu, logvar = params.chunk(2, dim=-1)
        return cls(mu, logvar.clamp(min_logvar, max_logvar))

    @classmethod
    def standard(cls, shape, device=None, dtype=None) -> DiagGaussian:
        """N(0, I) with the given (..., D) shape."""
        zeros = torch.zeros(shape, device=device, dtype=dtype)
        return cls(zeros, zeros.clone())

    @property
    def var(self) -> torch.Tensor:
        return self.logvar.exp()

    @property
    def std(self) -> torch.Tensor:
        return (0.5 * self.logvar).exp()

    def rsample(self, n: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Reparameterised sample: (..., D), or (n, ..., D) when `n` is given."""
        shape = self.mu.shape if n is None else (n, *self.mu.shape)
        eps = torch.randn(shape, device=self.mu.device, dtype=self.mu.dtype, generator=generator)
        return self.mu + eps * self.std

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Log density of x (..., D), summed over the event dimension: (...)."""
        return -0.5 * (LOG_2PI + self.logvar + (x - self.mu).pow(2) / self.var).sum(-1)

    def entropy(self) -> torch.Tensor:
        """Differential entropy, (...)."""
        return 0.5 * (LOG_2PI + 1.0 + self.logvar).sum(-1)

    def kl_to(self, other: DiagGaussian) -> torch.Tensor:
        """Closed-form KL(self || other), summed over the event dimension: (...)."""
        var_ratio = (self.logvar - other.logvar).exp()
        mean_term = (self.mu - other.mu).pow(2) / other.var
        return 0.5 * (var_ratio + mean_term - 1.0 - (self.logvar - other.logvar)).sum(-1)

    def detach(self) -> DiagGaussian:
        return DiagGaussian(self.mu.detach(), self.logvar.detach())

    def __getitem__(self, index) -> DiagGaussian:
        return DiagGaussian(self.mu[index], self.logvar[index])


def annealed_free_nats(free_nats: float, step: int | None = None, total_steps: int | None = None) -> float:
    """Free nats linearly annealed to 0 over training, as in lbs.md: `free * max(0, 1 - step/total)`.

    Without `step`/`total_steps` the free nats stay constant.
    """
    if step is None or total_steps is None or total_steps <= 0:
        return float(free_nats)
    return float(free_nats) * max(0.0, 1.0 - step / total_steps)


def kl_loss(
    posterior: DiagGaussian,
    prior: DiagGaussian,
    free_nats: float = 0.0,
    step: int | None = None,
    total_steps: int | None = None,
    balance: float | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """KL(posterior || prior) with annealed free nats and optional KL balancing.

    Args:
        posterior, prior: Gaussians with the same (..., D) shape.
        free_nats: slack below which the KL of a sample is not penalised (clamped per sample, so one
            informative sample cannot hide behind the others, unlike the seed's sum-then-clamp).
        step, total_steps: anneal the free nats linearly to zero (lbs.md `kl_loss`).
        balance: DreamerV3 KL balancing weight alpha in [0, 1]: alpha * KL(sg(post) || prior) trains
            the prior toward the posterior and (1 - alpha) * KL(post || sg(prior)) regularises the
            posterior. `None` is the plain KL.
        reduction: "mean", "sum" or "none" over the batch dimensions.

    Returns:
        Scalar (or (...) with reduction "none").
    """
    slack = annealed_free_nats(free_nats, step, total_steps)
    if balance is None:
        kl = posterior.kl_to(prior)
        kl = torch.clamp(kl - slack, min=0.0)
    else:
        if not 0.0 <= balance <= 1.0:
            raise ValueError(f"balance must lie in [0, 1], got {balance}")
        kl_prior = posterior.detach().kl_to(prior)
        kl_post = posterior.kl_to(prior.detach())
        kl = balance * torch.clamp(kl_prior - slack, min=0.0) + (1.0 - balance) * torch.clamp(
            kl_post - slack, min=0.0
        )
    if reduction == "mean":
        return kl.mean()
    if reduction == "sum":
        return kl.sum()
    if reduction == "none":
        return kl
    raise ValueError(f"reduction must be mean, sum or none, got {reduction!r}")


def beta_schedule(step: int, beta_max: float, anneal_steps: int, kind: str = "linear", cycles: int = 4) -> float:
    """KL weight at `step`.

    kinds:
        constant: beta_max throughout.
        linear: beta_max * step / anneal_steps until anneal_steps, then beta_max (lipo.md KL annealing).
        cosine: half-cosine ramp from 0 to beta_max over anneal_steps.
        cyclical: `cycles` linear ramps, each over anneal_steps / cycles (Fu et al., 2019).
    """
    if kind == "constant" or anneal_steps <= 0:
        return float(beta_max)
    if kind == "linear":
        return float(beta_max) * min(1.0, step / anneal_steps)
    if kind == "cosine":
        frac = min(1.0, step / anneal_steps)
        return float(beta_max) * 0.5 * (1.0 - math.cos(math.pi * frac))
    if kind == "cyclical":
        period = max(1, anneal_steps // max(1, cycles))
        return float(beta_max) * min(1.0, (step % period) / (0.5 * period))
    raise ValueError(f"unknown beta schedule {kind!r}: expected constant, linear, cosine or cyclical")
