"""LIPO on real instruction induction: SmolLM2's outcome tables, each pick credited on held-out examples.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/lipo.py --task all [--seeds 20] [--jobs 2]
    (or --task antonyms,sum; --tables DIR for tables of other tasks, built by benchmarks/lipo_ii_tables.py)

For each task, the table (benchmarks/tables/lipo_ii/<task>.json) holds every pool instruction's outcome
(SmolLM2-135M-Instruct's answer right or wrong) on 100 selection examples and 100 credit examples. The
optimisers (random, Hyperband, HbBoPs, LIPO: the same code as the synthetic benchmark in lipo.py) only ever
see selection outcomes, fidelity = the number of selection examples evaluated; the incumbent (lowest error
measured at full fidelity) is credited with its accuracy on the credit examples, which no method sees.
Budget: `horizon_frac` of evaluating the whole pool at full fidelity, the same for every method.

Reference rows: ape_top, the pool instruction with the best selection accuracy after evaluating everything
(exhaustive APE selection, 1/horizon_frac times the methods' budget); human_by_selection, the human annotation
of best selection accuracy, credited on the credit examples; human_best, the best human annotation by credit
accuracy (an optimistic reference: picked on the credit examples themselves).
"""

from __future__ import annotations

import datetime
import json
import shlex
import sys
import time
from pathlib import Path

import lipo as base
import numpy as np
import torch
from _common import machine
from scipy import stats

from latentspace.core.runs import markdown_table
from latentspace.lipo.config import LIPOConfig
from latentspace.lipo.encoder import GTRInstructionEncoder
from latentspace.lipo.induction import DEV_TASKS, read_table
from latentspace.lipo.vae import InstructionVAE, train_vae

TABLES = Path(__file__).parent / "tables" / "lipo_ii"
METHODS = ("random", "hyperband", "hbbops", "lipo")


def final_error(curve, horizon: int, worst: float) -> float:
    """The incumbent's credited error at the horizon (the worst pool error before any full evaluation)."""
    values = [e for calls, e in curve if calls <= horizon]
    return values[-1] if values else worst


def run_task(name: str, tables: Path, seeds: int, first_seed: int, jobs: int, horizon_frac: float,
             config: LIPOConfig) -> dict:
    table = read_table(tables / f"{name}.json")
    pool = table["instructions"]
    outcomes = 1.0 - table["selection"].astype(np.float64)  # (N, 100): 1 where the answer is wrong
    true_error = 1.0 - table["credit"].mean(1)  # (N,): held-out error, never shown to a method
    nvalid = outcomes.shape[1]
    horizon = int(horizon_frac * len(pool) * nvalid)
    encoder = GTRInstructionEncoder(config.encoder_model)
    embeddings = encoder.encode_batch_tensor(pool)
    vae_config = config.replace(embedding_dim=int(embeddings.shape[1]), validation_size=nvalid)
    torch.manual_seed(vae_config.seed)
    vae = InstructionVAE(vae_config)
    train_vae(vae, embeddings, vae_config, quiet=True)
    with torch.no_grad():
        latents = vae.encode_mu(embeddings).double()
    lipo_features = embeddings.double() if vae_config.gp_input == "embedding" else latents
    invbo_select = {"acquisition": "acq", "union": "union"}.get(vae_config.inversion_select, "nearest")
    base._TASK.clear()
    base._TASK.update(outcomes=outcomes, true_error=true_error, nvalid=nvalid, horizon=horizon, config=vae_config,
                      latents=latents, embeddings=embeddings.double(), lipo_features=lipo_features, vae=vae,
                      invbo_steps=base.INVBO_STEPS, invbo_select=invbo_select)
    runs = [(m, s) for s in range(first_seed, first_seed + seeds) for m in METHODS]
    if jobs > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork")) as pool_exec:
            results = list(pool_exec.map(base._run_task, runs))
    else:
        results = [base._run_task(r) for r in runs]
    acc = {m: [] for m in METHODS}
    for (m, _), (curve, _, _) in zip(runs, results, strict=True):
        acc[m].append(1.0 - final_error(curve, horizon, float(true_error.max())))
    sources = table["sources"]
    human = [i for i, s in enumerate(sources) if s == "human"]
    sel_acc = table["selection"].mean(1)
    ape_top = int(np.argmax(sel_acc))
    human_pick = human[int(np.argmax(sel_acc[human]))] if human else None
    return {"task": name, "pool": len(pool), "ape": sources.count("ape"), "horizon_calls": horizon,
            "acc": acc, "ape_top": float(1 - true_error[ape_top]),
            "human_best": float(1 - true_error[human].min()) if human else None,
            "human_by_selection": float(1 - true_error[human_pick]) if human else None,
            "pool_best": float(1 - true_error.min()), "pool_median": float(np.median(1 - true_error)),
            "selection_credit_corr": float(np.corrcoef(sel_acc, 1 - true_error)[0, 1])}


