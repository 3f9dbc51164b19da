"""Evaluate LBS on one series, side by side with its baselines and its no-text ablation, plus steering.

`evaluate_series` trains LBS with text and LBS without text (text embeddings zeroed) on the training
part, forecasts every test origin, and scores naive, seasonal naive and ARIMA on the same origins
(standardised units). `steer_report` measures how far GoalLBS moves forecasts toward a goal value.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from ..core.runs import Run
from ..core.training import TrainConfig
from .config import LBSConfig, WindowConfig
from .data import Standardizer, TextSeries
from .forecast import (
    arima_forecast,
    context_tensors,
    errors,
    ets_forecast,
    filter_context,
    forecast,
    forecast_origins,
    naive_forecast,
    rollout,
    seasonal_naive_forecast,
)
from .goal import GoalLBS
from .train import select_highway, train_lbs


@dataclasses.dataclass
class SeriesResult:
    name: str
    metrics: dict[str, float]
    origins: list[int]
    forecasts: dict[str, np.ndarray]  # method -> (B, H) standardised
    quantiles: np.ndarray  # (3, B, H) of LBS with text
    model: GoalLBS


def evaluate_series(series: TextSeries, cfg: LBSConfig, wcfg: WindowConfig, tcfg: TrainConfig,
                    max_origins: int = 60, run: Run | None = None, quiet: bool = True,
                    steer: bool = True, select_highway_on_val: bool = False, seeds: int = 1) -> SeriesResult:
    """Train LBS with and without text on series[:train_end], forecast the test part, compare baselines.

    With `select_highway_on_val` the highway (features, order, ridge, level smoothing) is first chosen on the
    validation part (`select_highway`), the same for both variants. With `seeds` > 1 each variant is an
    ensemble of that many models (head initialisation and window order differ; the frozen sensor is shared):
    the point forecast is the members' mean, the quantiles pool their samples.
    """
    train_end, val_end = series.split(wcfg.train_frac, wcfg.val_frac)
    scaler = Standardizer(series.values[:train_end])
    z = scaler(series.values)
    start = max(val_end, wcfg.context, series.period)
    origins = forecast_origins(len(series), start, wcfg.horizon, max_origins)
    metrics: dict[str, float] = {"steps": float(len(series)), "origins": float(len(origins)),
                                 "text_coverage": series.text_coverage()}
    if select_highway_on_val:
        choice, table = select_highway(series, scaler, wcfg, cfg.overshoot)
        cfg = cfg.replace(**choice)
        if choice["highway_source"] == "linear":
            metrics["highway_choice"] = (f"q={choice['highway']} {choice['highway_features']} "
                                         f"alpha={choice['highway_alpha']:.2f} ridge={choice['highway_ridge']}")
        else:
            best = min((r for r in table if r["highway_source"] == choice["highway_source"]),
                       key=lambda r: r["val_mse"])
            metrics["highway_choice"] = f"{choice['highway_source']}: {best['stat_models']}"
        metrics["val_mse_highway"] = min(r["val_mse"] for r in table)
        for source in ("linear", "arima", "ets", "arima+ets"):  # the best candidate of each source, for the record
            vals = [r["val_mse"] for r in table if r["highway_source"] == source]
            if vals:
                metrics[f"val_mse_highway_{source}"] = min(vals)
        metrics["val_mse_last_value"] = table[0]["val_mse"]
    forecasts: dict[str, np.ndarray] = {}
    models = {}
    cache = None
    val_origins = forecast_origins(val_end, max(train_end, wcfg.context), wcfg.horizon, max_origins)
    val_truth = np.stack([z[o : o + wcfg.horizon] for o in val_origins])
    for name, use_text in (("text", True), ("notext", False)):
        means, samples, val_means, val_mses, t0 = [], [], [], [], time.perf_counter()
        for k in range(max(1, seeds)):
            torch.manual_seed(tcfg.seed + k)
            model = GoalLBS(cfg.replace(use_text=use_text))
            if cache is not None:
                model.cache = cache  # same sensor and namespace: each text meets the LM once per series
            cache = model.cache
            sub_run = Run(run.family, path=run.path / (name if k == 0 else f"{name}_{k}")) if run is not None else None
            result = train_lbs(model, series, scaler, wcfg, tcfg.replace(seed=tcfg.seed + k), run=sub_run,
                               quiet=quiet, end=train_end)
            if "val_mse_best" in result.metrics:
                val_mses.append(result.metrics["val_mse_best"])
            model.eval()
            fc = forecast(model, series, scaler, origins, wcfg.context, wcfg.horizon, wcfg.samples, seed=tcfg.seed,
                          instance_norm=wcfg.instance_norm, point=wcfg.point)
            means.append(fc.mean)
            samples.append(fc.samples)
            val_means.append(forecast(model, series, scaler, val_origins, wcfg.context, wcfg.horizon, wcfg.samples,
                                      seed=tcfg.seed, instance_norm=wcfg.instance_norm, point=wcfg.point).mean)
            if k == 0:
                models[name] = model
                metrics[f"best_step_{name}"] = result.metrics.get("best_step", float(result.step))
        metrics[f"train_s_{name}"] = time.perf_counter() - t0
        if val_mses:
            metrics[f"val_mse_{name}"] = float(np.mean(val_mses))
        forecasts[f"lbs_{name}"] = torch.stack(means).mean(0).numpy()
        # validation MSE of the ensemble's point forecast and of its first member alone (the test part is unread)
        metrics[f"val_mse_{name}_ensemble"] = float(np.mean((torch.stack(val_means).mean(0).numpy() - val_truth) ** 2))
        metrics[f"val_mse_{name}_member0"] = float(np.mean((val_means[0].numpy() - val_truth) ** 2))
        if use_text:
            pooled = torch.cat(samples, 0).float()  # (seeds * N, B, H)
            quantiles = torch.quantile(pooled, torch.tensor([0.1, 0.5, 0.9]), dim=0).numpy()
    forecasts["naive"] = naive_forecast(z, origins, wcfg.horizon)
    forecasts["seasonal_naive"] = seasonal_naive_forecast(z, origins, wcfg.horizon, series.period)
    forecasts["arima"], order = arima_forecast(z, train_end, origins, wcfg.horizon)
    forecasts["ets"], ets_name = ets_forecast(z, train_end, origins, wcfg.horizon)
    for method, pred in forecasts.items():
        for key, value in errors(pred, z, origins, wcfg.horizon).items():
            metrics[f"{key}_{method}"] = value
    # the statistical baseline LBS is judged against: the better of ARIMA and ETS on this test part
    # (picked with hindsight, so the comparison is strict for LBS)
    metrics["mse_stat"] = min(metrics["mse_arima"], metrics["mse_ets"])
    metrics["stat_best"] = "arima" if metrics["mse_arima"] <= metrics["mse_ets"] else "ets"
    metrics["ets_model"] = ets_name
    truth = np.stack([z[o : o + wcfg.horizon] for o in origins])
    inside = (quantiles[0] <= truth) & (truth <= quantiles[2])
    metrics["coverage_80_text"] = float(inside.mean())
    metrics["stat_order"] = order
    if steer:
        metrics.update(steer_report(models["text"], series, scaler, origins, wcfg))
    return SeriesResult(series.name, metrics, origins, forecasts, quantiles, models["text"])


@torch.no_grad()
def _filtered(model: GoalLBS, series, scaler, origins, context, instance_norm):
    y, s, _ = context_tensors(model, series, scaler, origins, context, instance_norm)
    return filter_context(model, y, s)


def steer_report(model: GoalLBS, series: TextSeries, scaler: Standardizer, origins: list[int], wcfg: WindowConfig,
                 offset: float = 1.0, strength: float = 0.5, seed: int = 0) -> dict[str, float]:
    """Share of forecasts that move toward a goal value, and by how much.

    For each origin the goal is the unsteered mean forecast +/- `offset` (alternating sign, standardised
    units); the goal latent comes from `goal_from_value` (optimised through mlp_val, starting at the
    filtered state), and the prior is steered with `strength`.

    Returns:
        steer_toward_goal_frac: share of (origin, horizon step) forecasts closer to their goal than unsteered;
        steer_gap_closed_mean: mean fraction of the distance to the goal that steering removed.
    """
    model.clear_goal()
    x, h = _filtered(model, series, scaler, origins, wcfg.context, wcfg.instance_norm)
    base, _ = rollout(model, x, h, wcfg.horizon, wcfg.samples, torch.Generator().manual_seed(seed))
    base_mean = base.mean(0)  # (B, H)
    sign = torch.tensor([1.0 if i % 2 == 0 else -1.0 for i in range(len(origins))])
    target = base_mean.mean(1) + offset * sign  # (B,)
    with torch.enable_grad():
        goal = model.goal_from_value(target, start=x)  # (B, D)
    model.set_goal(goal, strength)
    steered, _ = rollout(model, x, h, wcfg.horizon, wcfg.samples, torch.Generator().manual_seed(seed))
    model.clear_goal()
    before = (base_mean - target[:, None]).abs()
    after = (steered.mean(0) - target[:, None]).abs()
    return {"steer_toward_goal_frac": float((after < before).float().mean()),
            "steer_gap_closed_mean": float(((before - after) / before.clamp(min=1e-6)).mean())}


def text_steer_report(model: GoalLBS, series: TextSeries, scaler: Standardizer, origins: list[int],
                      wcfg: WindowConfig, up_text: str, down_text: str, strength: float = 0.5) -> dict[str, float]:
    """Steer with a goal text: share of origins whose forecast is higher under `up_text` than `down_text`.

    What a text implies is learned from the training part's texts and the changes that followed them
    (`GoalLBS.fit_text_effects`); the test part is not read.
    """
    train_end = series.split(wcfg.train_frac, wcfg.val_frac)[0]
    model.fit_text_effects(series, scaler, wcfg.horizon, end=train_end)
    x, h = _filtered(model, series, scaler, origins, wcfg.context, wcfg.instance_norm)
    means = []
    for text in (up_text, down_text):
        model.set_goal(model.goal_from_text(text, h, x=x, horizon=wcfg.horizon), strength)
        vals, _ = rollout(model, x, h, wcfg.horizon, wcfg.samples, torch.Generator().manual_seed(0))
        means.append(vals.mean(0).mean(1))
    model.clear_goal()
    return {"steer_text_direction_frac": float((means[0] > means[1]).float().mean()),
            "steer_text_gap": float((means[0] - means[1]).mean()),
            "text_implied_change_up": model.text_implied_change(up_text),
            "text_implied_change_down": model.text_implied_change(down_text)}


def plot_forecast(result: SeriesResult, series: TextSeries, path: Path, wcfg: WindowConfig, n_show: int = 3) -> Path:
    """History, truth and the LBS (text) forecast fan for a few origins, with the baselines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scaler = Standardizer(series.values[: series.split(wcfg.train_frac, wcfg.val_frac)[0]])
    z = scaler(series.values)
    picks = np.linspace(0, len(result.origins) - 1, n_show).round().astype(int)
    fig, axes = plt.subplots(1, n_show, figsize=(4.6 * n_show, 3.3), squeeze=False)
    for ax, i in zip(axes[0], picks, strict=True):
        o = result.origins[i]
        hist = np.arange(max(0, o - 2 * wcfg.context), o + wcfg.horizon)
        ax.plot(hist, z[hist], color="black", lw=1.2, label="truth")
        steps = np.arange(o, o + wcfg.horizon)
        ax.fill_between(steps, result.quantiles[0, i], result.quantiles[2, i], alpha=0.25, color="C0",
                        label="LBS text 10-90%")
        for key, color in (("lbs_text", "C0"), ("lbs_notext", "C1"), ("arima", "C2"), ("naive", "C7")):
            ax.plot(steps, result.forecasts[key][i], color=color, lw=1.4, label=key)
        ax.axvline(o - 0.5, color="grey", ls=":")
        ax.set_title(f"{series.name}: origin {series.dates[o]}")
        ax.set_xlabel("step")
    axes[0][0].set_ylabel("standardised value")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
