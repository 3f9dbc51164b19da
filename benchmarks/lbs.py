"""LBS benchmark: forecast MSE per Time-MMD domain (LBS text / no text / naive / seasonal naive / ARIMA),
steering toward a goal, and training speed of the batched LBS against the seed's per-step loop.

    python benchmarks/lbs.py            # all domains present, ~10 min on a shared 2-core CPU
    python benchmarks/lbs.py --quick    # three domains, fewer steps
    python benchmarks/lbs.py --gpu-speed --out speed.json   # only the speed figure, ~1B backbone on CUDA

Writes benchmarks/results/lbs.json and lbs.md (not with --gpu-speed, which writes --out).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import datetime
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _common import machine

from latentspace.core.backbones import byte_tokenizer, tiny_causal_lm
from latentspace.core.data import find_dataset
from latentspace.core.runs import set_threads
from latentspace.core.training import TrainConfig
from latentspace.lbs.config import LBSConfig, WindowConfig
from latentspace.lbs.data import REGIMES, TIME_MMD_DOMAINS, Standardizer, generated_series, load_time_mmd
from latentspace.lbs.evaluate import evaluate_series, plot_forecast, text_steer_report
from latentspace.lbs.model import BaseLBS
from latentspace.lbs.train import WindowData, seed_loop

ROOT = Path(__file__).resolve().parents[1]


def speed(model: BaseLBS, series, wcfg: WindowConfig, fast_steps: int, seed_steps: int) -> dict:
    """Observations (series time steps) trained per second: batched LBS (cache fill included) vs the seed loop."""
    scaler = Standardizer(series.values)
    sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
    seed_loop(model, series, scaler, 2)  # warm-up
    seed_obs_s = seed_loop(model, series, scaler, seed_steps)
    model.cache = type(model.cache)(namespace=model.cache.namespace)  # cold cache: encoding is timed too
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if model.device.type == "cuda" else torch.autocast(
        "cpu", enabled=False)
    sync()
    t0 = time.perf_counter()
    data = WindowData(model, series, scaler, wcfg, len(series))
    t_encode = time.perf_counter() - t0
    for step in range(fast_steps):
        batch = data(step)
        with autocast:
            loss, _ = model.window_loss(batch["y"], batch["hidden"], batch["mask"], batch["texts"], batch["dates"],
                                        step=step, total_steps=fast_steps, bptt=wcfg.bptt)
        opt.zero_grad()
        loss.backward()
        opt.step()
    sync()
    elapsed = time.perf_counter() - t0
    obs = fast_steps * wcfg.batch * data.window
    fast_obs_s = obs / elapsed
    return {"seed_loop_obs_per_s": seed_obs_s, "batched_obs_per_s": fast_obs_s,
            "batched_steps_per_s": fast_steps / elapsed, "obs_per_step": wcfg.batch * data.window,
            "encode_s": t_encode, "speedup": fast_obs_s / seed_obs_s,
            "backbone_params": sum(p.numel() for p in model.model.parameters())}


def gpu_speed(out: Path) -> None:
    """The speed figure on CUDA with a ~1B Llama built from a config (bf16, random weights)."""
    cfg = LBSConfig(dtype="bfloat16", text_loss_samples=8)
    sums = [f"<SUM{i}>" for i in range(cfg.sum_tokens)]
    tok = byte_tokenizer(extra_special_tokens=sums)
    with torch.device("cuda"):
        lm, tok = tiny_causal_lm("llama", hidden_size=2048, layers=24, heads=16, tokenizer=tok)
    lm = lm.to(torch.bfloat16)
    for p in lm.parameters():
        p.requires_grad_(False)
    tok.padding_side = "right"
    model = BaseLBS(cfg, model=lm, tokenizer=tok).to("cuda")
    series = generated_series()
    result = {"device": torch.cuda.get_device_name(0), "backbone": "Llama 2048x24 (from config, bf16)",
              **speed(model, series, WindowConfig(batch=32, window=32), fast_steps=30, seed_steps=30),
              "peak_gib": torch.cuda.max_memory_allocated() / 2**30}
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


def choose_highway_training(series, cfg, wcfg, tcfg, seeds):
    """Both settings of `highway_train` (the highway trained with the model, or kept at its fit while the latent
    learns a correction), the one with the lower validation MSE of the text ensemble kept for both variants."""
    runs = {flag: evaluate_series(series, cfg.replace(highway_train=flag), wcfg, tcfg, select_highway_on_val=True,
                                  seeds=seeds) for flag in (True, False)}
    flag = min(runs, key=lambda f: runs[f].metrics["val_mse_text_ensemble"])
    res = runs[flag]
    res.metrics["highway_train"] = flag
    for other, run in runs.items():
        res.metrics[f"val_mse_text_ensemble_highway_train_{other}"] = run.metrics["val_mse_text_ensemble"]
    return res


def highway_mode(metrics: dict) -> str:
    """', trained' / ', fixed' after the highway's description (the validation choice of highway_train)."""
    flag = metrics.get("highway_train")
    return "" if flag is None else (", trained" if flag else ", fixed")


