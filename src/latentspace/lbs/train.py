"""Training LBS on a series: windows by step (deterministic resume), the batched loss through core.fit,
and the seed's per-step batch-1 loop as a faithful reference for the speed comparison."""

from __future__ import annotations

import time

import torch

from ..core.runs import Run
from ..core.training import StopTraining, TrainConfig, TrainResult, fit
from .config import WindowConfig
from .data import Standardizer, TextSeries, windows
from .model import BaseLBS


class WindowData:
    """Step -> a batch of B training windows of T steps from the training part of one series.

    The frozen LM's SUM states of every text are computed once, in padded batches, through the cache.
    """

    def __init__(self, model: BaseLBS, series: TextSeries, scaler: Standardizer, wcfg: WindowConfig, end: int,
                 seed: int = 0):
        self.series, self.wcfg, self.end, self.seed = series, wcfg, end, seed
        self.z = torch.as_tensor(scaler(series.values), dtype=torch.float32)  # (T_all,)
        self.hidden = model.sum_hidden_cached(series.texts)  # (T_all, K, H)
        self.mask = torch.tensor([bool(t) for t in series.texts], dtype=torch.float32)  # (T_all,)
        self.window = min(wcfg.window, end)
        # the statistical highway's forecasts at every step (causal, one filter pass), when the model has one
        self.base = model.stat_table(self.z, model.cfg.overshoot) if model.uses_stat else None  # (T_all, K)

    def __call__(self, step: int) -> dict:
        starts = windows(len(self.series), self.window, self.wcfg.batch, step, self.seed, self.end)  # (B,)
        idx = starts[:, None] + torch.arange(self.window)[None]  # (B, T)
        rows = idx.tolist()
        y = self.z[idx]  # (B, T)
        level = torch.zeros(len(rows), 1)
        if self.wcfg.instance_norm:  # relative to the step where a forecast origin would sit, as in `forecast`
            ref = min(self.wcfg.context, self.window) - 1
            level = y[:, ref : ref + 1]
            y = y - level
        return {
            "y": y, "level": level, "hidden": self.hidden[idx], "mask": self.mask[idx],
            "texts": [[self.series.texts[i] for i in r] for r in rows],
            "dates": [[self.series.dates[i] for i in r] for r in rows],
            "step": step, "base": None if self.base is None else self.base[idx],  # (B, T, K)
        }


class ValidationSelector:
    """Early stopping on the chronological validation split: forecast MSE at every origin of
    series[train_end:val_end]; `__call__` is `fit`'s eval_fn and remembers the best weights."""

    def __init__(self, series: TextSeries, scaler: Standardizer, wcfg: WindowConfig, train_end: int, val_end: int,
                 samples: int = 16):
        from .forecast import forecast_origins

        self.series, self.scaler, self.wcfg, self.samples = series, scaler, wcfg, samples
        start = max(train_end, wcfg.context)
        self.origins = forecast_origins(val_end, start, wcfg.horizon, max_origins=60)
        idx = torch.tensor(self.origins)[:, None] + torch.arange(wcfg.horizon)[None]  # (B, H)
        self.truth = torch.as_tensor(scaler(series.values), dtype=torch.float32)[idx]
        self.best_mse, self.best_state, self.calls, self.since_best, self.best_call = float("inf"), None, 0, 0, 0

    def __call__(self, model: BaseLBS) -> dict[str, float]:
        from .forecast import forecast

        fc = forecast(model, self.series, self.scaler, self.origins, self.wcfg.context, self.wcfg.horizon,
                      self.samples, instance_norm=self.wcfg.instance_norm, point=self.wcfg.point)
        mse = float((fc.mean - self.truth).pow(2).mean())
        self.calls += 1
        self.since_best += 1
        if mse < self.best_mse:
            self.best_mse, self.since_best, self.best_call = mse, 0, self.calls
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return {"val_mse": mse, "val_mse_best": self.best_mse}


