import pytest
import torch

from latentspace.core.errors import ConfigError
from latentspace.lbs.forecast import rollout


def test_steering_moves_prior_mean_toward_goal(goal_model, tiny_cfg):
    d = tiny_cfg.latent_dim
    h = torch.randn(4, d)
    goal = torch.full((d,), 3.0)
    base = goal_model.prior(h).mu
    for strength, expect in ((0.0, 1.0), (0.5, 0.5), (1.0, 0.0)):
        goal_model.set_goal(goal, strength)
        steered = goal_model.prior(h).mu
        ratio = (steered - goal).norm(dim=-1) / (base - goal).norm(dim=-1)
        torch.testing.assert_close(ratio, torch.full((4,), expect), atol=1e-5, rtol=1e-4)
    goal_model.clear_goal()
    torch.testing.assert_close(goal_model.prior(h).mu, base)


def test_goal_from_value_decodes_to_target(goal_model):
    start = torch.randn(3, goal_model.cfg.latent_dim)
    z = goal_model.goal_from_value(torch.tensor([2.0, -1.0, 0.5]), start=start, steps=300, lr=0.1)
    torch.testing.assert_close(goal_model.mlp_val(z).squeeze(-1), torch.tensor([2.0, -1.0, 0.5]), atol=0.05, rtol=0)


def test_value_goal_moves_forecasts(goal_model):
    d = goal_model.cfg.latent_dim
    x, h = torch.randn(6, d), torch.randn(1, 6, d)
    gen = torch.Generator().manual_seed(0)
    base, _ = rollout(goal_model, x, h, 5, 32, gen)
    target = float(base.mean()) + 2.0
    goal_model.set_goal(goal_model.goal_from_value(target, steps=300)[0], strength=0.8)
    steered, _ = rollout(goal_model, x, h, 5, 32, torch.Generator().manual_seed(0))
    moved = (steered.mean(0) - target).abs() < (base.mean(0) - target).abs()  # (B, H)
    assert moved.float().mean() > 0.9


def test_goal_from_text_is_a_posterior_mean(goal_model):
    h = torch.randn(1, 2, goal_model.cfg.latent_dim)
    g1 = goal_model.goal_from_text("demand surges", h)
    g2 = goal_model.goal_from_text("demand collapses", h)
    assert g1.shape == (2, goal_model.cfg.latent_dim) and not torch.allclose(g1, g2)


def test_bad_goal(goal_model):
    with pytest.raises(ConfigError):
        goal_model.set_goal(torch.zeros(goal_model.cfg.latent_dim), strength=1.5)
    with pytest.raises(ConfigError):
        goal_model.set_goal(torch.zeros(goal_model.cfg.latent_dim + 1))


def test_text_goal_moves_forecast_toward_what_the_text_implies(goal_model):
    """On the generated series a "surge" report precedes a rise and a "slump" report a fall: steering by the
    surge text must give higher forecasts than steering by the slump text, at every origin."""
    from latentspace.lbs.data import REGIMES, Standardizer, generated_series
    from latentspace.lbs.evaluate import _filtered

    series = generated_series(steps=240)
    scaler = Standardizer(series.values[:160])
    assert goal_model.fit_text_effects(series, scaler, horizon=4, end=160) > 0
    up_text, down_text = REGIMES["surge"][0], REGIMES["slump"][0]
    assert goal_model.text_implied_change(up_text) > 0.3 > -0.3 > goal_model.text_implied_change(down_text)
    origins = list(range(170, 236, 8))
    x, h = _filtered(goal_model, series, scaler, origins, 16, False)
    base, _ = rollout(goal_model, x, h, 4, 1, noise=False)
    means = {}
    for text in (up_text, down_text):
        goal_model.set_goal(goal_model.goal_from_text(text, h, x=x, horizon=4), strength=0.5)
        means[text] = rollout(goal_model, x, h, 4, 1, noise=False)[0][0].mean(1)  # (B,)
    goal_model.clear_goal()
    assert (means[up_text] > base[0].mean(1)).all() and (means[down_text] < base[0].mean(1)).all()
    assert (means[up_text] - means[down_text]).min() > 0.2
