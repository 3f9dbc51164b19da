"""Does the text of a Time-MMD step carry linear information about the forecast error of the highway?

For each domain: the highway chosen on the validation part (`select_highway`), then a ridge regression
from the text features of the origin step (or the mean over the last 3 steps) to the highway's 6-step
forecast residual, fitted on the training part's origins, ridge chosen on the validation part. Two text
features: the random tiny Llama's SUM states (the LBS sensor of the benchmark) and the packaged
all-MiniLM-L6-v2 sentence embeddings (a trained semantic encoder). If neither lowers the validation MSE,
a better sensor alone cannot make the text help at this data size.

    python benchmarks/lbs_text_probe.py     # ~5 min on 2 cores; writes benchmarks/results/lbs_text_probe.json
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from latentspace.core.backbones import packaged_minilm_path
from latentspace.core.runs import set_threads
from latentspace.lbs.config import LBSConfig, WindowConfig
from latentspace.lbs.data import TIME_MMD_DOMAINS, Standardizer, load_time_mmd
from latentspace.lbs.forecast import forecast_origins
from latentspace.lbs.model import BaseLBS, fit_highway_coef, highway_inputs
from latentspace.lbs.train import select_highway

ROOT = Path(__file__).resolve().parents[1]
RIDGES = (1.0, 10.0, 100.0, 1000.0)


def highway_pred(z: torch.Tensor, train_end: int, origins: list[int], choice: dict, wcfg: WindowConfig) -> torch.Tensor:
    """The chosen highway's forecasts (B, H) at `origins`, fitted on z[:train_end]."""
    ctx = torch.stack([z[o - wcfg.context : o] for o in origins])
    last = ctx[:, -1:]
    q = choice["highway"]
    if q == 0:
        return last.expand(-1, wcfg.horizon)
    coef = fit_highway_coef(z[:train_end], q, choice["highway_features"], choice["highway_alpha"], wcfg.horizon,
                            choice["highway_ridge"], wcfg.context)
    feats, anchor = highway_inputs(ctx, q, choice["highway_features"], choice["highway_alpha"])
    x = torch.cat([feats[:, -1], torch.ones(len(origins), 1, dtype=z.dtype)], 1)
    return last + anchor[:, -1:] + x @ coef


def probe(features: torch.Tensor, resid: dict, base: dict, truth: dict, origins: dict, k: int) -> dict:
    """Ridge from the mean text features of the last k steps to the residual; ridge chosen on validation."""
    def feat(split):
        return torch.stack([features[o - k : o].mean(0) for o in origins[split]])

    x_tr = feat("train")
    mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-6
    y_mean = resid["train"].mean(0)
    best = None
    for lam in RIDGES:
        xn = (x_tr - mu) / sd
        gram = xn.T @ xn + lam * torch.eye(xn.shape[1], dtype=xn.dtype)
        w = torch.linalg.solve(gram, xn.T @ (resid["train"] - y_mean))
        mse = {s: float((base[s] + y_mean + ((feat(s) - mu) / sd) @ w - truth[s]).pow(2).mean())
               for s in ("val", "test")}
        if best is None or mse["val"] < best["val"]:
            best = {**mse, "ridge": lam}
    return best


def main() -> None:
    from sentence_transformers import SentenceTransformer

    warnings.filterwarnings("ignore")
    set_threads(2)
    encoder = SentenceTransformer(str(packaged_minilm_path()), device="cpu")
    wcfg = WindowConfig()
    out = {}
    for domain in TIME_MMD_DOMAINS:
        s = load_time_mmd(domain, max_steps=480)
        train_end, val_end = s.split()
        scaler = Standardizer(s.values[:train_end])
        choice, _ = select_highway(s, scaler, wcfg, wcfg.horizon)
        z = torch.as_tensor(scaler(s.values), dtype=torch.float64)
        h = wcfg.horizon
        origins = {"train": list(range(wcfg.context, train_end - h + 1)),
                   "val": forecast_origins(val_end, max(train_end, wcfg.context), h, 60),
                   "test": forecast_origins(len(s), max(val_end, wcfg.context, s.period), h, 60)}
        truth = {k: torch.stack([z[o : o + h] for o in v]) for k, v in origins.items()}
        base = {k: highway_pred(z, train_end, v, choice, wcfg) for k, v in origins.items()}
        resid = {k: truth[k] - base[k] for k in origins}
        empty = [not t for t in s.texts]
        minilm = torch.tensor(encoder.encode([t or "" for t in s.texts], batch_size=64), dtype=torch.float64)
        minilm[empty] = 0
        sensor = BaseLBS(LBSConfig()).sum_hidden_cached(s.texts).mean(1).double()
        sensor[empty] = 0
        row = {"highway": {s_: float(resid[s_].pow(2).mean()) for s_ in ("val", "test")}}
        for name, feats in (("minilm", minilm), ("random_llama", sensor)):
            for k in (1, 3):
                row[f"{name}_last{k}"] = probe(feats, resid, base, truth, origins, k)
        out[domain] = row
        print(domain, json.dumps(row), flush=True)
    path = ROOT / "benchmarks" / "results" / "lbs_text_probe.json"
    path.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
