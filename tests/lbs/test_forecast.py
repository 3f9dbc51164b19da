import numpy as np
import torch

from latentspace.lbs.data import Standardizer, generated_series
from latentspace.lbs.forecast import errors, forecast, forecast_origins, naive_forecast, seasonal_naive_forecast


def test_forecast_horizon_and_ordered_quantiles(model):
    s = generated_series(steps=80)
    sc = Standardizer(s.values[:50])
    origins = forecast_origins(len(s), 50, 5, max_origins=7)
    f = forecast(model, s, sc, origins, context=12, horizon=5, samples=16, levels=(0.1, 0.5, 0.9), with_text=True)
    assert f.samples.shape == (16, len(origins), 5) and f.mean.shape == (len(origins), 5)
    assert f.quantiles.shape == (3, len(origins), 5)
    assert torch.all(f.quantiles[0] <= f.quantiles[1]) and torch.all(f.quantiles[1] <= f.quantiles[2])
    assert len(f.texts) == len(origins) and all(isinstance(t, str) for t in f.texts)


def test_baselines():
    z = np.arange(30, dtype=float)
    assert (naive_forecast(z, [10], 3) == 9).all()
    assert seasonal_naive_forecast(z, [20], 6, period=4).tolist() == [[16, 17, 18, 19, 16, 17]]
    assert errors(naive_forecast(z, [10], 2), z, [10], 2)["mae"] == 1.5


def test_persistence_reads_the_rollout_as_a_change(tiny_cfg):
    from latentspace.lbs.model import BaseLBS

    s = generated_series(steps=80)
    sc = Standardizer(s.values[:50])
    origins = [40, 55, 70]
    last = torch.tensor(sc(s.values)[[o - 1 for o in origins]], dtype=torch.float32)
    for persistence, instance_norm in ((True, False), (True, True), (False, False)):
        m = BaseLBS(tiny_cfg.replace(highway=0, persistence=persistence))
        torch.nn.init.zeros_(m.mlp_val.weight)
        torch.nn.init.constant_(m.mlp_val.bias, 0.7)  # a latent path that predicts no change, decoded with an offset
        f = forecast(m, s, sc, origins, context=12, horizon=4, samples=4, instance_norm=instance_norm)
        expect = last[:, None].expand(-1, 4) if persistence else torch.full((3, 4), 0.7)
        torch.testing.assert_close(f.mean, expect, atol=1e-5, rtol=0)


def test_point_path_is_the_deterministic_prior_mean_rollout(model):
    s = generated_series(steps=80)
    sc = Standardizer(s.values[:50])
    origins = [40, 60]
    a = forecast(model, s, sc, origins, context=12, horizon=4, samples=8, seed=0, point="path")
    b = forecast(model, s, sc, origins, context=12, horizon=4, samples=32, seed=1, point="path")
    torch.testing.assert_close(a.mean, b.mean)  # independent of the samples
    c = forecast(model, s, sc, origins, context=12, horizon=4, samples=8, seed=0, point="samples")
    torch.testing.assert_close(c.mean, c.samples.mean(0))
    torch.testing.assert_close(a.quantiles, c.quantiles)  # the quantiles still come from the samples
    # with a (near) deterministic prior, the sampled mean and the mean path coincide
    torch.nn.init.constant_(model.mlp_prior.bias[model.cfg.latent_dim :], -30.0)
    torch.nn.init.zeros_(model.mlp_prior.weight)
    d = forecast(model, s, sc, origins, context=12, horizon=4, samples=8, point="path")
    e = forecast(model, s, sc, origins, context=12, horizon=4, samples=8, point="samples")
    torch.testing.assert_close(d.mean, e.mean, atol=1e-2, rtol=0)  # prior std >= exp(-5): clamped
