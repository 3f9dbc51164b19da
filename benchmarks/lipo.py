"""LIPO benchmark: budget to reach a top-1% instruction (LIPO, HbBoPs, Hyperband, random), GP timing, client speedup.

The table: the offline APE pool (real instruction texts from the seeded phrase grammar), each scored on
`validation_size` GSM8K train questions by the documented SimulatedTaskModel (lipo/evaluate.py), so the
true error of every instruction is known. Its objective was fixed before any optimiser ran. Budget unit:
one question answered (= one LLM call); the whole table costs N * nvalid.

Methods at equal budget, repeated over seeds:
- random: instructions in random order, each at full fidelity;
- hyperband: LIPOHyperband with random proposals only, rounds repeated with a shared evaluation cache;
- hbbops: Hyperband + BO proposals from the deep-kernel GP on the raw sentence embeddings (HbBoPs-style);
- lipo: Hyperband + BO (GP on the config's gp_input: the embeddings by default, the VAE latents in the
  seed's design), and after each round InvBO steps: qLogEI over the VAE latent box (through the decoder when the
  GP sees embeddings) -> decoder -> the nearest unevaluated table instructions (inversion restricted to the
  table) -> the one of highest LogEI, with every other unevaluated row among the candidates (--invbo-select
  union, the default; acq: the neighbours only; nearest: the closest one) -> racing evaluation at 20/40/80
  questions against the incumbent (the preset's invbo_race_alpha, --invbo-race-alpha 0: straight to full); the
  candidates are ranked by the preset's invbo_rank (mean: the GP's predicted error; log_ei: the acquisition).

Anytime curves: after every full-fidelity evaluation (at its call count) the incumbent is the instruction of
lowest measured full-fidelity error, credited with its true error; the same for every method. Settings of LIPO
were chosen on table seed 1 (--table-seed 1), the reported table is seed 0.

Run: `OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/lipo.py [--quick]`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _common import machine

from latentspace.core.llm import CallableBackend, LLMClient, MockOpenAIServer, OpenAIBackend
from latentspace.core.runs import markdown_table, set_threads
from latentspace.lipo.ape import APEGenerator, OfflineInstructionWriter
from latentspace.lipo.config import LIPOConfig
from latentspace.lipo.encoder import GTRInstructionEncoder
from latentspace.lipo.evaluate import SimulatedTaskModel, load_gsm8k
from latentspace.lipo.gp import GPWithEI
from latentspace.lipo.hyperband import (
    EvaluationCache,
    LIPOHyperband,
    binomial_error_variance,
    race_fidelities,
    race_to_full,
)
from latentspace.lipo.vae import InstructionVAE, train_vae, vae_quality_metrics

RESULTS = Path(__file__).parent / "results"
INVBO_STEPS = 4  # LIPO's InvBO steps after each Hyperband round (chosen on table seed 1, see docs/lipo.md)
INVBO_SELECT = None  # table inversion; None: from the preset's inversion_select (acquisition: "acq", union: "union",
# closest: "nearest")
DOCS_IMG = Path(__file__).parent.parent / "docs" / "img"


def build_table(n: int, nvalid: int, seed: int = 0):
    writer = LLMClient(CallableBackend(OfflineInstructionWriter(seed), "offline-template-writer"))
    pool = [item["text"] for item in APEGenerator(writer, num_instructions=n).generate()]
    validation = random.Random(seed).sample(load_gsm8k("train"), nvalid)
    sim = SimulatedTaskModel(validation)
    outcomes = np.array([[not sim.correct(text, ex) for ex in validation] for text in pool], dtype=np.float64)
    return pool, outcomes  # outcomes (N, nvalid): 1 where the answer is wrong


class Tracker:
    """Anytime curve: (calls, true error of the incumbent) after every full-fidelity evaluation.

    The incumbent is the instruction with the lowest error *measured* at full fidelity so far (ties: the
    earlier one); it is credited with its true error. Every method is read the same way; low-fidelity
    estimates never count as an incumbent.
    """

    def __init__(self, true_error: np.ndarray, nvalid: int):
        self.true_error, self.nvalid = true_error, nvalid
        self.curve: list[tuple[int, float]] = []
        self.best: tuple[float, int] | None = None

    def observe(self, calls: int, instruction_id: int, measured_error: float) -> None:
        if self.best is None or measured_error < self.best[0]:
            self.best = (measured_error, instruction_id)
        self.curve.append((calls, float(self.true_error[self.best[1]])))


class TrackedCache(EvaluationCache):
    """An EvaluationCache that reports every new full-fidelity evaluation to a Tracker, at its exact call count."""

    def __init__(self, evaluate_range, tracker: Tracker):
        super().__init__(evaluate_range)
        self.tracker = tracker

    def evaluate(self, instruction_id: int, fidelity: int) -> float:
        new = (instruction_id, fidelity) not in self.errors
        error = super().evaluate(instruction_id, fidelity)
        if new and fidelity >= self.tracker.nvalid:
            self.tracker.observe(self.calls, instruction_id, error)
        return error


def run_random(outcomes, true_error, nvalid, horizon, seed):
    """Random search: instructions in a seeded random order, each at full fidelity, through the same cache."""
    order = np.random.default_rng(seed).permutation(len(outcomes))
    tracker = Tracker(true_error, nvalid)
    cache = TrackedCache(lambda i, a, b: float(outcomes[i, a:b].mean()), tracker)
    for i in order:
        if cache.calls >= horizon:
            break
        cache.evaluate(int(i), nvalid)
    return tracker.curve


def run_hyperband(features, outcomes, true_error, nvalid, horizon, seed, use_bo, config, lipo_vae=None,
                  invbo_steps=0, invbo_select="nearest", latents=None, invbo_stats=None, gp_fidelity="high"):
    """Hyperband rounds (shared cache) until the horizon; with lipo_vae, InvBO steps after every round.

    features: the GP inputs (VAE latents, or sentence embeddings); latents: the VAE latents InvBO searches
    (default: features, i.e. the GP models the error on the latents); invbo_stats: a dict that the InvBO
    steps' counts ({"steps", "from_inversion"}) are added to; gp_fidelity: what the GP is trained on (high: the
    seed's >= min_fidelity_pct points; all: every evaluated instruction with binomial noise, LIPOHyperband).
    """
    tracker = Tracker(true_error, nvalid)
    cache = TrackedCache(lambda i, a, b: float(outcomes[i, a:b].mean()), tracker)
    round_index = 0
    while cache.calls < horizon:
        hb = LIPOHyperband(features, cache.evaluate_range, nvalid, config.bmin, config.eta,
                           config.random_interleaving_prob, config.min_fidelity_pct, config.for_hyperband_gp(),
                           use_bo=use_bo, cache=cache, seed=seed * 1000 + round_index, gp_fidelity=gp_fidelity)
        for bracket in hb.schedule:
            if cache.calls >= horizon:
                break
            hb.run_bracket(bracket)
        if lipo_vae is not None and cache.calls < horizon:
            counts = invbo_rounds(lipo_vae, features, features if latents is None else latents, cache, hb, nvalid,
                                  config, invbo_steps, horizon, seed * 1000 + round_index, invbo_select)
            if invbo_stats is not None:
                for key, value in counts.items():
                    invbo_stats[key] = invbo_stats.get(key, 0) + value
        round_index += 1
    return tracker.curve


def invbo_rounds(vae, features, latents, cache, hb, nvalid, config, steps, horizon, seed, select="nearest"):
    """InvBO inside the table: qLogEI over the VAE latent box, decode, invert to the nearest unevaluated rows.

    The GP models the error on `features` (the latents themselves, or the sentence embeddings with the
    acquisition taken through the decoder). Inversion is restricted to the table (only table rows have a
    known score): the target embedding decoder(z_opt) is matched to the nearest unevaluated rows (cosine to
    the decoded pool latents, or to the pool embeddings when the GP sees embeddings); select="acq" re-encodes
    those `inversion_neighbours` candidates and keeps the one of highest LogEI, "nearest" the closest one;
    select="union" adds every unevaluated table row to those candidates (LIPOInference's inversion_select="union":
    the acquisition's best pool point wins when the decoded target's neighbours score lower by LogEI). The candidates
    are ranked by LogEI or, with config.invbo_rank="mean" (the default), by the GP's predicted error.
    Returns {"steps", "from_inversion"(, "raced_out", "new_incumbents")}: InvBO steps run, how many evaluated one
    of the decoded target's `inversion_neighbours` nearest unevaluated rows (and, with config.invbo_race_alpha > 0,
    how many were stopped below full fidelity by the racing test, hyperband.race_to_full; how many reached full
    fidelity below the incumbent's error).
    """
    stats = {"steps": 0, "from_inversion": 0}
    ids, errors, variances = hb.gp_data()
    if len(hb.high_fidelity_data()[0]) < 4:
        return stats
    on_latents = features is latents
    gp = GPWithEI(features.shape[1], config.gp_latent_dim, seed=seed, **config.gp_options())
    gp.set_data(features[ids], torch.tensor(errors), torch.tensor(variances))
    gp.fit(**config.for_hyperband_gp())
    with torch.no_grad():
        if on_latents:
            pool_ref = torch.nn.functional.normalize(vae.decode(latents.float()), dim=-1)  # (N, E) decoded pool
        else:
            pool_ref = torch.nn.functional.normalize(features.float(), dim=-1)  # (N, E) pool embeddings
    decode = None if on_latents else (lambda z: vae.decode(z.float()).double())

    def rank(gp, x):  # higher is better: LogEI, or minus the predicted error (LIPOInference.score, invbo_rank)
        return -gp.predict(x)[0] if config.invbo_rank == "mean" else gp.log_ei(x)

    for step in range(steps):
        if cache.calls >= horizon:
            return stats
        z, _ = gp.optimize(config.num_restarts, config.raw_samples, config.latent_margin, config.acq_maxiter,
                           seed=seed + step, decode=decode, search_points=None if on_latents else latents[gp_ids(hb)])
        with torch.no_grad():
            target = vae.decode(z.float().unsqueeze(0))  # (1, E)
        sims = (pool_ref @ target.T).squeeze(-1)
        evaluated = {i for i, _ in cache.errors}
        near = [i for i in sims.argsort(descending=True).tolist() if i not in evaluated][: config.inversion_neighbours]
        if select in ("acq", "union"):  # re-encode the candidates (their table rows), keep the best ranked
            with torch.no_grad():
                scores = rank(gp, features[near])
                i = near[int(scores.argmax())]
                if select == "union":
                    rest = [j for j in range(len(features)) if j not in evaluated and j not in near]
                    if rest:
                        rest_scores = rank(gp, features[rest])
                        if float(rest_scores.max()) > float(scores.max()):
                            i = rest[int(rest_scores.argmax())]
        else:
            i = near[0]
        stats["steps"] += 1
        stats["from_inversion"] += int(i in near)
        incumbent = min(e for (_, f), e in cache.errors.items() if f >= nvalid)
        if config.invbo_race_alpha > 0:  # racing: screened out when significantly worse than the incumbent
            error, fidelity, raced_out = race_to_full(lambda f, i=i: cache.evaluate(i, f), nvalid, incumbent,
                                                      race_fidelities(nvalid, config.bmin, config.eta,
                                                                      config.min_fidelity_pct),
                                                      config.invbo_race_alpha)
            stats["raced_out"] = stats.get("raced_out", 0) + int(raced_out)
            if raced_out:  # no GP observation (the seed's rule), unless the GP takes noisy low-fidelity ones
                if hb.gp_fidelity == "all":
                    var = binomial_error_variance(torch.tensor([error]), torch.tensor([fidelity]), nvalid)
                    gp.add_observation(features[i], error, float(var))
                    gp.fit(config.gp_retrain_epochs, config.gp_retrain_lr, config.gp_retrain_patience)
                continue
        else:
            error = cache.evaluate(i, nvalid)
        stats["new_incumbents"] = stats.get("new_incumbents", 0) + int(error < incumbent)
        gp.add_observation(features[i], error)
        gp.fit(config.gp_retrain_epochs, config.gp_retrain_lr, config.gp_retrain_patience)
    return stats


def gp_ids(hb):
    return hb.gp_data()[0]


_TASK: dict = {}  # what the (method, seed) runs share; set before the worker processes fork


def _run_task(task: tuple[str, int]) -> tuple[list, float, dict]:
    """One method on one seed: (anytime curve, seconds, InvBO counts (LIPO only, else {}))."""
    set_threads(1)
    name, seed = task
    t = _TASK
    common = (t["outcomes"], t["true_error"], t["nvalid"], t["horizon"], seed)
    start = time.time()
    stats: dict = {}
    if name == "random":
        curve = run_random(*common)
    elif name == "hyperband":
        curve = run_hyperband(t["latents"], *common, False, t["config"])
    elif name == "hbbops":
        curve = run_hyperband(t["embeddings"], *common, True, t["config"])
    elif name == "hbbops_all":  # HbBoPs with LIPO's gp_fidelity="all" GP (a control: what the GP data alone give)
        curve = run_hyperband(t["embeddings"], *common, True, t["config"], gp_fidelity="all")
    else:
        curve = run_hyperband(t["lipo_features"], *common, True, t["config"], lipo_vae=t["vae"],
                              invbo_steps=t["invbo_steps"], invbo_select=t["invbo_select"], latents=t["latents"],
                              invbo_stats=stats, gp_fidelity=t["config"].gp_fidelity)
    return curve, time.time() - start, stats


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


def gp_space_heldout(latents, embeddings, errors, config, sizes=(25, 50, 100), reps=3):
    """Held-out Spearman of the GP's predicted error, fitted on n random rows of the VAE latents vs the embeddings.

    The regime of the BO loop (tens of full-fidelity points); the rest of the table is the test set.
    """
    from scipy.stats import spearmanr

    errors = torch.as_tensor(errors, dtype=torch.float64)
    out = {}
    for name, X in (("latent", latents), ("embedding", embeddings)):
        for n in sizes:
            values = []
            for rep in range(reps):
                perm = torch.randperm(X.shape[0], generator=torch.Generator().manual_seed(1000 + rep))
                train, test = perm[:n], perm[n:]
                gp = GPWithEI(X.shape[1], config.gp_latent_dim, seed=rep, **config.gp_options())
                gp.set_data(X[train], errors[train])
                gp.fit(**config.for_hyperband_gp())
                mean, _ = gp.predict(X[test])
                values.append(float(spearmanr(mean, errors[test])[0]))
            out[f"{name}_n{n}"] = {"mean": round(float(np.mean(values)), 4), "std": round(float(np.std(values)), 4)}
    return out


def client_speedup(n_prompts=128, delay=0.2, concurrency=32):
    out = {}
    with MockOpenAIServer(delay=delay) as server:
        for label, workers in (("sequential", 1), ("concurrent", concurrency)):
            client = LLMClient(OpenAIBackend(server.url, "mock"), max_concurrency=workers)
            start = time.perf_counter()
            client.generate([f"{label} question {i}" for i in range(n_prompts)])
            out[label] = n_prompts / (time.perf_counter() - start)
    return out["concurrent"] / out["sequential"], out



def refresh_gp_timing(latents, errors, config, n) -> None:
    """Re-measure the three GP timings alone and write them into results/lipo.{json,md} (the rest unchanged)."""
    import os
    import re

    load = os.getloadavg()
    timing = {"n100": time_gp(latents, errors, config, 100), "n1000": time_gp(latents, errors, config, min(1000, n)),
              "n1000_baseline": time_gp(latents, errors, config, min(1000, n), baseline=True)}
    result = json.loads((RESULTS / "lipo.json").read_text())
    metrics = {"gp_fit_acq_s_100": round(timing["n100"]["total_s"], 2),
               "gp_fit_acq_s_1000": round(timing["n1000"]["total_s"], 2),
               "gp_fit_acq_s_1000_baseline": round(timing["n1000_baseline"]["total_s"], 2),
               "gp_warm_refit_acq_s_1000": round(timing["n1000"]["warm_refit_acq_s"], 2)}
    result["gp_timing"]["during_full_run"] = {k: result["gp_timing"][k] for k in timing}
    result["gp_timing"].update(timing)
    note = (f"GP timings re-measured alone with --gp-timing-only at "
            f"{datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')} (1-min load {load[0]:.2f}); the "
            "full run's timings, taken while other jobs shared the 2 cores, are in gp_timing.during_full_run")
    result["gp_timing"]["note"] = note
    result["metrics"].update(metrics)
    (RESULTS / "lipo.json").write_text(json.dumps(result, indent=2) + "\n")
    md = (RESULTS / "lipo.md").read_text()
    for key, value in metrics.items():
        md = re.sub(rf"^\| {key} \| .* \|$", f"| {key} | {value} |", md, flags=re.M)
    md = re.sub(r"\n\nGP timings re-measured alone.*?\n", "\n", md, flags=re.S)
    (RESULTS / "lipo.md").write_text(md.rstrip("\n") + f"\n\n{note}.\n")
    print(json.dumps(metrics))

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller table, one seed")
    parser.add_argument("--n", type=int, default=None)
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--first-seed", type=int, default=0,
                        help="optimiser seeds first_seed .. first_seed + seeds - 1 (a replication on new seeds)")
    parser.add_argument("--name", default=None,
                        help="stem of the results files (default lipo; lipo_seeds<a>-<b> for --first-seed > 0); "
                             "only the default run writes the docs' plot")
    parser.add_argument("--table-seed", type=int, default=0,
                        help="seed of the table (APE writer + validation sample); 0 is the reported table, settings "
                             "of LIPO were chosen on table seed 1")
    parser.add_argument("--invbo-steps", type=int, default=INVBO_STEPS, help="LIPO's InvBO steps after each round")
    parser.add_argument("--invbo-select", default=INVBO_SELECT, choices=("nearest", "acq", "union"),
                        help="acq: of the decoded target's nearest unevaluated rows the one of highest LogEI; union: "
                             "the same with every unevaluated row added to the candidates")
    parser.add_argument("--gp-timing-only", action="store_true",
                        help="only re-measure the GP fit + acquisition times (on a quiet machine) and update "
                             "results/lipo.{json,md} in place")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes for the (method, seed) runs")
    parser.add_argument("--gp-input", default=None, choices=("latent", "embedding"),
                        help="LIPO's GP input (default: LIPOConfig's gp_input)")
    parser.add_argument("--invbo-race-alpha", type=float, default=None,
                        help="racing level of the InvBO evaluations (default: LIPOConfig's invbo_race_alpha)")
    parser.add_argument("--invbo-rank", default=None, choices=("log_ei", "mean"),
                        help="how InvBO ranks its candidates (default: LIPOConfig's invbo_rank)")
    parser.add_argument("--gp-fidelity", default=None, choices=("high", "all"),
                        help="what LIPO's GP is trained on (default: LIPOConfig's gp_fidelity)")
    parser.add_argument("--control", action="store_true",
                        help="also run hbbops_all: HbBoPs with LIPO's gp_fidelity='all' GP")
    parser.add_argument("--task", default=None,
                        help="real instruction induction instead of the synthetic GSM8K table: a task name, a comma "
                             "list or 'all' (the development tasks); see benchmarks/lipo_ii.py")
    parser.add_argument("--tables", default=None, help="folder of outcome tables for --task (lipo_ii_tables.py)")
    parser.add_argument("--horizon-frac", type=float, default=0.12, help="budget as a share of the full table")
    args = parser.parse_args()
    if args.task:
        from lipo_ii import main_ii

        return main_ii(args)
    set_threads(1)
    n = args.n or (400 if args.quick else 1000)
    seeds = args.seeds or (1 if args.quick else 8)
    last_seed = args.first_seed + seeds - 1
    stem = args.name or ("lipo" if args.first_seed == 0 else f"lipo_seeds{args.first_seed}-{last_seed}")
    nvalid = 200
    horizon_frac = 0.12
    config = LIPOConfig(validation_size=nvalid)  # the CPU defaults (the old "cpu" preset)
    if args.gp_input:
        config = config.replace(gp_input=args.gp_input)
    if args.invbo_race_alpha is not None:
        config = config.replace(invbo_race_alpha=args.invbo_race_alpha)
    if args.invbo_rank is not None:
        config = config.replace(invbo_rank=args.invbo_rank)
    if args.gp_fidelity is not None:
        config = config.replace(gp_fidelity=args.gp_fidelity)
    if args.invbo_select is None:
        args.invbo_select = {"acquisition": "acq", "union": "union"}.get(config.inversion_select, "nearest")
    t0 = time.time()
    pool, outcomes = build_table(n, nvalid, args.table_seed)
    true_error = outcomes.mean(1)
    threshold = float(np.quantile(true_error, 0.01))
    full_budget = n * nvalid
    horizon = int(horizon_frac * full_budget)
    encoder = GTRInstructionEncoder(config.encoder_model)
    embeddings = encoder.encode_batch_tensor(pool)
    vae_config = config.replace(embedding_dim=int(embeddings.shape[1]))
    torch.manual_seed(vae_config.seed)  # the VAE's initialisation: the run is reproducible
    vae = InstructionVAE(vae_config)
    train_vae(vae, embeddings, vae_config, quiet=True)
    quality = vae_quality_metrics(vae, embeddings)
    with torch.no_grad():
        latents = vae.encode_mu(embeddings).double()
    if args.gp_timing_only:
        refresh_gp_timing(latents, true_error, config, n)
        return
    lipo_features = embeddings.double() if config.gp_input == "embedding" else latents
    methods = ("random", "hyperband", "hbbops", "lipo") + (("hbbops_all",) if args.control else ())
    curves: dict[str, list] = {m: [] for m in methods}
    reach: dict[str, list] = {m: [] for m in curves}
    seconds: dict[str, float] = dict.fromkeys(curves, 0.0)
    _TASK.update(outcomes=outcomes, true_error=true_error, nvalid=nvalid, horizon=horizon, config=config,
                 latents=latents, embeddings=embeddings.double(), lipo_features=lipo_features, vae=vae,
                 invbo_steps=args.invbo_steps, invbo_select=args.invbo_select)
    tasks = [(method, seed) for seed in range(args.first_seed, args.first_seed + seeds) for method in curves]
    if args.jobs > 1:  # (method, seed) runs in forked worker processes, one torch thread each
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("fork")) as pool_exec:
            results = list(pool_exec.map(_run_task, tasks))
    else:
        results = [_run_task(task) for task in tasks]
    invbo_counts = {"steps": 0, "from_inversion": 0, "raced_out": 0, "new_incumbents": 0}
    for (name, seed), (curve, elapsed, stats) in zip(tasks, results, strict=True):
        for key, value in stats.items():
            invbo_counts[key] += value
        seconds[name] += elapsed
        curves[name].append(curve)
        reach[name].append(first_reach(curve, threshold, full_budget))
        print(f"seed {seed} {name}: reach {reach[name][-1]} ({elapsed:.0f} s)", file=sys.stderr)
    gp_100 = time_gp(latents, true_error, config, 100)
    gp_1000 = time_gp(latents, true_error, config, min(1000, n))
    gp_1000_baseline = time_gp(latents, true_error, config, min(1000, n), baseline=True)
    heldout = {"fast": gp_heldout(latents, true_error, config, n_train=int(0.8 * n)),
               "baseline": gp_heldout(latents, true_error, config, baseline=True, n_train=int(0.8 * n))}
    print("gp", json.dumps({"n100": gp_100, "n1000": gp_1000, "n1000_baseline": gp_1000_baseline,
                            "heldout": heldout}), file=sys.stderr)
    space = gp_space_heldout(latents, embeddings.double(), true_error, config)
    print("gp space", json.dumps(space), file=sys.stderr)
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

    per_seed = {m: np.array([[at(c, f) for f in grid] for c in curves[m]]) for m in curves}  # (seeds, grid)
    anytime = {m: per_seed[m].mean(0).tolist() for m in curves}
    anytime_se = {m: (per_seed[m].std(0, ddof=1) / np.sqrt(seeds)).tolist() if seeds > 1 else [0.0] * len(grid)
                  for m in curves}
    anytime_summary = {}
    for m in curves:
        auc = per_seed[m].mean(1)  # (seeds,): mean incumbent error over the budget grid = normalised area
        metrics[f"anytime_auc_{m}"] = round(float(auc.mean()), 4)
        anytime_summary[m] = {"auc_mean": float(auc.mean()), "auc_se": float(auc.std(ddof=1) / np.sqrt(seeds))
                              if seeds > 1 else 0.0, "auc_per_seed": auc.tolist()}
    for frac in (0.02, 0.05, 0.1):
        for m in curves:
            values = np.array([at(c, frac) for c in curves[m]])
            metrics[f"anytime_error_at_{int(frac * 100)}pct_{m}"] = round(float(values.mean()), 4)
            anytime_summary[m][f"at_{int(frac * 100)}pct"] = {
                "mean": float(values.mean()), "se": float(values.std(ddof=1) / np.sqrt(seeds)) if seeds > 1 else 0.0,
                "per_seed": values.tolist()}
    # paired comparison (same seed index): how often LIPO's area is below each baseline's
    for m in [name for name in curves if name != "lipo"]:
        diff = per_seed["lipo"].mean(1) - per_seed[m].mean(1)
        metrics[f"anytime_auc_lipo_minus_{m}"] = round(float(diff.mean()), 4)
        anytime_summary["lipo"][f"auc_minus_{m}"] = {
            "mean": float(diff.mean()), "se": float(diff.std(ddof=1) / np.sqrt(seeds)) if seeds > 1 else 0.0,
            "seeds_lipo_lower": int((diff < 0).sum())}
    command = "OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python " + " ".join(shlex.quote(a) for a in sys.argv)
    result = {
        "family": "lipo", "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(note="shared CPU: up to 6 other jobs ran at the same time; one torch thread"),
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
        "anytime_se": anytime_se, "anytime_summary": anytime_summary,
        "gp_space_heldout": space,
        "lipo_settings": {"gp_input": config.gp_input, "gp_fidelity": config.gp_fidelity,
                          "invbo_steps_per_round": args.invbo_steps,
                          "invbo_select": args.invbo_select, "table_seed": args.table_seed,
                          "invbo_steps_run": invbo_counts["steps"],
                          "invbo_from_inversion_neighbours": invbo_counts["from_inversion"],
                          "invbo_race_alpha": config.invbo_race_alpha, "invbo_raced_out": invbo_counts["raced_out"],
                          "invbo_rank": config.invbo_rank, "invbo_new_incumbents": invbo_counts["new_incumbents"],
                          "chosen_on": "table seed 1 (a different APE pool and validation sample)"},
        "wall_s": round(time.time() - t0, 1),
    }
    result["optimiser_seeds"] = list(range(args.first_seed, args.first_seed + seeds))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    rows = [[k, v] for k, v in metrics.items()]
    md = [f"# lipo benchmark ({result['date']})", "",
          f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, no GPU "
          "(shared with other jobs). Command: `" + command + "`", "",
          f"Table: {n} offline-APE instructions x {nvalid} GSM8K questions scored by the SIMULATED task model; "
          f"top-1% error {threshold:.3f} (best {true_error.min():.3f}, median {np.median(true_error):.3f}); "
          f"{seeds} seed(s), horizon {horizon_frac:.0%} of the full-table budget.", "",
          markdown_table(["metric", "value"], rows), "",
          f"Anytime curve, mean +- standard error over {seeds} seeds (incumbent = lowest error measured at full "
          "fidelity, credited with its true error; area = mean over the budget grid 0.5%..12%):", "",
          markdown_table(["method", "error at 2%", "error at 5%", "error at 10%", "area"], [
              [m] + [f"{anytime_summary[m][k]['mean']:.4f} +- {anytime_summary[m][k]['se']:.4f}"
                     for k in ("at_2pct", "at_5pct", "at_10pct")]
              + [f"{anytime_summary[m]['auc_mean']:.4f} +- {anytime_summary[m]['auc_se']:.4f}"] for m in curves]), "",
          "LIPO minus baseline, area, paired by seed: " + "; ".join(
              f"{m} {anytime_summary['lipo'][f'auc_minus_{m}']['mean']:+.4f} +- "
              f"{anytime_summary['lipo'][f'auc_minus_{m}']['se']:.4f} (LIPO lower on "
              f"{anytime_summary['lipo'][f'auc_minus_{m}']['seeds_lipo_lower']}/{seeds} seeds)"
              for m in curves if m != "lipo"), "",
          "GP held-out Spearman (fit on n random table rows): " + ", ".join(
              f"{k} {v['mean']:.2f}" for k, v in space.items()), ""]
    (RESULTS / f"{stem}.md").write_text("\n".join(md))
    plot(grid, anytime, anytime_se, threshold, RESULTS / f"{stem}_anytime.png", seeds)
    if stem == "lipo":
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        plot(grid, anytime, anytime_se, threshold, DOCS_IMG / "lipo_anytime.png", seeds)
    print(json.dumps(metrics, indent=2))


def plot(grid, anytime, anytime_se, threshold, path, seeds):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name, values in anytime.items():
        values, se = np.asarray(values), np.asarray(anytime_se[name])
        line = ax.plot(grid * 100, values, label=name, lw=1.8)[0]
        ax.fill_between(grid * 100, values - se, values + se, color=line.get_color(), alpha=0.15, lw=0)
    ax.axhline(threshold, color="k", ls="--", lw=1, label="top-1% error")
    ax.set_xlabel("budget (% of evaluating the whole table)")
    ax.set_ylabel(f"true error of the incumbent (mean of {seeds} seeds, +-1 s.e.)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
