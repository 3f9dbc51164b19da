"""Training LBS on a series: windows by step (deterministic resume), the batched loss through core.fit,
and the seed's per-step batch-1 loop as a faithful reference for the speed comparison."""

from __future__ import annotations

import time

import torch

from ..core.runs import Run
from ..core.training import TrainConfig, TrainResult, fit
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

    def __call__(self, step: int) -> dict:
        starts = windows(len(self.series), self.window, self.wcfg.batch, step, self.seed, self.end)  # (B,)
        idx = starts[:, None] + torch.arange(self.window)[None]  # (B, T)
        rows = idx.tolist()
        y = self.z[idx]  # (B, T)
        if self.wcfg.instance_norm:  # relative to the step where a forecast origin would sit, as in `forecast`
            ref = min(self.wcfg.context, self.window) - 1
            y = y - y[:, ref : ref + 1]
        return {
            "y": y, "hidden": self.hidden[idx], "mask": self.mask[idx],
            "texts": [[self.series.texts[i] for i in r] for r in rows],
            "dates": [[self.series.dates[i] for i in r] for r in rows],
            "step": step,
        }


def train_lbs(model: BaseLBS, series: TextSeries, scaler: Standardizer, wcfg: WindowConfig, tcfg: TrainConfig,
              run: Run | None = None, resume: bool = False, quiet: bool = True, end: int | None = None) -> TrainResult:
    """Train the heads of `model` on windows of series[:end] (default: the training split)."""
    end = end if end is not None else series.split(wcfg.train_frac, wcfg.val_frac)[0]
    data = WindowData(model, series, scaler, wcfg, end, tcfg.seed)
    gen = torch.Generator().manual_seed(tcfg.seed)

    def loss_fn(m, batch):
        return m.window_loss(batch["y"], batch["hidden"], batch["mask"], batch["texts"], batch["dates"],
                             step=batch["step"], total_steps=tcfg.steps, bptt=wcfg.bptt, generator=gen)

    return fit(model, loss_fn, data, tcfg, run=run, resume=resume, quiet=quiet, description="lbs train")


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
