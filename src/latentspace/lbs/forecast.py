"""Forecasting with a trained LBS: filter a context, roll the prior H steps N times, quantiles, texts.

Also the baselines every LBS forecast is compared with in the same run: naive, seasonal naive and an
AIC-selected ARIMA (statsmodels), all on the same standardised series and forecast origins.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence

import numpy as np
import torch

from ..core.errors import DataError
from .data import Standardizer, TextSeries
from .model import FORECAST_PROMPT, BaseLBS
from .stat import ARIMA_ORDERS, fit_arima, fit_ets


@dataclasses.dataclass
class Forecast:
    """Value forecasts of B origins: samples (N, B, H), mean (B, H), quantiles (Q, B, H) at `levels`."""

    samples: torch.Tensor
    mean: torch.Tensor
    quantiles: torch.Tensor
    levels: tuple[float, ...]
    texts: list[str] | None = None


@torch.no_grad()
def filter_context(model: BaseLBS, y: torch.Tensor, s: torch.Tensor):
    """Run the posterior filter (means) over a context: y (B, L), s (B, L, D) -> x (B, D), h (layers, B, D)."""
    x, h = model.initial_state(y.shape[0])
    for t in range(y.shape[1]):
        x, _, _, h = model.filter_step(x, h, y[:, t], s[:, t], sample=False)
    return x, h


@torch.no_grad()
def rollout(model: BaseLBS, x: torch.Tensor, h: torch.Tensor, horizon: int, samples: int,
            generator: torch.Generator | None = None, noise: bool = True):
    """Roll the (possibly steered) prior forward: returns values (N, B, H) and prior means (N, B, H, D).

    noise=False follows the prior means (the path `overshoot_loss` trains); with N = 1 that is the
    deterministic mean path.
    """
    b, d = x.shape
    x = x.repeat(samples, 1)  # (N*B, D)
    h = h.repeat(1, samples, 1)  # (layers, N*B, D)
    values, means = [], []
    for _ in range(horizon):
        _, h = model.gru(x.unsqueeze(1), h)
        prior = model.prior(h[-1])
        if noise:
            eps = torch.randn(prior.mu.shape, generator=generator, dtype=prior.mu.dtype).to(prior.mu.device)
            x = prior.mu + eps * prior.std
        else:
            x = prior.mu
        values.append(model.mlp_val(x).squeeze(-1))
        means.append(prior.mu)
    vals = torch.stack(values, -1).view(samples, b, horizon)
    return vals, torch.stack(means, 1).view(samples, b, horizon, d)


def context_tensors(model: BaseLBS, series: TextSeries, scaler: Standardizer, origins: Sequence[int], context: int,
                    instance_norm: bool = False):
    """Standardised context values (B, L), semantic observations (B, L, D) ending just before each origin, and
    the level (B, 1) subtracted from the values (the last context value with `instance_norm`, else 0)."""
    if min(origins) < context:
        raise DataError(f"forecast origin {min(origins)} leaves fewer than {context} context steps")
    idx = torch.tensor([list(range(o - context, o)) for o in origins])  # (B, L)
    z = torch.as_tensor(scaler(series.values), dtype=torch.float32)
    hidden = model.sum_hidden_cached(series.texts)  # (T, K, H), cached
    mask = torch.tensor([bool(t) for t in series.texts], dtype=torch.float32)
    with torch.no_grad():
        s = model.project_sum(hidden[idx], mask[idx])  # (B, L, D)
    y = z[idx]
    ref = y[:, -1:] if instance_norm else torch.zeros(len(origins), 1)
    return (y - ref).to(model.device), s, ref


def stat_base(model: BaseLBS, series: TextSeries, scaler: Standardizer, origins: Sequence[int],
              horizon: int) -> torch.Tensor | None:
    """The statistical highway's forecast minus the last value at each origin (B, H), from the whole history
    before the origin (causal); None for a model with the linear highway."""
    if not model.uses_stat:
        return None
    table = model.stat_table(scaler(series.values), horizon)  # (T, H)
    return table[torch.as_tensor(list(origins)) - 1]


@torch.no_grad()
def forecast(model: BaseLBS, series: TextSeries, scaler: Standardizer, origins: Sequence[int], context: int,
             horizon: int, samples: int = 64, levels: tuple[float, ...] = (0.1, 0.5, 0.9), seed: int = 0,
             with_text: bool = False, instance_norm: bool = False, point: str = "samples") -> Forecast:
    """Forecasts (standardised units) of `horizon` steps from each origin (the first unseen step).

    `instance_norm` must match the training windows' (WindowConfig.instance_norm): the model then works on
    values relative to the last context value, added back here. `point` is what `Forecast.mean` holds:
    "samples", the mean of the N sampled trajectories, or "path", the prior-mean rollout (deterministic,
    the path `overshoot_loss` trains; WindowConfig.point).
    """
    if point not in ("path", "samples"):
        raise DataError(f"point must be path or samples, got {point!r}")
    y, s, ref = context_tensors(model, series, scaler, origins, context, instance_norm)
    x, h = filter_context(model, y, s)
    gen = torch.Generator().manual_seed(seed)
    vals, means = rollout(model, x, h, horizon, samples, gen)
    base = stat_base(model, series, scaler, origins, horizon)
    offset = model.forecast_offset(x, y, ref.to(vals.device), horizon, base)  # (B, H)
    vals = vals + offset[None]  # (N, B, H) + (1, B, H)
    mean = vals.mean(0)
    if point == "path":
        mean = rollout(model, x, h, horizon, 1, noise=False)[0][0] + offset  # (B, H)
    q = torch.quantile(vals.float().cpu(), torch.tensor(levels), dim=0)  # (Q, B, H)
    texts = None
    if with_text:
        dates = [series.dates[o] if o < len(series) else series.dates[-1] for o in origins]
        texts = generate_text(model, means.mean(0)[:, 0], dates)
    return Forecast(vals.cpu(), mean.cpu(), q, tuple(levels), texts)


@torch.no_grad()
def generate_text(model: BaseLBS, x: torch.Tensor, dates: Sequence[str], max_new_tokens: int = 48) -> list[str]:
    """Greedy textual forecasts from the soft prompt proj_state(x) (B, D) and the date prompt."""
    out = []
    emb = model.model.get_input_embeddings()
    for i, date in enumerate(dates):
        ids = torch.tensor([model.tokenizer(FORECAST_PROMPT.format(date=date)).input_ids], device=model.device)
        embeds = torch.cat([model.soft_prompt(x[i : i + 1]), emb(ids)], dim=1)  # (1, P + L, H)
        generated = []
        for _ in range(max_new_tokens):  # explicit loop: works for every causal LM taking inputs_embeds
            logits = model.model(inputs_embeds=embeds).logits[0, -1]
            token = int(logits.argmax())
            if token == model.tokenizer.eos_token_id:
                break
            generated.append(token)
            embeds = torch.cat([embeds, emb(torch.tensor([[token]], device=model.device))], dim=1)
        out.append(model.tokenizer.decode(generated, skip_special_tokens=True))
    return out


# ---- baselines -------------------------------------------------------------------------------------------


def naive_forecast(z: np.ndarray, origins: Sequence[int], horizon: int) -> np.ndarray:
    """Last value repeated: (B, H)."""
    return np.stack([np.full(horizon, z[o - 1]) for o in origins])


def seasonal_naive_forecast(z: np.ndarray, origins: Sequence[int], horizon: int, period: int) -> np.ndarray:
    """The value one period earlier: (B, H)."""
    return np.stack([[z[o + k - period * (1 + k // period)] for k in range(horizon)] for o in origins])


def arima_forecast(z: np.ndarray, train_end: int, origins: Sequence[int], horizon: int,
                   orders=ARIMA_ORDERS) -> tuple[np.ndarray, str]:
    """ARIMA with the order of least AIC on the training part, re-filtered (same parameters) at each origin.

    Returns:
        forecasts (B, H), the chosen order as text.
    """
    order, res = fit_arima(z[:train_end], orders)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = [np.asarray(res.apply(z[:o]).forecast(horizon)) for o in origins]
    return np.stack(out), f"ARIMA{order}"


def ets_forecast(z: np.ndarray, train_end: int, origins: Sequence[int], horizon: int) -> tuple[np.ndarray, str]:
    """Exponential smoothing (state space, statsmodels): simple or damped-trend, the one of least AIC on
    the training part, re-filtered (same parameters) at each origin.

    Returns:
        forecasts (B, H), the chosen variant as text.
    """
    name, res = fit_ets(z[:train_end])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = [np.asarray(res.apply(z[:o]).forecast(horizon)) for o in origins]
    return np.stack(out), name


def forecast_origins(n: int, start: int, horizon: int, max_origins: int = 100) -> list[int]:
    """Evenly spread origins in [start, n - horizon], at most `max_origins`."""
    last = n - horizon
    if last < start:
        raise DataError(f"series of {n} steps has no test origin after step {start} for horizon {horizon}")
    count = min(max_origins, last - start + 1)
    return sorted({int(round(v)) for v in np.linspace(start, last, count)})


def errors(pred: np.ndarray, z: np.ndarray, origins: Sequence[int], horizon: int) -> dict[str, float]:
    """MSE and MAE of forecasts (B, H) against the truth, standardised units."""
    truth = np.stack([z[o : o + horizon] for o in origins])
    return {"mse": float(np.mean((pred - truth) ** 2)), "mae": float(np.mean(np.abs(pred - truth)))}
