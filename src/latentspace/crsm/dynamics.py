"""Latent dynamics: a small MLP f(state, action embedding) -> delta h, the planner's fast world model.

Distilled (pipeline stage 2) from the backbone's own traces: for each position t it learns
h_{t+1} - h_t from (h_t, embedding(token_{t+1})), with an MSE loss. MCTS then steps h' = h + f(h, a)
instead of running every Mamba layer (`kernels.FusedDynamics` is its fused form for the search).
"""

from __future__ import annotations

import torch
from torch import nn


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
