import numpy as np
import torch

from latentspace.core.training import TrainConfig
from latentspace.lbs.config import LBSConfig, WindowConfig
from latentspace.lbs.data import Standardizer, generated_series
from latentspace.lbs.forecast import errors, forecast, forecast_origins
from latentspace.lbs.model import BaseLBS
from latentspace.lbs.train import seed_loop, train_lbs


def test_tiny_model_learns_one_step_forecast():
    torch.manual_seed(0)
    s = generated_series(steps=160, seed=2)
    tr, _ = s.split(0.75, 0.0)
    sc = Standardizer(s.values[:tr])
    model = BaseLBS(LBSConfig.preset("tiny").replace(text_loss_samples=2))
    wcfg = WindowConfig(window=16, batch=8, bptt=8, instance_norm=False)  # absolute levels: learning shows
    origins = forecast_origins(len(s), tr, 1, max_origins=30)
    z = sc(s.values)
    before = errors(forecast(model, s, sc, origins, 12, 1, samples=8).mean.numpy(), z, origins, 1)["mse"]
    result = train_lbs(model, s, sc, wcfg, TrainConfig(steps=60, lr=1e-2, log_every=1000), quiet=True)
    after = errors(forecast(model, s, sc, origins, 12, 1, samples=8).mean.numpy(), z, origins, 1)["mse"]
    assert np.isfinite(result.metrics["loss"]) and after < 0.5 * before and after < np.var(z[origins])


def test_seed_loop_runs():
    s = generated_series(steps=40)
    model = BaseLBS(LBSConfig.preset("tiny"))
    assert seed_loop(model, s, Standardizer(s.values), steps=3) > 0
