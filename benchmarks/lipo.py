"""LIPO benchmark: budget to reach a top-1% instruction (LIPO, HbBoPs, Hyperband, random), GP timing, client speedup.

The table: the offline APE pool (real instruction texts from the seeded phrase grammar), each scored on
`validation_size` GSM8K train questions by the documented SimulatedTaskModel (lipo/evaluate.py), so the
true error of every instruction is known. Its objective was fixed before any optimiser ran. Budget unit:
one question answered (= one LLM call); the whole table costs N * nvalid.

Methods at equal budget, repeated over seeds:
- random: instructions in random order, each at full fidelity;
- hyperband: LIPOHyperband with random proposals only, rounds repeated with a shared evaluation cache;
- hbbops: Hyperband + BO proposals from the deep-kernel GP on the raw sentence embeddings (HbBoPs-style);
- lipo: Hyperband + BO on the VAE latents, and after each round InvBO steps: qLogEI in the latent box ->
  decoder -> nearest unevaluated table instruction (inversion restricted to the table) -> full evaluation.

Run: `OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/lipo.py [--quick]`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import random
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from latentspace.core.llm import CallableBackend, LLMClient, MockOpenAIServer, OpenAIBackend
from latentspace.core.runs import markdown_table
from latentspace.lipo.ape import APEGenerator, OfflineInstructionWriter
from latentspace.lipo.config import LIPOConfig
from latentspace.lipo.encoder import GTRInstructionEncoder
from latentspace.lipo.evaluate import SimulatedTaskModel, load_gsm8k
from latentspace.lipo.gp import GPWithEI
from latentspace.lipo.hyperband import EvaluationCache, LIPOHyperband
from latentspace.lipo.vae import InstructionVAE, train_vae, vae_quality_metrics

RESULTS = Path(__file__).parent / "results"
DOCS_IMG = Path(__file__).parent.parent / "docs" / "img"


def build_table(n: int, nvalid: int, seed: int = 0):
    writer = LLMClient(CallableBackend(OfflineInstructionWriter(seed), "offline-template-writer"))
    pool = [item["text"] for item in APEGenerator(writer, num_instructions=n).generate()]
    validation = random.Random(seed).sample(load_gsm8k("train"), nvalid)
    sim = SimulatedTaskModel(validation)
    outcomes = np.array([[not sim.correct(text, ex) for ex in validation] for text in pool], dtype=np.float64)
    return pool, outcomes  # outcomes (N, nvalid): 1 where the answer is wrong


class Tracker:
    """Anytime curve: (calls, true error of the incumbent) after every evaluation batch."""

    def __init__(self, true_error: np.ndarray, nvalid: int):
        self.true_error, self.nvalid = true_error, nvalid
        self.curve: list[tuple[int, float]] = []

    def record(self, cache: EvaluationCache) -> None:
        full = [(e, i) for (i, f), e in cache.errors.items() if f >= self.nvalid]
        if full:
            self.curve.append((cache.calls, float(self.true_error[min(full)[1]])))


def run_random(outcomes, true_error, nvalid, horizon, seed):
    order = np.random.default_rng(seed).permutation(len(outcomes))
    tracker, best, calls = Tracker(true_error, nvalid), 1.0, 0
    for i in order:
        calls += nvalid
        best = min(best, float(true_error[i]))
        tracker.curve.append((calls, best))
        if calls >= horizon:
            break
    return tracker.curve


def run_hyperband(features, outcomes, true_error, nvalid, horizon, seed, use_bo, config, lipo_vae=None,
                  invbo_steps=0):
    cache = EvaluationCache(lambda i, a, b: float(outcomes[i, a:b].mean()))
    tracker = Tracker(true_error, nvalid)
    round_index = 0
    while cache.calls < horizon:
        hb = LIPOHyperband(features, cache.evaluate_range, nvalid, config.bmin, config.eta,
                           config.random_interleaving_prob, config.min_fidelity_pct, config.for_hyperband_gp(),
                           use_bo=use_bo, cache=cache, seed=seed * 1000 + round_index)
        for bracket in hb.schedule:
            if cache.calls >= horizon:
                break
            hb.run_bracket(bracket)
            tracker.record(cache)
        if lipo_vae is not None and cache.calls < horizon:
            invbo_rounds(lipo_vae, features, cache, hb, nvalid, config, invbo_steps, tracker, horizon, seed)
        round_index += 1
    return tracker.curve


def invbo_rounds(vae, latents, cache, hb, nvalid, config, steps, tracker, horizon, seed):
    """InvBO inside the table: optimise qLogEI in the latent box, decode, take the nearest unevaluated row."""
    ids, errors = hb.high_fidelity_data()
    if len(ids) < 4:
        return
    gp = GPWithEI(latents.shape[1], config.gp_latent_dim, seed=seed, **config.gp_options())
    gp.set_data(latents[ids], torch.tensor(errors))
    gp.fit(**config.for_hyperband_gp())
    with torch.no_grad():
        pool_dec = torch.nn.functional.normalize(vae.decode(latents.float()), dim=-1)  # (N, E) decoded pool
    for step in range(steps):
        if cache.calls >= horizon:
            return
        z, _ = gp.optimize(config.num_restarts, config.raw_samples, config.latent_margin, config.acq_maxiter,
                           seed=seed + step)
        with torch.no_grad():
            target = vae.decode(z.float().unsqueeze(0))  # (1, E)
        sims = (pool_dec @ target.T).squeeze(-1)
        evaluated = {i for i, _ in cache.errors}
        for i in sims.argsort(descending=True).tolist():
            if i not in evaluated:
                break
        error = cache.evaluate(i, nvalid)
        tracker.record(cache)
        gp.add_observation(latents[i], error)
        gp.fit(config.gp_retrain_epochs, config.gp_retrain_lr, config.gp_retrain_patience)


def first_reach(curve, threshold, full_budget):
    for calls, err in curve:
        if err <= threshold + 1e-12:
            return calls / full_budget
    return None


def time_gp(latents, errors, config, n, baseline=False):
    """Seconds of one cold GP fit + one qLogEI optimisation on n random observations.

    baseline: the settings before the fast path (every epoch on all n points through GPyTorch's
    ExactMarginalLogLikelihood, restarts optimised 5 at a time), measured in the same run.
    """
    idx = torch.randperm(latents.shape[0], generator=torch.Generator().manual_seed(n))[:n]
    gp = GPWithEI(latents.shape[1], config.gp_latent_dim, **({"subset_size": 0} if baseline else config.gp_options()))
    gp.set_data(latents[idx], torch.as_tensor(errors)[idx])
    start = time.perf_counter()
    info = gp.fit(**config.for_hyperband_gp(), reference=baseline)
    fit_s = time.perf_counter() - start
    gp.optimize(config.num_restarts, config.raw_samples, config.latent_margin, config.acq_maxiter,
                batch_limit=5 if baseline else None)
    total = time.perf_counter() - start
    # warm refit after one more observation (what the BO loop does), then the next acquisition
    extra = torch.randperm(latents.shape[0], generator=torch.Generator().manual_seed(n + 1))[0]
    gp.add_observation(latents[extra], float(errors[extra]))
    start = time.perf_counter()
    gp.fit(config.gp_retrain_epochs, config.gp_retrain_lr, config.gp_retrain_patience, reference=baseline)
    gp.optimize(config.num_restarts, config.raw_samples, config.latent_margin, config.acq_maxiter,
                batch_limit=5 if baseline else None)
    warm = time.perf_counter() - start
    return {"total_s": total, "fit_s": fit_s, "acq_s": total - fit_s, "epochs": info["gp_epochs"],
            "full_epochs": info["gp_full_epochs"], "warm_refit_acq_s": warm}


def gp_heldout(latents, errors, config, baseline=False, n_train=800, seed=0):
    """Held-out quality of a fit on n_train random rows: NLPD, Spearman and RMSE of the predicted error."""
    from scipy.stats import spearmanr

    perm = torch.randperm(latents.shape[0], generator=torch.Generator().manual_seed(seed))
    train, test = perm[:n_train], perm[n_train:]
    errors = torch.as_tensor(errors, dtype=torch.float64)
    gp = GPWithEI(latents.shape[1], config.gp_latent_dim, seed=seed,
                  **({"subset_size": 0} if baseline else config.gp_options()))
    gp.set_data(latents[train], errors[train])
    info = gp.fit(**config.for_hyperband_gp(), reference=baseline)
    mean, std = gp.predict(latents[test])
    y = errors[test]
    nlpd = float((0.5 * ((y - mean) / std) ** 2 + std.log() + 0.5 * np.log(2 * np.pi)).mean())
    return {"nlpd": round(nlpd, 4), "spearman": round(float(spearmanr(mean, y)[0]), 4),
            "rmse": round(float((mean - y).pow(2).mean().sqrt()), 4), "train_neg_mll": round(info["gp_neg_mll"], 4),
            "n_train": n_train, "n_test": int(len(test))}


def client_speedup(n_prompts=128, delay=0.2, concurrency=32):
    out = {}
    with MockOpenAIServer(delay=delay) as server:
        for label, workers in (("sequential", 1), ("concurrent", concurrency)):
            client = LLMClient(OpenAIBackend(server.url, "mock"), max_concurrency=workers)
            start = time.perf_counter()
            client.generate([f"{label} question {i}" for i in range(n_prompts)])
            out[label] = n_prompts / (time.perf_counter() - start)
    return out["concurrent"] / out["sequential"], out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller table, one seed")
    parser.add_argument("--n", type=int, default=None)
    parser.add_argument("--seeds", type=int, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    n = args.n or (400 if args.quick else 1000)
    seeds = args.seeds or (1 if args.quick else 3)
    nvalid = 200
    horizon_frac = 0.12
    config = LIPOConfig.preset("cpu").replace(validation_size=nvalid)
    t0 = time.time()
    pool, outcomes = build_table(n, nvalid)
    true_error = outcomes.mean(1)
    threshold = float(np.quantile(true_error, 0.01))
    full_budget = n * nvalid
    horizon = int(horizon_frac * full_budget)
    encoder = GTRInstructionEncoder(config.encoder_model)
    embeddings = encoder.encode_batch_tensor(pool)
    vae_config = config.replace(embedding_dim=int(embeddings.shape[1]))
    vae = InstructionVAE(vae_config)
    train_vae(vae, embeddings, vae_config, quiet=True)
    quality = vae_quality_metrics(vae, embeddings)
    with torch.no_grad():
        latents = vae.encode_mu(embeddings).double()
    curves: dict[str, list] = {m: [] for m in ("random", "hyperband", "hbbops", "lipo")}
    reach: dict[str, list] = {m: [] for m in curves}
    seconds: dict[str, float] = dict.fromkeys(curves, 0.0)
    for seed in range(seeds):
        runs = {
            "random": lambda s=seed: run_random(outcomes, true_error, nvalid, horizon, s),
            "hyperband": lambda s=seed: run_hyperband(latents, outcomes, true_error, nvalid, horizon, s, False, config),
            "hbbops": lambda s=seed: run_hyperband(embeddings.double(), outcomes, true_error, nvalid, horizon, s, True,
                                                   config),
            "lipo": lambda s=seed: run_hyperband(latents, outcomes, true_error, nvalid, horizon, s, True, config,
                                                 lipo_vae=vae, invbo_steps=4),
        }
        for name, fn in runs.items():
            start = time.time()
            curve = fn()
            seconds[name] += time.time() - start
            curves[name].append(curve)
            reach[name].append(first_reach(curve, threshold, full_budget))
            print(f"seed {seed} {name}: reach {reach[name][-1]} ({time.time() - start:.0f} s)", file=sys.stderr)
    gp_100 = time_gp(latents, true_error, config, 100)
    gp_1000 = time_gp(latents, true_error, config, min(1000, n))
    gp_1000_baseline = time_gp(latents, true_error, config, min(1000, n), baseline=True)
    heldout = {"fast": gp_heldout(latents, true_error, config, n_train=int(0.8 * n)),
               "baseline": gp_heldout(latents, true_error, config, baseline=True, n_train=int(0.8 * n))}
    print("gp", json.dumps({"n100": gp_100, "n1000": gp_1000, "n1000_baseline": gp_1000_baseline,
                            "heldout": heldout}), file=sys.stderr)
    speedup, rates = client_speedup()

    def summary(values):
        reached = [v for v in values if v is not None]
        # a seed that never reached the top 1% within the horizon counts as the horizon (a lower bound)
        return float(np.median([v if v is not None else horizon_frac for v in values])), len(reached)

    metrics = {}
    details = {}
    for name in curves:
        value, hits = summary(reach[name])
        metrics[f"budget_frac_to_top1pct_{name}"] = round(value, 4)
        details[name] = {"per_seed": reach[name], "seeds_reaching_top1pct": hits, "seconds": round(seconds[name], 1)}
    metrics["gp_fit_acq_s_100"] = round(gp_100["total_s"], 2)
    metrics["gp_fit_acq_s_1000"] = round(gp_1000["total_s"], 2)
    metrics["gp_fit_acq_s_1000_baseline"] = round(gp_1000_baseline["total_s"], 2)
    metrics["gp_warm_refit_acq_s_1000"] = round(gp_1000["warm_refit_acq_s"], 2)
    metrics["gp_heldout_nlpd_fast"] = heldout["fast"]["nlpd"]
    metrics["gp_heldout_nlpd_baseline"] = heldout["baseline"]["nlpd"]
    metrics["gp_heldout_spearman_fast"] = heldout["fast"]["spearman"]
    metrics["gp_heldout_spearman_baseline"] = heldout["baseline"]["spearman"]
    metrics["llm_client_speedup_concurrent"] = round(speedup, 1)
    # anytime: mean incumbent true error at budget checkpoints
    grid = np.linspace(0.005, horizon_frac, 24)

    def at(curve, frac):
        vals = [e for c, e in curve if c / full_budget <= frac]
        return vals[-1] if vals else float(np.max(true_error))

    anytime = {m: [float(np.mean([at(c, f) for c in curves[m]])) for f in grid] for m in curves}
    for frac in (0.02, 0.05, 0.1):
        for m in curves:
            metrics[f"anytime_error_at_{int(frac * 100)}pct_{m}"] = round(
                float(np.mean([at(c, frac) for c in curves[m]])), 4)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    command = "OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python " + " ".join(shlex.quote(a) for a in sys.argv)
    result = {
        "family": "lipo", "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu, "cores": torch.get_num_threads() and __import__("os").cpu_count(), "gpu": None,
                    "note": "shared CPU: up to 6 other jobs ran at the same time; one torch thread"},
        "command": command, "metrics": metrics,
        "table": {"instructions": n, "nvalid": nvalid, "full_budget_calls": full_budget, "top1pct_error": threshold,
                  "best_error": float(true_error.min()), "median_error": float(np.median(true_error)),
                  "task_model": "SimulatedTaskModel (documented, deterministic; lipo/evaluate.py)",
                  "instructions_source": "offline APE writer (seeded phrase grammar)"},
        "horizon_frac": horizon_frac, "seeds": seeds, "methods": details, "vae_quality": quality,
        "gp_timing": {"n100": gp_100, "n1000": gp_1000, "n1000_baseline": gp_1000_baseline,
                      "heldout": heldout,
                      "settings": {**config.for_hyperband_gp(), **config.gp_options(),
                                   "num_restarts": config.num_restarts, "raw_samples": config.raw_samples,
                                   "maxiter": config.acq_maxiter,
                                   "warm_refit": {"epochs": config.gp_retrain_epochs, "lr": config.gp_retrain_lr,
                                                  "patience": config.gp_retrain_patience}},
                      "baseline": "every epoch on all N through GPyTorch's ExactMarginalLogLikelihood (autograd "
                                  "through the Cholesky factor), qLogEI restarts optimised 5 at a time"},
        "llm_client": {"prompts": 128, "server_delay_s": 0.2, "concurrency": 32, "requests_per_s": rates},
        "anytime": {"budget_frac": grid.tolist(), **anytime},
        "wall_s": round(time.time() - t0, 1),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "lipo.json").write_text(json.dumps(result, indent=2) + "\n")
    rows = [[k, v] for k, v in metrics.items()]
    md = [f"# lipo benchmark ({result['date']})", "", f"Machine: {cpu}, {result['machine']['cores']} cores, no GPU "
          "(shared with other jobs). Command: `" + command + "`", "",
          f"Table: {n} offline-APE instructions x {nvalid} GSM8K questions scored by the SIMULATED task model; "
          f"top-1% error {threshold:.3f} (best {true_error.min():.3f}, median {np.median(true_error):.3f}); "
          f"{seeds} seed(s), horizon {horizon_frac:.0%} of the full-table budget.", "",
          markdown_table(["metric", "value"], rows), ""]
    (RESULTS / "lipo.md").write_text("\n".join(md))
    plot(grid, anytime, threshold, RESULTS / "lipo_anytime.png")
    DOCS_IMG.mkdir(parents=True, exist_ok=True)
    plot(grid, anytime, threshold, DOCS_IMG / "lipo_anytime.png")
    print(json.dumps(metrics, indent=2))


def plot(grid, anytime, threshold, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name, values in anytime.items():
        ax.plot(grid * 100, values, label=name, lw=1.8)
    ax.axhline(threshold, color="k", ls="--", lw=1, label="top-1% error")
    ax.set_xlabel("budget (% of evaluating the whole table)")
    ax.set_ylabel("true error of the incumbent (mean over seeds)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
