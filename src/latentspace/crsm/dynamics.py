"""Latent dynamics: a small MLP f(state, action embedding) -> delta h, the planner's fast world model.

Distilled (pipeline stage 2) from the backbone's own traces: for each position t it learns
h_{t+1} - h_t from (h_t, embedding(token_{t+1})), with an MSE loss. MCTS then steps h' = h + f(h, a)
instead of running every Mamba layer.
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


class FusedDynamics:
    """The search's form of h' = h + f(h, e(a)), for frozen weights: the action half of the first layer is a table.

    The first layer W1 [h; e(a)] + b1 splits into W1_h h + (W1_e e(a) + b1); the second term depends on the token
    only, so it is precomputed for the whole vocabulary (V, H) and a step is one row gather plus three `addmm`s,
    written straight into the caller's buffer. Equal to `LatentDynamics.next_state` up to float rounding.

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

    def __call__(self, state: torch.Tensor, tokens: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """state (N, D), tokens (N,) -> next state (N, D), into `out` when given."""
        x = torch.addmm(self.action_table.index_select(0, tokens), state, self.w1_t)  # (N, H)
        torch.nn.functional.silu(x, inplace=True)
        x = torch.addmm(self.b2, x, self.w2_t)
        torch.nn.functional.silu(x, inplace=True)
        out = torch.addmm(self.b3, x, self.w3_t, out=out)  # f(h, a): (N, D)
        return out.add_(state)