def train_lbs(model: BaseLBS, series: TextSeries, scaler: Standardizer, wcfg: WindowConfig, tcfg: TrainConfig,
              run: Run | None = None, resume: bool = False, quiet: bool = True, end: int | None = None) -> TrainResult:
    """Train the heads of `model` on windows of series[:end] (default: the training split).

    With `wcfg.val_every` > 0 the forecast MSE on the validation part (series[end:val_end], never trained
    on) is measured every `val_every` steps and at the end, and the best weights are loaded back.
    """
    train_end, val_end = series.split(wcfg.train_frac, wcfg.val_frac)
    end = end if end is not None else train_end
    gen = torch.Generator().manual_seed(tcfg.seed)

    def loss_fn(m, batch):
        return m.window_loss(batch["y"], batch["hidden"], batch["mask"], batch["texts"], batch["dates"],
                             step=batch["step"], total_steps=tcfg.steps, bptt=wcfg.bptt, generator=gen,
                             level=batch["level"], base=batch["base"])

    if not resume:  # before the windows: they read the statistical highway's forecasts
        model.fit_highway(torch.as_tensor(scaler(series.values[:end]), dtype=torch.float32), window=wcfg.context)
    data = WindowData(model, series, scaler, wcfg, end, tcfg.seed)
    selector = None
    callbacks = []
    stopped = []
    if wcfg.val_every > 0 and val_end - end >= wcfg.horizon and end >= wcfg.context:
        selector = ValidationSelector(series, scaler, wcfg, end, val_end)
        tcfg = tcfg.replace(eval_every=wcfg.val_every)
        if wcfg.val_at_start and not resume:  # the untrained model (highway + initial latent) is a candidate
            model.eval()
            selector(model)
        if wcfg.patience > 0:
            def early_stop(step: int, metrics: dict[str, float]) -> None:
                if step % wcfg.val_every == 0 and selector.since_best >= wcfg.patience:
                    stopped.append(step)
                    raise StopTraining
            callbacks.append(early_stop)
    result = fit(model, loss_fn, data, tcfg, run=run, resume=resume, quiet=quiet, description="lbs train",
                 eval_fn=selector, callbacks=callbacks)
    if stopped:
        result.metrics["stopped_at"] = float(stopped[0])
    if selector is not None and selector.best_state is not None:
        model.load_state_dict(selector.best_state)
        result.metrics["val_mse_best"] = selector.best_mse
        first = 0 if wcfg.val_at_start and not resume else 1  # the step of the first evaluation, in val_every units
        result.metrics["best_step"] = float((selector.best_call - 1 + first) * wcfg.val_every)
    return result


def es_alpha(z, grid: int = 39) -> float:
    """Smoothing weight of simple exponential smoothing with least one-step squared error on z (T,)."""
    z = torch.as_tensor(z, dtype=torch.float64)
    best = (float("inf"), 1.0)
    for alpha in torch.linspace(0.05, 1.0, grid).tolist():
        level = z[0]
        sse = 0.0
        for t in range(1, len(z)):
            sse += float(z[t] - level) ** 2
            level = alpha * z[t] + (1 - alpha) * level
        best = min(best, (sse, alpha))
    return best[1]


HIGHWAY_GRID = {"features": ("level", "deviation", "diff", "devdiff"), "q": (2, 4, 8, 16), "ridge": (0.01, 0.1, 1.0),
                "stat": ("arima", "ets", "arima+ets")}


