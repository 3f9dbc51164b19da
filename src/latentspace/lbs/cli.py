"""`latentspace lbs`: train, forecast, steer, evaluate; and the demo (offline, CPU, tiny frozen sensor)."""

from __future__ import annotations

import dataclasses
import json
import pathlib
from pathlib import Path
from typing import Optional  # noqa: UP035 (typer needs typing.Optional)

import typer

from ..core.config import config_command
from ..core.errors import CheckpointError, require_dir, require_file
from .config import ForecastConfig, LBSRunConfig, SteerConfig

app = typer.Typer(help="LLM-integrated Bayesian state space: a Kalman-style filter with a frozen-LLM sensor.",
                  no_args_is_help=True)

DEFAULT_RUN = Path("runs") / "lbs" / "default"
DataDir = Optional[Path]  # noqa: UP045
# the options of train / evaluate that are not settings of the run (those are LBSRunConfig's fields)
RUN_PARAMS = {
    "run_name": (str, typer.Option("default", "--name", help="Run name under runs/lbs/.")),
    "runs_dir": (Path, typer.Option(Path("runs"), "--runs-dir")),
    "quiet": (bool, typer.Option(False, "--quiet", "-q")),
    "as_json": (bool, typer.Option(False, "--json", help="Print metrics as JSON.")),
}


# the options of forecast / steer that are not settings (those are ForecastConfig's / SteerConfig's fields): the model
# and the series it reads, and how the result is printed
SERIES_PARAMS = {
    "model_dir": (Path, typer.Option(DEFAULT_RUN, "--model", help="A run folder or model folder.")),
    "data": (Optional[str], typer.Option(None, "--data", help="Series (default: the one it was trained on).")),  # noqa: UP045
    "data_dir": (DataDir, typer.Option(None, "--data-dir", help="Folder holding time-mmd.")),
}
OUTPUT_PARAMS = {
    "quiet": (bool, typer.Option(False, "--quiet", "-q")),
    "as_json": (bool, typer.Option(False, "--json", help="Print the result as JSON.")),
}


def _echo(payload, as_json: bool, quiet: bool = False) -> None:
    from rich.console import Console

    if as_json:
        print(json.dumps(payload, indent=2, default=str))
    elif not quiet:
        Console().print(payload)


def _check_inputs(data: str | None, data_dir: Path | None) -> None:
    """Name a missing --data CSV or --data-dir before a model is built or loaded (`_load` checks --model)."""
    if data and data.endswith(".csv"):
        require_file(data, "--data")
    require_dir(data_dir, "--data-dir")


def _setup():
    from ..core.runs import set_threads

    set_threads(2, at_most=True)


@config_command(app, "train", LBSRunConfig, help="Train LBS on a series; writes runs/lbs/<name>/ with the model.",
                resume=(bool, typer.Option(False, "--resume", help="Continue from the last checkpoint.")),
                **RUN_PARAMS)
def train(config: LBSRunConfig, run_name: str, runs_dir: Path, quiet: bool, as_json: bool, resume: bool):
    _check_inputs(config.data, config.data_dir)
    _setup()
    from ..core.runs import Run
    from ..core.training import seed_everything
    from .data import Standardizer, load_series
    from .goal import GoalLBS
    from .train import train_lbs

    series = load_series(config.data, config.data_dir)
    wcfg, tcfg = config.window, config.train
    run = Run("lbs", run_name, root=runs_dir)
    run.write_config(config)
    train_end = series.split(wcfg.train_frac, wcfg.val_frac)[0]
    scaler = Standardizer(series.values[:train_end])
    seed_everything(tcfg.seed)  # the model's initialisation too: a run is reproducible
    model = GoalLBS(config.model)
    result = train_lbs(model, series, scaler, wcfg, tcfg, run=run, resume=resume, quiet=quiet, end=train_end)
    model.save(run.path / "model", metadata={"data": config.data, "mean": scaler.mean, "std": scaler.std,
                                             "window": wcfg.to_dict()})
    run.plot_metrics(["loss", "val", "pred", "kl", "text"], "train.png", title=f"lbs train ({series.name})")
    metrics = {"steps": result.step, **{k: round(v, 5) for k, v in result.metrics.items()}}
    run.write_summary(f"lbs train: {series.name}", metrics, notes=f"Model: `{run.path / 'model'}`.")
    _echo({"run": str(run.path), **metrics}, as_json, quiet)