def main_ii(args) -> None:
    base.set_threads(1)
    tables = Path(args.tables) if args.tables else TABLES
    names = list(DEV_TASKS) if args.task == "all" else args.task.split(",")
    seeds = args.seeds or 20
    horizon_frac = args.horizon_frac
    config = LIPOConfig()
    t0 = time.time()
    per_task = []
    for name in names:
        start = time.time()
        per_task.append(run_task(name, tables, seeds, args.first_seed, args.jobs, horizon_frac, config))
        r = per_task[-1]
        print(f"{name}: " + ", ".join(f"{m} {np.mean(r['acc'][m]):.3f}" for m in METHODS)
              + f"; ape_top {r['ape_top']:.3f}, human_best {r['human_best']}, pool_best {r['pool_best']:.3f} "
              f"({time.time() - start:.0f} s)", file=sys.stderr, flush=True)
    metrics = {}
    for m in METHODS:
        metrics[f"ii_heldout_acc_{m}"] = round(float(np.mean([np.mean(r["acc"][m]) for r in per_task])), 4)
    metrics["ii_heldout_acc_ape_top"] = round(float(np.mean([r["ape_top"] for r in per_task])), 4)
    metrics["ii_heldout_acc_human_best"] = round(float(np.mean([r["human_best"] for r in per_task])), 4)
    metrics["ii_heldout_acc_human_by_selection"] = round(float(np.mean([r["human_by_selection"] for r in per_task])),
                                                         4)
    tests = {}
    for other in ("hyperband", "random", "hbbops"):
        diff = np.concatenate([np.array(r["acc"]["lipo"]) - np.array(r["acc"][other]) for r in per_task])
        t = stats.ttest_1samp(diff, 0.0, alternative="greater")
        w = stats.wilcoxon(diff, alternative="greater") if np.any(diff != 0) else None
        tests[other] = {"mean_diff": float(diff.mean()), "se": float(diff.std(ddof=1) / np.sqrt(len(diff))),
                        "pairs": len(diff), "lipo_higher": int((diff > 0).sum()), "lipo_lower": int((diff < 0).sum()),
                        "p_ttest": float(t.pvalue), "p_wilcoxon": float(w.pvalue) if w is not None else 1.0}
        metrics[f"ii_p_lipo_vs_{other}"] = round(tests[other]["p_wilcoxon"], 4)
    beats = [r for r in per_task if r["human_best"] is not None and np.mean(r["acc"]["lipo"]) > r["human_best"]]
    metrics["ii_tasks_lipo_beats_human"] = len(beats)
    metrics["ii_tasks_lipo_beats_human_by_selection"] = int(sum(
        np.mean(r["acc"]["lipo"]) > r["human_by_selection"] for r in per_task if r["human_by_selection"] is not None))
    metrics["ii_tasks_total"] = len(per_task)
    build = json.loads((tables / "build.json").read_text()) if (tables / "build.json").is_file() else {}
    for key in ("scoring_seqs_per_s", "scoring_speedup_vs_generate_loop"):
        if key in build:
            metrics[key] = round(build[key], 1)
    command = "OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python " + " ".join(shlex.quote(a) for a in sys.argv)
    result = {"family": "lipo", "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
              "machine": machine(note="shared CPU; one torch thread a worker"), "command": command,
              "metrics": metrics, "tests": tests, "seeds": seeds, "horizon_frac": horizon_frac,
              "tasks": per_task, "tables": str(tables), "table_build": {k: build.get(k) for k in
                                                                         ("model", "format", "device", "gpu")},
              "wall_s": round(time.time() - t0, 1)}
    stem = args.name or "lipo_ii"
    base.RESULTS.mkdir(parents=True, exist_ok=True)
    (base.RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    def cell(values):
        return f"{np.mean(values):.3f} +- {np.std(values, ddof=1) / np.sqrt(len(values)):.3f}"

    rows = [[r["task"], r["pool"]] + [cell(r["acc"][m]) for m in METHODS]
            + [f"{r[k]:.3f}" for k in ("ape_top", "human_by_selection", "human_best", "pool_best")]
            for r in per_task]
    md = [f"# LIPO on real instruction induction ({result['date']})", "",
          f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores. Command: `{command}`", "",
          f"Task model SmolLM2-135M-Instruct ({build.get('model')}, {build.get('format')} prompt format, tables "
          f"built on {build.get('gpu') or build.get('device')}); {seeds} optimiser seeds a task; budget "
          f"{horizon_frac:.0%} of the whole pool at full fidelity (100 selection examples); held-out accuracy of "
          "each method's final pick on the 100 credit examples, mean +- standard error over seeds.", "",
          markdown_table(["task", "pool", *METHODS, "ape_top (full budget)", "human (picked on selection)",
                          "best human (picked on credit)", "pool best"], rows), "",
          "LIPO minus each baseline, paired by (task, seed): " + "; ".join(
              f"{o} {v['mean_diff']:+.4f} +- {v['se']:.4f} (higher {v['lipo_higher']}, lower {v['lipo_lower']} of "
              f"{v['pairs']}; one-sided Wilcoxon p {v['p_wilcoxon']:.3g}, t-test p {v['p_ttest']:.3g})"
              for o, v in tests.items()), "",
          markdown_table(["metric", "value"], [[k, v] for k, v in metrics.items()]), ""]
    (base.RESULTS / f"{stem}.md").write_text("\n".join(md))
    print(json.dumps(metrics, indent=2))
