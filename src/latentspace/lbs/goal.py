"""GoalLBS: steer the transition prior's mean toward a goal latent, from a target value or a goal text.

The seed's idea: nudging `prior_mu` toward a goal makes every rollout (and, through the KL, the
posterior) drift toward it. `strength` in [0, 1] interpolates: 0 leaves the prior alone, 1 replaces
its mean by the goal.
"""

from __future__ import annotations

import torch

from ..core.errors import ConfigError
from ..core.gaussian import DiagGaussian
from .model import BaseLBS


class GoalLBS(BaseLBS):
    """BaseLBS with a steerable prior: `prior_mu <- prior_mu + strength * (goal - prior_mu)`."""

    def __init__(self, cfg=None, model=None, tokenizer=None):
        super().__init__(cfg, model, tokenizer)
        self.goal: torch.Tensor | None = None  # (D,) or (B, D); not saved: a goal belongs to a query
        self.strength = 0.0

    def set_goal(self, goal: torch.Tensor, strength: float = 0.5) -> None:
        """Steer toward `goal` (D,) or (B, D) with `strength` in [0, 1]."""
        if not 0.0 <= strength <= 1.0:
            raise ConfigError(f"steering strength must lie in [0, 1], got {strength}")
        if goal.shape[-1] != self.cfg.latent_dim:
            raise ConfigError(f"goal latent has size {goal.shape[-1]}, expected latent_dim {self.cfg.latent_dim}")
        self.goal = goal.detach().to(self.device)
        self.strength = float(strength)

    def clear_goal(self) -> None:
        self.goal, self.strength = None, 0.0

    def prior(self, h_top: torch.Tensor) -> DiagGaussian:
        """The steered prior: h (B, D) -> N(mu + strength * (goal - mu), var)."""
        prior = super().prior(h_top)
        if self.goal is None or self.strength == 0.0:
            return prior
        goal = self.goal if self.goal.dim() == 1 or self.goal.shape[0] == h_top.shape[0] else \
            self.goal.repeat(h_top.shape[0] // self.goal.shape[0], 1)
        return DiagGaussian(prior.mu + self.strength * (goal - prior.mu), prior.logvar)

    def goal_from_value(self, target: float | torch.Tensor, start: torch.Tensor | None = None, steps: int = 200,
                        lr: float = 0.1, l2: float = 1e-3) -> torch.Tensor:
        """A latent whose decoded value is `target` (standardised), by gradient descent through mlp_val.

        Minimises (mlp_val(z) - target)^2 + l2 * |z - start|^2 from `start` (B, D) (default 0), so the goal
        stays near the current belief and changes only what the value needs.

        Returns:
            (B, D) goal latents (B = 1 without `start`).
        """
        start = torch.zeros(1, self.cfg.latent_dim, device=self.device) if start is None else start.detach()
        target = torch.as_tensor(target, dtype=start.dtype, device=self.device).reshape(-1)
        z = start.clone().requires_grad_(True)
        opt = torch.optim.Adam([z], lr=lr)
        for _ in range(steps):
            opt.zero_grad()
            loss = (self.mlp_val(z).squeeze(-1) - target).pow(2).sum() + l2 * (z - start).pow(2).sum()
            loss.backward(inputs=[z])
            opt.step()
        return z.detach()

    @torch.no_grad()
    def goal_from_text(self, text: str, h: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The posterior mean given the goal text as the step's observation: (B, D).

        Args:
            h: the GRU memory (layers, B, D) at the step to steer; y: the value to pair with it (B,)
                (default: the prior's own prediction, so only the text moves the latent).
        """
        s = self.encode_text(text).expand(h.shape[1], -1)  # (B, D)
        prior = BaseLBS.prior(self, h[-1])
        if y is None:
            y = self.mlp_val(prior.mu).squeeze(-1)
        return self.posterior(h[-1], y, s).mu
