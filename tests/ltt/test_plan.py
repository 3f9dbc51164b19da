"""Tests of batched latent planning against the one-candidate-at-a-time reference, and its error paths."""

import pytest
import torch

from latentspace.core.errors import ConfigError, DataError
from latentspace.ltt.config import LTTConfig
from latentspace.ltt.model import LatentTrajectoryTransformer
from latentspace.ltt.plan import plan, reference_scores, rollout_drift, trajectory_distance


def test_batched_scores_match_the_reference_loop():
    torch.manual_seed(0)
    model = LatentTrajectoryTransformer(LTTConfig.preset("tiny")).eval()
    z0 = torch.randn(12, model.config.latent_dim)
    goal = torch.randn(model.config.latent_dim)
    with torch.no_grad():
        batched = trajectory_distance(rollout_drift(model.prior, z0, model.seq_total), goal)
    reference = reference_scores(model.prior, z0, goal, model.seq_total)
    assert batched.shape == (12,)
    assert torch.allclose(batched, reference, atol=1e-5)
    goal_path = torch.randn(model.seq_total, model.config.latent_dim)
    with torch.no_grad():
        batched_path = trajectory_distance(rollout_drift(model.prior, z0, model.seq_total), goal_path)
    assert torch.allclose(batched_path, reference_scores(model.prior, z0, goal_path, model.seq_total), atol=1e-5)


def test_planning_rejects_bad_goals():
    model = LatentTrajectoryTransformer(LTTConfig.preset("tiny")).eval()
    with pytest.raises(DataError):
        plan(model, torch.zeros(model.config.latent_dim + 1))
    with pytest.raises(DataError):
        plan(model, torch.full((model.config.latent_dim,), float("nan")))
    with pytest.raises(ConfigError):
        plan(model, torch.zeros(model.config.latent_dim), method="annealing")
    with pytest.raises(ConfigError):
        plan(model, torch.zeros(model.config.latent_dim), n_candidates=1)
