"""The statistical highway: ARIMA / ETS fitted on the training part, their forecasts at every step in one pass."""

import json

import numpy as np
import pytest
import torch

from latentspace.core.errors import ConfigError
from latentspace.core.training import TrainConfig
from latentspace.lbs.config import LBSConfig, WindowConfig
from latentspace.lbs.data import Standardizer, TextSeries, generated_series
from latentspace.lbs.forecast import arima_forecast, ets_forecast, forecast
from latentspace.lbs.model import BaseLBS
from latentspace.lbs.stat import fit_stat_spec, stat_table
from latentspace.lbs.train import select_highway, train_lbs


def _ar_series(n=200, seed=0):
    rng = np.random.default_rng(seed)
    z = np.zeros(n)
    for t in range(1, n):
        z[t] = 0.3 + 0.7 * z[t - 1] + rng.standard_normal()
    return z


@pytest.mark.parametrize("kind", ["arima", "ets"])
def test_stat_table_equals_refiltering_at_each_origin(kind):
    z = _ar_series()
    spec = fit_stat_spec(z[:140], kind)
    table = stat_table(spec, z, 4)  # (T, 4)
    origins = [150, 171, 196]
    baseline = (arima_forecast if kind == "arima" else ets_forecast)(z, 140, origins, 4)[0]  # the baselines' way
    np.testing.assert_allclose(table[np.array(origins) - 1], baseline, atol=1e-8)
    # causal: changing the future does not change earlier rows
    later = z.copy()
    later[160:] += 5.0
    np.testing.assert_allclose(stat_table(spec, later, 4)[:160], table[:160], atol=1e-10)
    assert spec["name"] and len(spec["params"]) > 0


def test_stat_highway_forecast_starts_as_the_statistical_forecast(tiny_cfg, tmp_path):
    s = generated_series(steps=120)
    sc = Standardizer(s.values[:80])
    z = sc(s.values)
    torch.manual_seed(0)
    m = BaseLBS(tiny_cfg.replace(highway_source="arima+ets", overshoot=3, value_zero_init=True))
    assert m.highway is None and m.uses_stat
    with pytest.raises(ConfigError, match="not fitted"):
        m.stat_table(z, 3)
    m.fit_highway(torch.tensor(z[:80]))
    origins = [90, 100, 110]
    expect = (arima_forecast(z, 80, origins, 3)[0] + ets_forecast(z, 80, origins, 3)[0]) / 2
    f = forecast(m, s, sc, origins, context=12, horizon=3, samples=4, instance_norm=True, point="path")
    np.testing.assert_allclose(f.mean.numpy(), expect, atol=1e-5)
    # the fitted forecasters are model state, saved in the checkpoint: a loaded model forecasts the same
    assert "highway_stat" not in m.cfg.to_dict()
    again = BaseLBS.load(m.save(tmp_path / "m"))
    assert json.dumps(again.highway_stat, sort_keys=True) == json.dumps(m.highway_stat, sort_keys=True)
    f2 = forecast(again, s, sc, origins, context=12, horizon=3, samples=4, instance_norm=True, point="path")
    torch.testing.assert_close(f2.mean, f.mean)
    # a checkpoint of before (the fit as JSON text in config.json) converts on load
    header = json.loads((tmp_path / "m" / "config.json").read_text())
    header["config"]["highway_stat"] = json.dumps(header["metadata"].pop("highway_stat"))
    (tmp_path / "m" / "config.json").write_text(json.dumps(header))
    old = BaseLBS.load(tmp_path / "m")
    assert json.dumps(old.highway_stat, sort_keys=True) == json.dumps(m.highway_stat, sort_keys=True)
    x, _ = m.initial_state(1)
    with pytest.raises(ConfigError, match="needs the statistical forecast"):
        m.forecast_offset(x, torch.zeros(1, 12), torch.zeros(1, 1), 3)


def test_training_with_a_statistical_highway_learns_a_correction():
    torch.manual_seed(0)
    s = generated_series(steps=160, seed=3)
    tr, _ = s.split(0.6, 0.2)
    sc = Standardizer(s.values[:tr])
    model = BaseLBS(LBSConfig.preset("tiny").replace(text_loss_samples=0, highway_source="ets", overshoot=3,
                                                     value_zero_init=True))
    wcfg = WindowConfig(window=16, batch=4, bptt=8, context=12, horizon=3, train_frac=0.6, val_frac=0.2)
    train_lbs(model, s, sc, wcfg, TrainConfig(steps=6, lr=1e-2, log_every=1000), quiet=True)
    assert model.mlp_val.weight.abs().sum() > 0  # the latent's correction moved off zero
    origins = [130, 140]
    z = sc(s.values)
    f = forecast(model, s, sc, origins, context=12, horizon=3, samples=4, instance_norm=True)
    ets = ets_forecast(z, tr, origins, 3)[0]
    assert not np.allclose(f.mean.numpy(), ets, atol=1e-6)  # LBS = ETS + its own correction


def test_frozen_linear_highway_gets_no_gradient(tiny_cfg):
    m = BaseLBS(tiny_cfg.replace(highway=3, overshoot=2, highway_train=False))
    assert not m.highway.weight.requires_grad
    assert all(p.requires_grad for n, p in m.named_parameters() if n.startswith("mlp_val"))


def test_select_highway_can_choose_a_statistical_source():
    rng = np.random.default_rng(1)
    z = np.cumsum(rng.standard_normal(400))  # a random walk plus noise: smoothing beats a short linear fit
    z = z + 2.0 * rng.standard_normal(400)
    s = TextSeries("rw", [f"d{i}" for i in range(len(z))], z, [""] * len(z))
    wcfg = WindowConfig(context=24, horizon=3)
    choice, rows = select_highway(s, Standardizer(z[:280]), wcfg, steps=3)
    sources = {r["highway_source"] for r in rows}
    assert sources == {"linear", "arima", "ets", "arima+ets"}
    best = min(rows, key=lambda r: r["val_mse"])
    assert choice["highway_source"] == best["highway_source"]
    # the ETS row scores exactly the baseline ETS forecast at the validation origins
    ets_row = next(r for r in rows if r["highway_source"] == "ets")
    from latentspace.lbs.forecast import forecast_origins

    zs = Standardizer(z[:280])(z)
    origins = forecast_origins(320, 280, 3, max_origins=60)
    pred = ets_forecast(zs, 280, origins, 3)[0]
    truth = np.stack([zs[o : o + 3] for o in origins])
    assert ets_row["val_mse"] == pytest.approx(float(np.mean((pred - truth) ** 2)), rel=1e-6)