def _load(model_dir: Path):
    """(model, metadata) from a run folder or a model folder."""
    from ..core.checkpoint import read_header
    from .goal import GoalLBS

    folder = model_dir / "model" if (model_dir / "model").is_dir() else model_dir
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"no LBS model in {model_dir}: train one first (latentspace lbs train)")
    header = read_header(folder, "lbs")
    return GoalLBS.load(folder).eval(), header.get("metadata", {})


def _forecast_payload(series, scaler, fc, origin: int, horizon: int) -> list[dict]:
    rows = []
    for k in range(horizon):
        row = {"step": origin + k, "mean": float(scaler.inverse(float(fc.mean[0, k])))}
        for level, q in zip(fc.levels, fc.quantiles[:, 0, k], strict=True):
            row[f"q{int(level * 100)}"] = float(scaler.inverse(float(q)))
        if origin + k < len(series):
            row.update(date=series.dates[origin + k], truth=float(series.values[origin + k]))
        rows.append(row)
    return rows


@config_command(app, "forecast", ForecastConfig, **SERIES_PARAMS, **OUTPUT_PARAMS)
def forecast_command(config: ForecastConfig, model_dir: Path, data: str | None, data_dir: Path | None, quiet: bool,
                     as_json: bool):
    """Forecast H steps: N prior rollouts, mean and 10/50/90% quantiles (original units)."""
    _check_inputs(data, data_dir)
    _setup()
    from .data import Standardizer, load_series
    from .forecast import forecast

    model, meta = _load(model_dir)
    series = load_series(data or meta.get("data", "generated"), data_dir)
    scaler = Standardizer(series.values)
    scaler.mean, scaler.std = meta.get("mean", scaler.mean), meta.get("std", scaler.std)
    horizon, samples, text = config.horizon, config.samples, config.text
    origin = len(series) if config.origin < 0 else config.origin
    context = int(meta.get("window", {}).get("context", 24))
    instance_norm = bool(meta.get("window", {}).get("instance_norm", False))
    point = str(meta.get("window", {}).get("point", "samples"))  # older checkpoints: the sampled mean
    fc = forecast(model, series, scaler, [origin], min(context, origin), horizon, samples, with_text=text,
                  instance_norm=instance_norm, point=point)
    payload = {"series": series.name, "origin": origin, "forecast": _forecast_payload(series, scaler, fc, origin,
                                                                                       horizon)}
    if text:
        payload["text_forecast"] = fc.texts[0]
    _echo(payload, as_json, quiet)


@config_command(app, "steer", SteerConfig, **SERIES_PARAMS, **OUTPUT_PARAMS)
def steer_command(config: SteerConfig, model_dir: Path, data: str | None, data_dir: Path | None, quiet: bool,
                  as_json: bool):
    """Steer the forecast toward a goal (a target value or a goal text) and show how far it moved."""
    _check_inputs(data, data_dir)
    _setup()
    import torch

    from ..core.errors import ConfigError
    from .data import Standardizer, load_series
    from .forecast import context_tensors, filter_context, rollout, stat_base

    target, goal_text, strength = config.target, config.goal_text, config.strength
    horizon, samples = config.horizon, config.samples
    if (target is None) == (goal_text is None):
        raise ConfigError("give exactly one of --target VALUE or --goal-text TEXT")
    model, meta = _load(model_dir)
    series = load_series(data or meta.get("data", "generated"), data_dir)
    scaler = Standardizer(series.values)
    scaler.mean, scaler.std = meta.get("mean", scaler.mean), meta.get("std", scaler.std)
    context = min(int(meta.get("window", {}).get("context", 24)), len(series))
    y, s, ref = context_tensors(model, series, scaler, [len(series)], context,
                                bool(meta.get("window", {}).get("instance_norm", False)))
    x, h = filter_context(model, y, s)
    base = stat_base(model, series, scaler, [len(series)], horizon)
    offset = model.forecast_offset(x, y, ref, horizon, base)  # (1, H): level, persistence, the highway
    base, _ = rollout(model, x, h, horizon, samples, torch.Generator().manual_seed(0))
    base = base + offset[None]
    if target is not None:
        goal = model.goal_from_value(float(scaler(target)) - float(offset.detach().mean()), start=x)
    else:
        model.fit_text_effects(series, scaler, horizon)  # what past texts preceded, from the series' history
        goal = model.goal_from_text(goal_text, h, x=x, horizon=horizon)
    model.set_goal(goal[0], strength)
    steered, _ = rollout(model, x, h, horizon, samples, torch.Generator().manual_seed(0))
    steered = steered + offset[None]
    model.clear_goal()
    before = [float(scaler.inverse(float(v))) for v in base.detach().mean(0)[0]]
    after = [float(scaler.inverse(float(v))) for v in steered.detach().mean(0)[0]]
    payload = {"series": series.name, "strength": strength, "goal": target if target is not None else goal_text,
               "unsteered": before, "steered": after}
    if target is not None:
        payload["moved_toward_goal_frac"] = sum(abs(a - target) < abs(b - target)
                                                for a, b in zip(after, before, strict=True)) / horizon
    _echo(payload, as_json, quiet)


