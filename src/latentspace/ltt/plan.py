"""Planning in latent space (ltt.md "Planning in Latent Space"): search initial states z0 whose rolled-out
trajectory ends nearest a goal latent, batched over all candidates at once.

`random_shooting` draws N candidates z0 from the prior, integrates them as one (N, D) batch and keeps the
best; `cem` (cross-entropy method) refits a diagonal Gaussian over z0 to the elite candidates for a few
iterations. Both roll out the prior's deterministic drift (an SDE prior is planned on its drift), score
with `trajectory_distance` and decode the best path. `reference_scores` is the slow one-candidate-at-a-time
loop of the seed, kept to test the batched scoring against.
"""

from __future__ import annotations

import dataclasses

import torch

from ..core.errors import ConfigError, DataError
from .priors import Prior


@dataclasses.dataclass
class PlanResult:
    """The best plan: z0 (D,), its trajectory (T, D), decoded tokens (T,), its distance, and search statistics."""

    z0: torch.Tensor
    trajectory: torch.Tensor
    tokens: torch.Tensor
    distance: float
    random_mean_distance: float  # mean distance of the first round of random candidates
    history: list[float]  # best distance after each iteration
    evaluated: int  # candidates rolled out in total


def trajectory_distance(paths: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
    """Distance of paths (N, T, D) to a goal -> (N,).

    A final state goal (D,) gives |z_T - goal|; a goal path (T, D) gives mean_t |z_t - g_t|.
    """
    if goal.dim() == 1:
        return (paths[:, -1] - goal).norm(dim=-1)  # (N,)
    if goal.shape != paths.shape[1:]:
        raise DataError(f"goal path shape {tuple(goal.shape)} does not match trajectories {tuple(paths.shape[1:])}")
    return (paths - goal).norm(dim=-1).mean(-1)  # (N,)


def rollout_drift(prior: Prior, z0: torch.Tensor, T: int) -> torch.Tensor:
    """The deterministic rollout of the prior's drift for candidates z0 (N, D) -> (N, T, D)."""
    return Prior.rollout(prior, z0, T)


@torch.no_grad()
def reference_scores(prior: Prior, z0: torch.Tensor, goal: torch.Tensor, T: int) -> torch.Tensor:
    """Slow reference: roll out and score each candidate z0 (N, D) alone, with explicit Euler steps -> (N,)."""
    dt = 1.0 / (T - 1)
    scores = []
    for z_init in z0:
        z = z_init[None]  # (1, D)
        path = [z]
        for k in range(T - 1):
            z = z + prior.drift(torch.tensor(k * dt), z) * dt
            path.append(z)
        scores.append(trajectory_distance(torch.stack(path, dim=1), goal)[0])
    return torch.stack(scores)


def _check(goal: torch.Tensor, prior: Prior, n_candidates: int) -> None:
    if goal.shape[-1] != prior.latent_dim:
        raise DataError(f"goal latent has dimension {goal.shape[-1]}, the model's latent_dim is {prior.latent_dim}")
    if not torch.isfinite(goal).all():
        raise DataError("goal latent holds NaN or infinite values")
    if n_candidates < 2:
        raise ConfigError(f"planning needs at least 2 candidates, got {n_candidates}")


@torch.no_grad()
def plan(model, goal: torch.Tensor, method: str = "cem", n_candidates: int = 256, iterations: int = 5,
         elite_frac: float = 0.1, prior: Prior | None = None, generator: torch.Generator | None = None,
         temperature: float = 0.0) -> PlanResult:
    """Search z0 so the trajectory reaches `goal` (a final latent (D,) or a path (T, D)); decode the best plan.

    Args:
        model: a LatentTrajectoryTransformer (its decoder turns the best path into tokens).
        method: "random" (random shooting, n_candidates * iterations draws) or "cem".
        n_candidates: candidates per iteration, rolled out as one batch.
        elite_frac: fraction of candidates that refit the CEM Gaussian.
        temperature: decoding temperature of the best path (0: greedy).
    """
    prior = prior or model.prior
    _check(goal, prior, n_candidates)
    T = model.seq_total if goal.dim() == 1 else goal.shape[0]
    D = prior.latent_dim
    if method == "random":
        z0 = prior.sample_z0(n_candidates * iterations, generator=generator)  # (N iters, D)
        scores = trajectory_distance(rollout_drift(prior, z0, T), goal)  # (N iters,)
        random_mean = float(scores[:n_candidates].mean())
        history = [float(scores[: n_candidates * (i + 1)].min()) for i in range(iterations)]
        best = int(scores.argmin())
        best_z0, best_score = z0[best], float(scores[best])
    elif method == "cem":
        n_elite = max(2, int(round(elite_frac * n_candidates)))
        z0 = prior.sample_z0(n_candidates, generator=generator)  # first round: the prior itself
        best_z0, best_score, history, random_mean = None, float("inf"), [], 0.0
        for i in range(iterations):
            scores = trajectory_distance(rollout_drift(prior, z0, T), goal)  # (N,)
            if i == 0:
                random_mean = float(scores.mean())
            order = scores.argsort()
            if float(scores[order[0]]) < best_score:
                best_score, best_z0 = float(scores[order[0]]), z0[order[0]].clone()
            history.append(best_score)
            elites = z0[order[:n_elite]]  # (E, D)
            mean, std = elites.mean(0), elites.std(0).clamp_min(1e-3)  # (D,)
            noise = torch.randn(n_candidates, D, generator=generator, device=z0.device)
            z0 = mean + std * noise  # (N, D)
    else:
        raise ConfigError(f"unknown planning method {method!r}: expected 'random' or 'cem'")
    trajectory = rollout_drift(prior, best_z0[None], T)  # (1, T, D)
    tokens = model.decode(trajectory, temperature=temperature, generator=generator)[0]
    return PlanResult(best_z0, trajectory[0], tokens, best_score, random_mean, history, n_candidates * iterations)