def run_domain(job) -> tuple[str, dict]:
    """One Time-MMD domain (in a worker process): LBS text / no text vs the baselines; the plot if asked."""
    domain, cfg, wcfg, tcfg, max_steps, plot, seeds = job
    set_threads(1)
    series = load_time_mmd(domain, max_steps=max_steps)
    res = choose_highway_training(series, cfg, wcfg, tcfg, seeds)
    if plot:
        plot_forecast(res, series, ROOT / "docs" / "img" / "lbs_forecast_timemmd.png", wcfg)
    return domain, res.metrics


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--domains", default=",".join(TIME_MMD_DOMAINS))
    parser.add_argument("--steps", type=int, default=200, help="most training steps (early stopping on validation)")
    parser.add_argument("--seeds", type=int, default=3, help="ensemble members per LBS variant")
    parser.add_argument("--max-steps", type=int, default=480, help="most recent steps kept per domain")
    parser.add_argument("--gen-steps", type=int, default=200, help="most training steps on the generated series")
    parser.add_argument("--jobs", type=int, default=2, help="domains evaluated in parallel processes")
    parser.add_argument("--gpu-speed", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("lbs_gpu_speed.json"))
    args = parser.parse_args()
    if args.gpu_speed:
        gpu_speed(args.out)
        return
    set_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    domains = args.domains.split(",")
    steps = args.steps
    if args.quick:
        domains, steps = domains[:3], min(steps, 60)
    # text_loss trains the soft prompt on detached latents (as in the seed): it does not change the value
    # forecasts, so 4 pairs per batch keep it in the run at half the cost of 8
    # the highway is a forecaster chosen on validation (linear, or ARIMA / ETS / their mean, fitted on the
    # training part); whether it trains with the model or stays fixed while the state-space model learns its
    # correction (ES-RNN's hybrid) is chosen per Time-MMD domain on validation too (`choose_highway_training`)
    cfg = LBSConfig(text_loss_samples=4, value_zero_init=True)
    # early stopping on the chronological validation split; point forecast = the prior-mean path
    wcfg = WindowConfig(val_every=20, patience=4, point="path")
    tcfg = TrainConfig(steps=steps, lr=3e-3, log_every=10_000)
    t_start = time.time()
    per_domain: dict[str, dict] = {}
    data_present = find_dataset("time-mmd", required=False, sample=False) is not None
    plot_domain = "Economy" if "Economy" in domains else domains[-1]
    jobs = [(d, cfg, wcfg, tcfg, args.max_steps, d == plot_domain, args.seeds)
            for d in (domains if data_present else [])]
    # domains are independent: a few worker processes, one torch thread each
    with concurrent.futures.ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for domain, metrics in pool.map(run_domain, jobs):
            per_domain[domain] = metrics
            print(domain, {k: round(v, 3) if isinstance(v, float) else v for k, v in metrics.items()}, flush=True)
    gen = generated_series()
    # the generated series is stationary around its regimes: absolute levels, no instance norm (see docs/lbs.md)
    gen_wcfg = dataclasses.replace(wcfg, instance_norm=False)
    gen_res = choose_highway_training(gen, cfg, gen_wcfg, tcfg.replace(steps=args.gen_steps), args.seeds)
    train_end = gen.split()[0]
    gen_res.metrics.update(text_steer_report(gen_res.model, gen, Standardizer(gen.values[:train_end]),
                                             gen_res.origins, gen_wcfg, REGIMES["surge"][0], REGIMES["slump"][0]))
    plot_forecast(gen_res, gen, ROOT / "docs" / "img" / "lbs_forecast_generated.png", gen_wcfg)
    print("generated", gen_res.metrics, flush=True)
    torch.manual_seed(0)
    cpu_speed = speed(BaseLBS(cfg), gen, wcfg, fast_steps=20, seed_steps=40)
    print("speed", cpu_speed, flush=True)

    names = list(per_domain)
    text = np.array([per_domain[d]["mse_lbs_text"] for d in names]) if names else np.array([np.nan])
    notext = np.array([per_domain[d]["mse_lbs_notext"] for d in names]) if names else np.array([np.nan])
    stat = np.array([per_domain[d]["mse_stat"] for d in names]) if names else np.array([np.nan])
    arima = np.array([per_domain[d]["mse_arima"] for d in names]) if names else np.array([np.nan])
    naive = np.array([per_domain[d]["mse_naive"] for d in names]) if names else np.array([np.nan])
    steer = [per_domain[d]["steer_toward_goal_frac"] for d in names] + [gen_res.metrics["steer_toward_goal_frac"]]
    gpu_file = ROOT / "benchmarks" / "results" / "lbs_gpu_speed.json"
    gpu = json.loads(gpu_file.read_text()) if gpu_file.exists() else None
    metrics = {
        "domains_text_beats_notext": int(np.sum(text < notext)) if names else 0,
        "domains_text_beats_stat": int(np.sum(text < stat)) if names else 0,
        "domains_total": len(names),
        "mse_text_mean": float(np.mean(text)),
        "mse_notext_mean": float(np.mean(notext)),
        "mse_stat_mean": float(np.mean(stat)),
        "domains_text_beats_arima": int(np.sum(text < arima)) if names else 0,
        "domains_text_beats_naive": int(np.sum(text < naive)) if names else 0,
        "domains_notext_beats_stat": int(np.sum(notext < stat)) if names else 0,
        "mse_ratio_text_to_stat_median": float(np.median(text / stat)),
        "steer_toward_goal_frac": float(np.mean(steer)),
        "train_speedup_vs_seed_loop": cpu_speed["speedup"],
        "train_speedup_vs_seed_loop_gpu": gpu["speedup"] if gpu else None,
        "generated_mse_text": gen_res.metrics["mse_lbs_text"],
        "generated_mse_notext": gen_res.metrics["mse_lbs_notext"],
        "generated_mse_stat": gen_res.metrics["mse_stat"],
        "steer_text_direction_frac_generated": gen_res.metrics["steer_text_direction_frac"],
    }
    result = {
        "family": "lbs",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(gpu=True),
        "command": "python " + " ".join(shlex.quote(a) for a in ["benchmarks/lbs.py", *sys.argv[1:]]),
        "metrics": metrics,
        "notes": ("CPU shared with other jobs (up to 5 engineers on 2 cores): timings are noisy. MSE in standardised "
                  "units (train-part mean/std), rolling origins over the test part (last 20%), horizon "
                  f"{wcfg.horizon}, context {wcfg.context}. LBS: an ensemble of {args.seeds} models per variant (point "
                  f"forecast = mean of the members' prior-mean paths), each trained up to {steps} steps with early "
                  f"stopping on the validation part (every {wcfg.val_every} steps, patience {wcfg.patience}); the "
                  "highway chosen per domain on the validation part ('highway' column): the linear highway "
                  "(features, order, ridge, level smoothing; closed form on the training part) or a statistical "
                  "one (ARIMA, ETS or their mean, fitted by AIC on the training part, filtered causally through "
                  "the series); trained with the model or kept fixed (highway_train), chosen per series by the text "
                  "ensemble's validation MSE; mlp_val starts at zero, so "
                  "LBS starts from the highway's forecast and learns a correction of it; backbone "
                  f"{cfg.backbone} (random frozen sensor). Statistical baseline ('stat'): the "
                  "better on the test part of statsmodels ARIMA (order by AIC on the train part) and ETS (simple or "
                  "damped trend, by AIC). Speed: observations (series steps) trained per second, batched (cache "
                  "fill included) vs the seed's per-step batch-1 loop, same backbone and data; the GPU row is the "
                  "earlier device run (benchmarks/results/lbs_gpu_speed.json), not re-measured here."),
        "per_domain": per_domain,
        "generated": gen_res.metrics,
        "speed_cpu": cpu_speed,
        "speed_gpu": gpu,
        "wall_s": time.time() - t_start,
        "config": {"lbs": cfg.to_dict(), "window": wcfg.to_dict(), "train": tcfg.to_dict()},
        "packages": {"statsmodels": __import__("statsmodels").__version__, "torch": torch.__version__},
    }
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "lbs.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "lbs.md").write_text(markdown(result))
    print(json.dumps(metrics, indent=2))


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"# lbs benchmark ({result['date']})", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, GPU: {m['gpu']}; command: `{result['command']}`", "",
             "| metric | value |", "| --- | --- |"]
    for key, value in result["metrics"].items():
        lines.append(f"| {key} | {value:.4g} |" if isinstance(value, float) else f"| {key} | {value} |")
    lines += ["", "Forecast MSE per domain (standardised units; lower is better):", "",
              "| domain | steps | text cover | highway (val) | LBS text | LBS no text | naive | seas. naive | ARIMA | "
              "ETS | text beats stat | steer toward |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    rows = dict(result["per_domain"])
    rows["generated (embedded)"] = result["generated"]
    for name, d in rows.items():
        highway = f"{d.get('highway_choice', '-')}{highway_mode(d)}"
        lines.append(f"| {name} | {int(d['steps'])} | {d['text_coverage']:.2f} | {highway} | "
                     f"{d['mse_lbs_text']:.3f} | "
                     f"{d['mse_lbs_notext']:.3f} | {d['mse_naive']:.3f} | {d['mse_seasonal_naive']:.3f} | "
                     f"{d['mse_arima']:.3f} | {d['mse_ets']:.3f} | "
                     f"{'yes' if d['mse_lbs_text'] < d['mse_stat'] else 'no'} | {d['steer_toward_goal_frac']:.2f} |")
    for label, sp in (("CPU", result["speed_cpu"]), ("GPU", result["speed_gpu"])):
        if sp:
            when = ", recorded in an earlier device run" if label == "GPU" else ", this run"
            lines += ["", f"Speed ({label}{', ' + sp.get('device', '') if 'device' in sp else ''}{when}): batched "
                      f"{sp['batched_obs_per_s']:.0f} obs/s vs seed loop {sp['seed_loop_obs_per_s']:.1f} obs/s "
                      f"= {sp['speedup']:.0f}x (backbone {sp['backbone_params'] / 1e6:.1f}M params)"]
    lines += ["", "Validation part (what every choice was made on): MSE of the best highway candidate of each source "
              "(the chosen highway is the least of them), of one LBS model and of the ensemble:", "",
              "| domain | last value | linear highway | ARIMA highway | ETS highway | ARIMA+ETS highway | "
              "LBS text (1 model) | LBS text (ensemble) | LBS no text (ensemble) |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, d in rows.items():
        if "val_mse_highway" in d:
            sources = " | ".join(f"{d[k]:.4f}" if k in d else "-" for k in (
                "val_mse_highway_linear", "val_mse_highway_arima", "val_mse_highway_ets", "val_mse_highway_arima+ets"))
            lines.append(f"| {name} | {d['val_mse_last_value']:.4f} | {sources} | "
                         f"{d['val_mse_text_member0']:.4f} | {d['val_mse_text_ensemble']:.4f} | "
                         f"{d['val_mse_notext_ensemble']:.4f} |")
    lines += ["", result["notes"], ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