@config_command(app, "evaluate", LBSRunConfig,
                help="Train LBS with and without text, compare naive / seasonal naive / ARIMA, steer; plot.",
                **RUN_PARAMS)
def evaluate(config: LBSRunConfig, run_name: str, runs_dir: Path, quiet: bool, as_json: bool):
    _check_inputs(config.data, config.data_dir)
    _setup()
    from ..core.runs import Run
    from .data import load_series
    from .evaluate import evaluate_series, plot_forecast

    series = load_series(config.data, config.data_dir)
    run = Run("lbs", f"eval-{run_name}", root=runs_dir)
    run.write_config(config)
    res = evaluate_series(series, config.model, config.window, config.train, run=run, quiet=quiet)
    plot = plot_forecast(res, series, run.plots_dir / "forecast.png", config.window)
    run.log(config.train.steps, **{k: v for k, v in res.metrics.items() if isinstance(v, float)})
    run.write_summary(f"lbs evaluate: {series.name}", res.metrics, notes=f"Forecast plot: `{plot}`.")
    _echo({"run": str(run.path), **res.metrics}, as_json, quiet)


# what the demo reads, for the report (Time-MMD has no licence file, so no sample of it ships)
DEMO_DATA = "generated series (synthetic: regimes announced in text); `latentspace data fetch time-mmd` for real data"


def demo(out_dir: pathlib.Path, quiet: bool):
    """The generated series (regimes announced in text first): LBS text vs no text vs baselines, steering."""
    from ..core.runs import DemoResult, Run, markdown_table
    from .data import REGIMES, Standardizer, generated_series
    from .evaluate import evaluate_series, plot_forecast, text_steer_report

    _setup()
    out_dir = Path(out_dir)
    run = Run("lbs", path=out_dir)
    series = generated_series()
    # sized for a demo that runs beside five others (~1 min on 2 CPU cores): two models of 60 steps each,
    # text_loss on 4 (series, step) pairs per batch, 40 forecast origins
    # stationary regimes: absolute levels carry the regime, so no instance normalisation
    config = LBSRunConfig().override({"model.text_loss_samples": 4, "window.instance_norm": False,
                                      "train.steps": 60, "train.lr": 5e-3})
    cfg, wcfg, tcfg = config.model, config.window, config.train
    run.write_config(config)
    res = evaluate_series(series, cfg, wcfg, tcfg, run=run, quiet=quiet, max_origins=40)
    train_end = series.split()[0]
    res.metrics.update(text_steer_report(res.model, series, Standardizer(series.values[:train_end]), res.origins,
                                         wcfg, REGIMES["surge"][0], REGIMES["slump"][0]))
    res.model.save(run.path / "model", metadata={"data": "generated", "window": dataclasses.asdict(wcfg)})
    plot = plot_forecast(res, series, run.plots_dir / "forecast.png", wcfg)
    m = res.metrics
    headline = {k: round(m[k], 4) for k in ("mse_lbs_text", "mse_lbs_notext", "mse_naive", "mse_seasonal_naive",
                                            "mse_arima", "coverage_80_text", "steer_toward_goal_frac",
                                            "steer_text_direction_frac")}
    run.write_summary("lbs demo: generated series with text-announced regimes", m)
    table = markdown_table(["method", "MSE", "MAE"], [[k, f"{m['mse_' + k]:.3f}", f"{m['mae_' + k]:.3f}"] for k in
                                                      ("lbs_text", "lbs_notext", "naive", "seasonal_naive", "arima")])
    summary = (f"LBS (tiny frozen Llama sensor, {tcfg.steps} steps) on a generated series whose regime changes are "
               f"announced in text 3 steps before they show: forecast MSE with text {m['mse_lbs_text']:.3f} vs "
               f"without text {m['mse_lbs_notext']:.3f}, ARIMA {m['mse_arima']:.3f}, naive {m['mse_naive']:.3f} "
               f"(horizon {wcfg.horizon}, standardised units). Steering toward a goal value moved "
               f"{m['steer_toward_goal_frac']:.0%} of forecasts toward it.")
    return DemoResult(headline, [plot], summary, [table])