def select_highway(series: TextSeries, scaler: Standardizer, wcfg: WindowConfig, steps: int,
                   grid: dict | None = None) -> tuple[dict, list[dict]]:
    """Choose the highway (source, features, order q, ridge, level smoothing) on the validation part.

    Every candidate is fitted on the training part and scored by its forecast MSE at the validation origins
    `ValidationSelector` uses; the test part is never read. Candidates: highway off (the last value); the
    linear highway, fitted in closed form (`fit_highway_coef`, features from the `context` steps before each
    origin, as a forecast sees them), for each (features, q, ridge) with the level anchored on the last value
    (alpha 1) or on the exponentially smoothed level (alpha of least one-step error on the training part);
    and the statistical highways of `grid["stat"]` (ARIMA, ETS, their mean: lbs/stat.py, fitted by AIC on
    the training part, filtered causally through the series up to the end of the validation part).

    Returns:
        the LBSConfig fields of the best candidate ({"highway_source", "highway", "highway_features",
        "highway_alpha", "highway_ridge"}), and every candidate with its validation MSE.
    """
    from .forecast import forecast_origins
    from .model import fit_highway_coef, highway_inputs
    from .stat import fit_stat_spec, stat_table

    grid = grid or HIGHWAY_GRID
    train_end, val_end = series.split(wcfg.train_frac, wcfg.val_frac)
    z = torch.as_tensor(scaler(series.values), dtype=torch.float64)
    origins = forecast_origins(val_end, max(train_end, wcfg.context), wcfg.horizon, max_origins=60)
    ctx = torch.stack([z[o - wcfg.context : o] for o in origins])  # (B, L)
    truth = torch.stack([z[o : o + wcfg.horizon] for o in origins])  # (B, H)
    last = ctx[:, -1:]
    idx = torch.arange(wcfg.horizon).clamp(max=steps - 1)
    alpha_fit = round(es_alpha(z[:train_end]), 4)
    rows = [{"highway_source": "linear", "highway": 0, "highway_features": "level", "highway_alpha": 1.0,
             "highway_ridge": 0.01, "val_mse": float((last - truth).pow(2).mean())}]
    for alpha in sorted({1.0, alpha_fit}):
        for features in grid["features"]:
            for q in grid["q"]:
                for ridge in grid["ridge"]:
                    coef = fit_highway_coef(z[:train_end], q, features, alpha, steps, ridge, wcfg.context)
                    if coef is None:
                        continue
                    feats, anchor = highway_inputs(ctx, q, features, alpha)
                    x = torch.cat([feats[:, -1], torch.ones(len(origins), 1, dtype=z.dtype)], 1)
                    pred = last + anchor[:, -1:] + (x @ coef)[:, idx]  # (B, H)
                    rows.append({"highway_source": "linear", "highway": q, "highway_features": features,
                                 "highway_alpha": alpha,
                                 "highway_ridge": ridge, "val_mse": float((pred - truth).pow(2).mean())})
    stat = grid.get("stat", ())
    kinds = sorted({k for source in stat for k in source.split("+")})
    specs = {k: fit_stat_spec(z[:train_end].numpy(), k) for k in kinds}
    tables = {k: torch.as_tensor(stat_table(specs[k], z[:val_end].numpy(), wcfg.horizon)) for k in kinds}
    at = torch.tensor(origins) - 1  # the last context step of each origin
    for source in stat:
        pred = torch.stack([tables[k][at] for k in source.split("+")]).mean(0)  # (B, H)
        rows.append({"highway_source": source, "highway": 0, "highway_features": "level", "highway_alpha": 1.0,
                     "highway_ridge": 0.01, "val_mse": float((pred - truth).pow(2).mean()),
                     "stat_models": "+".join(specs[k]["name"] for k in source.split("+"))})
    best = min(rows, key=lambda r: r["val_mse"])
    return {k: v for k, v in best.items() if k not in ("val_mse", "stat_models")}, rows


def seed_loop(model: BaseLBS, series: TextSeries, scaler: Standardizer, steps: int, lr: float = 3e-4,
              start: int = 0) -> float:
    """The seed's loop, faithfully: one observation per step, batch 1, two LM passes, one optimizer step each.

    Returns:
        observations (time steps) per second.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    z = scaler(series.values)
    x, h = model.initial_state(1)
    model.train()
    t0 = time.perf_counter()
    for i in range(steps):
        t = start + i
        y_t = torch.tensor(float(z[t]), device=model.device)
        loss, x, h, _ = model.training_step(y_t, series.texts[t], x, h, i, steps, date=series.dates[t])
        opt.zero_grad()
        loss.backward()
        opt.step()
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - t0)
