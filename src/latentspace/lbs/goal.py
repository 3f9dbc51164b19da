"""GoalLBS: steer the transition prior's mean toward a goal latent, from a target value or a goal text.

The seed's idea: nudging `prior_mu` toward a goal makes every rollout (and, through the KL, the
posterior) drift toward it. `strength` in [0, 1] interpolates: 0 leaves the prior alone, 1 replaces
its mean by the goal.

A goal text is turned into a goal in two ways. Without history, `goal_from_text` returns the posterior
mean with the goal text as the step's observation (the seed's way). That only steers if the trained
latent maps the text to a different forecast, and with the highway carrying the linear forecast and
mlp_val starting at zero it barely does: on the generated series a "surge" and a "slump" goal text give
posterior means whose forecasts differ by ~0.01 (and in the wrong order). With history
(`fit_text_effects`: the series' past texts, embedded by the model's own encoder, and the change in value
that followed each) the goal text's implied change is read off the texts nearest to it in the encoder's
space, and the goal latent is the one whose decoded value is the forecast plus that change
(`goal_from_value`): steering by text then moves the forecast toward what such texts preceded.
"""

from __future__ import annotations

import numpy as np
import torch

from ..core.errors import ConfigError
from ..core.gaussian import DiagGaussian
from .data import Standardizer, TextSeries
from .model import BaseLBS


class GoalLBS(BaseLBS):
    """BaseLBS with a steerable prior: `prior_mu <- prior_mu + strength * (goal - prior_mu)`."""

    def __init__(self, cfg=None, model=None, tokenizer=None):
        super().__init__(cfg, model, tokenizer)
        self.goal: torch.Tensor | None = None  # (D,) or (B, D); not saved: a goal belongs to a query
        self.strength = 0.0
        # (N, D) encoder embeddings of past texts and (N,) the value change that followed each: fit_text_effects
        self.text_effects: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

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
    def fit_text_effects(self, series: TextSeries, scaler: Standardizer, horizon: int = 6,
                         end: int | None = None) -> int:
        """Remember what followed each text of series[:end]: its embedding and the value change after it.

        The change after step t is mean(z[t+1 .. t+horizon]) - z[t] (standardised), minus the mean change
        over all steps, so a text's effect is what it adds to the series' drift. Texts are encoded in one
        batch through the model's encoder (cached); embeddings are centred on their mean, since a frozen
        LM's states share a large common direction (raw cosines all ~0.95). Returns the number kept.
        """
        end = len(series) if end is None else min(end, len(series))
        z = np.asarray(scaler(series.values[:end]), dtype=np.float64)
        last = end - horizon  # steps with a full horizon after them
        if last < 1:
            self.text_effects = None
            return 0
        change = np.array([z[t + 1 : t + 1 + horizon].mean() - z[t] for t in range(last)])
        change = change - change.mean()
        keep = [t for t in range(last) if series.texts[t]]
        if not keep:
            self.text_effects = None
            return 0
        emb = self.encode_text([series.texts[t] for t in keep]).float()  # (N, D)
        center = emb.mean(0, keepdim=True)  # (1, D)
        self.text_effects = (emb - center, torch.tensor(change[keep], dtype=torch.float32), center)
        return len(keep)

    @torch.no_grad()
    def text_implied_change(self, text: str, temperature: float = 0.05) -> float:
        """The value change (standardised) that texts like `text` preceded: a softmax over centred cosines."""
        if self.text_effects is None:
            raise ConfigError("text_implied_change needs fit_text_effects(series, scaler) first")
        emb, change, center = self.text_effects
        s = self.encode_text(text).float().to(emb.device) - center  # (1, D)
        cos = torch.nn.functional.cosine_similarity(emb, s, dim=-1)  # (N,)
        w = torch.softmax(cos / temperature, 0)
        return float((w * change.to(w.device)).sum())

    def goal_from_text(self, text: str, h: torch.Tensor, y: torch.Tensor | None = None,
                       x: torch.Tensor | None = None, horizon: int = 6) -> torch.Tensor:
        """A goal latent (B, D) for a goal text at the step whose GRU memory is h (layers, B, D).

        With `fit_text_effects` done and the filtered latent x (B, D) given: the latent whose decoded value
        is the unsteered forecast's mean (the prior-mean path of `horizon` steps) plus the change the text
        implies (`text_implied_change`), found by `goal_from_value` from x. Otherwise the posterior mean with
        the goal text as the step's observation, paired with the value y (B,) (default: the prior's own
        prediction, so only the text moves the latent).
        """
        if self.text_effects is not None and x is not None:
            from .forecast import rollout

            goal, strength = self.goal, self.strength
            self.clear_goal()  # the forecast the goal is relative to is the unsteered one
            path, _ = rollout(self, x, h, horizon, 1, noise=False)  # (1, B, H) decoded values
            self.goal, self.strength = goal, strength
            target = path[0].mean(1) + self.text_implied_change(text)  # (B,)
            with torch.enable_grad():
                return self.goal_from_value(target, start=x)
        with torch.no_grad():
            s = self.encode_text(text).expand(h.shape[1], -1)  # (B, D)
            prior = BaseLBS.prior(self, h[-1])
            if y is None:
                y = self.mlp_val(prior.mu).squeeze(-1)
            return self.posterior(h[-1], y, s).mu
