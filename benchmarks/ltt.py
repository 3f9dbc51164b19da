"""LTT benchmark: validity of prior samples on the char task (ODE, SDE, flow vs encoder z0 and an untrained prior),
sampling speed per prior and solver on CPU, and batched latent planning (CEM vs random shooting).

    python benchmarks/ltt.py            # full: 2500 steps x 256, 1024 samples per prior (GPU if present)
    python benchmarks/ltt.py --quick    # 600 steps, 256 samples: a few minutes on a free CPU
    python benchmarks/ltt.py --set latent_noise=0.5 --tag noise05   # another LTTConfig, results ltt_noise05.*

Writes benchmarks/results/ltt.json and .md and the training-curve plot docs/img/ltt_training.png
(with --tag T: ltt_T.json, ltt_T.md, docs/img/ltt_T_training.png).
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import machine

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from latentspace.core.runs import Run, markdown_table, set_threads  # noqa: E402
from latentspace.ltt import tasks  # noqa: E402
from latentspace.ltt.config import LTTConfig, LTTRunConfig  # noqa: E402
from latentspace.ltt.plan import plan, reference_scores, rollout_drift, trajectory_distance  # noqa: E402
from latentspace.ltt.train import (  # noqa: E402
    fit_prior,
    latent_usage,
    sample_table,
    sampling_speed,
    train,
    validity_report,
)


def parse_sets(items: list[str]) -> dict:
    """["latent_noise=0.5", ...] -> {"latent_noise": 0.5, ...}, typed by LTTConfig's defaults."""
    defaults = LTTConfig().to_dict()
    changes = {}
    for item in items:
        field, sep, value = item.partition("=")
        if not sep or field not in defaults:
            raise SystemExit(f"--set {item!r}: expected FIELD=VALUE with FIELD one of {sorted(defaults)}")
        kind = type(defaults[field])
        changes[field] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
    return changes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="change an LTTConfig field (repeatable), e.g. --set latent_noise=0.5")
    parser.add_argument("--tag", default="", help="suffix of the result files: ltt_<tag>.json")
    parser.add_argument("--n", type=int, default=None, help="samples per prior")
    parser.add_argument("--prior-steps", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for the speed measurements")
    parser.add_argument("--speed-n", type=int, default=256, help="sequences per sampling-speed measurement")
    parser.add_argument("--goals", type=int, default=16, help="planning goals")
    parser.add_argument("--cpu", action="store_true", help="train on CPU even when a GPU is present")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--plot", type=Path, default=None, help="default docs/img/ltt[_<tag>]_training.png")
    args = parser.parse_args()
    stem = f"ltt_{args.tag}" if args.tag else "ltt"
    plot_path = args.plot or ROOT / "docs" / "img" / f"{stem}_training.png"
    steps = args.steps or (600 if args.quick else 2500)
    n = args.n or (256 if args.quick else 1024)
    prior_steps = args.prior_steps or (200 if args.quick else 1000)
    started = time.time()

    run_config = LTTRunConfig().override({
        "model": parse_sets(args.set), "batch_size": args.batch_size,
        "train": {"steps": steps, "lr": args.lr, "warmup_steps": 100, "log_every": 20, "eval_every": max(1, steps // 8),
                  "seed": 0, "cpu": args.cpu}})
    config, train_config = run_config.model, run_config.train
    with tempfile.TemporaryDirectory() as tmp:
        run = Run("ltt", "benchmark", root=tmp)
        t0 = time.time()
        model, result = train(config, train_config, batch_size=run_config.batch_size, run=run, quiet=True)
        train_s = time.time() - t0
        curve = run.read_metrics()
        run.plot_metrics(["loss", "recon", "ep", "ode", "eval_valid_frac"], filename="training.png",
                         title=f"LTT char task, {steps} steps x {args.batch_size}")
        plot_path.parent.mkdir(parents=True, exist_ok=True)
        plot_path.write_bytes((run.plots_dir / "training.png").read_bytes())
    device = next(model.parameters()).device
    t0 = time.time()
    validity = validity_report(model, n=n, prior_steps=prior_steps, extra_temperatures=(0.8, 0.0))
    usage = latent_usage(model, n)
    validity_s = time.time() - t0
    table = sample_table(model, 4)

    # speeds on CPU
    model = model.cpu().eval()
    set_threads(args.threads)
    priors = {"ode": model.prior, "sde": fit_prior(model, "sde", 50), "flow": fit_prior(model, "flow", 50)}
    speeds = {}
    for kind, solvers in (("ode", ("euler", "midpoint", "rk4")), ("sde", ("euler", "srk")), ("flow", ("euler",))):
        for solver in solvers:
            try:
                speeds[f"samples_per_s_{kind}_{solver}"] = sampling_speed(model, priors[kind], solver, n=args.speed_n)
            except Exception as err:  # a solver that needs what this SDE lacks is reported, not fatal
                speeds[f"samples_per_s_{kind}_{solver}"] = f"error: {type(err).__name__}: {err}"[:200]
    speeds["samples_per_s_ode"] = speeds["samples_per_s_ode_euler"]

    # planning: CEM vs random shooting at the same budget, and batched scoring vs the one-by-one reference
    generator = torch.Generator().manual_seed(3)
    goals = tasks.generate(args.goals, config.seq_len, config.block_len, config.noise_p, generator=generator)
    with torch.no_grad():
        goal_latents = model.encoder(goals)[:, -1]  # (goals, D)
    planning = {"cem": [], "random": [], "random_mean": []}
    for goal in goal_latents:
        cem = plan(model, goal, "cem", 256, 5, generator=generator)
        rnd = plan(model, goal, "random", 256, 5, generator=generator)
        planning["cem"].append(cem.distance)
        planning["random"].append(rnd.distance)
        planning["random_mean"].append(cem.random_mean_distance)
    z0 = model.prior.sample_z0(256, generator=generator)
    t0 = time.perf_counter()
    batched = trajectory_distance(rollout_drift(model.prior, z0, model.seq_total), goal_latents[0])
    batched_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    reference = reference_scores(model.prior, z0, goal_latents[0], model.seq_total)
    reference_s = time.perf_counter() - t0

    def mean(xs):
        return sum(xs) / len(xs)

    metrics = {
        **validity,
        **usage,
        "samples_per_s_ode": speeds["samples_per_s_ode"],
        "plan_distance_cem": mean(planning["cem"]),
        "plan_distance_random_shooting": mean(planning["random"]),
        "plan_distance_random_candidate_mean": mean(planning["random_mean"]),
        "plan_candidates_per_s_batched": 256 / batched_s,
        "plan_candidates_per_s_reference_loop": 256 / reference_s,
        "plan_batched_vs_reference_max_abs_diff": float((batched - reference).abs().max()),
        "final_recon": result.metrics.get("recon"),
        "final_ep": result.metrics.get("ep"),
        "final_ode": result.metrics.get("ode"),
        "train_s": train_s,
    }
    report = {
        "family": "ltt",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(gpu=True),
        "command": "python " + " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "metrics": metrics,
        "speeds": speeds,
        "settings": {"steps": steps, "batch_size": args.batch_size, "samples_per_prior": n,
                     "prior_fit_steps": prior_steps, "train_device": str(device), "speed_threads": args.threads,
                     "config": config.to_dict()},
        "notes": ("Training ran on the train_device; every speed is measured on the CPU with speed_threads threads "
                  "(other jobs may have shared the CPU). SDE and flow priors are fitted on the frozen encoder of the "
                  "same model; valid_frac_encoder_z0 takes z0 from the encoder of real sequences and rolls out the "
                  "ODE drift (upper bound); valid_frac_untrained uses a freshly initialised drift (floor)."),
        "curve": [{k: r[k] for k in ("step", "loss", "recon", "ep", "ode", "eval_valid_frac") if k in r}
                  for r in curve],
        "samples": table,
        "wall_s": time.time() - started,
        "validity_s": validity_s,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    m = report["machine"]
    rows = [[k, v] for k, v in metrics.items()] + [[k, v] for k, v in speeds.items() if k != "samples_per_s_ode"]
    md = [f"# LTT benchmark ({report['date']})", "",
          f"Machine: {m['cpu']}, {m['cores']} cores, GPU: {m['gpu']}; training on {device}, "
          f"speeds on CPU with {args.threads} threads.", "",
          f"Command: `{report['command']}`", "",
          markdown_table(["metric", "value"], rows), "", "Samples (ODE prior):", "", table, ""]
    (args.out / f"{stem}.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
