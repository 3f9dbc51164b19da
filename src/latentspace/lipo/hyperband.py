"""`LIPOHyperband`: Hyperband over the instruction pool with BO proposals (HbBoPs-style), multi-fidelity cache.

Schedule (the seed's formulas): r = nvalid / bmin, smax = floor(log r / log eta), B = (smax + 1) * nvalid.
For each bracket s = smax .. 0: n = ceil((B / nvalid) * eta^s / (s + 1)) instructions; stage i = 0..s keeps
n_i = floor(n * eta^-i) of them and evaluates each on b_i validation questions, where
b_i = bmin * eta^(i + smax - s) (capped at nvalid): in the most exploratory bracket s = smax this is the
seed's b_i = bmin * eta^i, and every bracket's last stage reaches full fidelity, as in Hyperband.

A bracket's n instructions are proposed one by one: with probability `random_interleaving_prob` a random
unevaluated instruction, otherwise the unevaluated instruction of highest LogEI under the GP, which is
trained only on instructions evaluated at >= min_fidelity_pct * nvalid questions (their highest fidelity), or,
with gp_fidelity="all", on every evaluated instruction at its highest fidelity f, with the binomial noise of an
error measured on f of the nvalid questions as known observation noise (`binomial_error_variance`).

`EvaluationCache` keys errors by (instruction_id, fidelity); asking for a higher fidelity evaluates only the
questions not yet seen and combines: total = (prev_error * prev_f + new_error * (f - prev_f)) / f.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..core.progress import progress_bar
from .gp import GPWithEI

log = logging.getLogger("latentspace")


@dataclass
class Stage:
    n_keep: int  # n_i: instructions evaluated at this stage
    fidelity: int  # b_i: validation questions per instruction


@dataclass
class Bracket:
    s: int
    n: int
    stages: list[Stage]


def hyperband_schedule(nvalid: int, bmin: int, eta: float) -> list[Bracket]:
    """The brackets s = smax .. 0 with their stages (n_i, b_i), per the module docstring."""
    r = nvalid / bmin
    smax = int(math.floor(math.log(r) / math.log(eta) + 1e-9))
    budget = (smax + 1) * nvalid
    brackets = []
    for s in range(smax, -1, -1):
        n = int(math.ceil((budget / nvalid) * eta**s / (s + 1)))
        stages = []
        for i in range(s + 1):
            n_i = max(1, int(math.floor(n * eta ** (-i))))
            b_i = min(nvalid, int(round(bmin * eta ** (i + smax - s))))
            stages.append(Stage(n_i, b_i))
        stages[-1].fidelity = nvalid  # the last stage of every bracket is full fidelity
        brackets.append(Bracket(s, n, stages))
    return brackets


class EvaluationCache:
    """Errors by (instruction_id, fidelity), extended from the highest lower fidelity already evaluated.

    Args:
        evaluate_range: fn(instruction_id, start, stop) -> error rate on validation questions [start, stop).
    """

    def __init__(self, evaluate_range: Callable[[int, int, int], float]):
        self.evaluate_range = evaluate_range
        self.errors: dict[tuple[int, int], float] = {}
        self.calls = 0  # questions evaluated = LLM calls

    def highest(self, instruction_id: int) -> tuple[int, float] | None:
        """(fidelity, error) of the highest fidelity evaluated for an instruction, or None."""
        found = [(f, e) for (i, f), e in self.errors.items() if i == instruction_id]
        return max(found) if found else None

    def evaluate(self, instruction_id: int, fidelity: int) -> float:
        key = (instruction_id, fidelity)
        if key in self.errors:
            return self.errors[key]
        lower = [(f, e) for (i, f), e in self.errors.items() if i == instruction_id and f < fidelity]
        prev_f, prev_error = max(lower) if lower else (0, 0.0)
        new_error = self.evaluate_range(instruction_id, prev_f, fidelity)
        self.calls += fidelity - prev_f
        total = (prev_error * prev_f + new_error * (fidelity - prev_f)) / fidelity
        self.errors[key] = total
        return total


def binomial_error_variance(error: torch.Tensor, fidelity: torch.Tensor, nvalid: int) -> torch.Tensor:
    """Noise variance of an error rate measured on `fidelity` of the `nvalid` validation questions, as an estimate
    of the error on all nvalid: p (1 - p) / f * (nvalid - f) / (nvalid - 1) (sampling without replacement; 0 at
    f = nvalid), with p = (k + 1) / (f + 2) for k wrong answers (the Laplace estimate, nonzero at 0/f and f/f).

    error, fidelity: (N,) tensors; returns (N,).
    """
    f = fidelity.to(torch.float64)
    p = ((error.to(torch.float64) * f).round() + 1.0) / (f + 2.0)
    return p * (1.0 - p) / f * (nvalid - f).clamp_min(0.0) / max(nvalid - 1, 1)


@dataclass
class HyperbandResult:
    best_id: int
    best_error: float
    llm_calls: int
    history: list[dict] = field(default_factory=list)  # {"llm_calls", "best_error", "best_id"} after each stage


class LIPOHyperband:
    """Hyperband with BO proposals over a fixed pool of instructions.

    Args:
        features: (N, D) GP inputs of the pool (VAE latents for LIPO; raw embeddings for HbBoPs).
        evaluate_range: fn(instruction_id, start, stop) -> error on validation questions [start, stop).
        nvalid, bmin, eta, random_interleaving_prob, min_fidelity_pct: the seed's Hyperband settings.
        gp_settings: {"epochs", "lr", "patience"} of each GP fit (config.for_hyperband_gp()).
        use_bo: False gives plain Hyperband (random proposals only).
        gp_factory: fn() -> GPWithEI (default: a fresh deep-kernel GP on D inputs).
        cache: an EvaluationCache to share between runs (default: a new one).
        gp_fidelity: "high" (the seed): the GP sees instructions evaluated at >= min_fidelity_pct * nvalid; "all":
            every evaluated instruction at its highest fidelity, with binomial observation noise.
    """

    def __init__(self, features: torch.Tensor, evaluate_range: Callable[[int, int, int], float], nvalid: int,
                 bmin: int = 10, eta: float = 2.0, random_interleaving_prob: float = 0.1,
                 min_fidelity_pct: float = 0.75, gp_settings: dict | None = None, use_bo: bool = True,
                 gp_factory: Callable[[], GPWithEI] | None = None, cache: EvaluationCache | None = None,
                 seed: int = 0, min_gp_points: int = 4, gp_fidelity: str = "high"):
        if gp_fidelity not in ("high", "all"):
            raise ValueError(f"gp_fidelity must be high or all, got {gp_fidelity!r}")
        self.gp_fidelity = gp_fidelity
        self.features = torch.as_tensor(features, dtype=torch.float64)
        self.nvalid, self.bmin, self.eta = nvalid, bmin, eta
        self.random_interleaving_prob = random_interleaving_prob
        self.min_fidelity_pct = min_fidelity_pct
        self.gp_settings = gp_settings or {"epochs": 3000, "lr": 0.01, "patience": 50}
        self.use_bo = use_bo
        self.gp_factory = gp_factory or (lambda: GPWithEI(self.features.shape[1], seed=seed))
        self.cache = cache or EvaluationCache(evaluate_range)
        self.rng = random.Random(seed)
        self.min_gp_points = min_gp_points
        self.gp: GPWithEI | None = None
        self.history: list[dict] = []
        self.schedule = hyperband_schedule(nvalid, bmin, eta)

    @property
    def pool_size(self) -> int:
        return self.features.shape[0]

    def high_fidelity_data(self) -> tuple[list[int], list[float]]:
        """Instructions whose highest fidelity is >= min_fidelity_pct * nvalid, with that error."""
        threshold = self.min_fidelity_pct * self.nvalid
        ids, errors = [], []
        for i in sorted({i for i, _ in self.cache.errors}):
            f, e = self.cache.highest(i)
            if f >= threshold:
                ids.append(i)
                errors.append(e)
        return ids, errors

    def gp_data(self) -> tuple[list[int], list[float], list[float]]:
        """What the GP is trained on: (ids, errors, noise variances): high_fidelity_data with zero noise, or with
        gp_fidelity="all" every evaluated instruction at its highest fidelity with its binomial noise."""
        if self.gp_fidelity == "high":
            ids, errors = self.high_fidelity_data()
            return ids, errors, [0.0] * len(ids)
        ids = sorted({i for i, _ in self.cache.errors})
        highest = [self.cache.highest(i) for i in ids]
        fidelities = torch.tensor([f for f, _ in highest], dtype=torch.float64)
        errors = torch.tensor([e for _, e in highest], dtype=torch.float64)
        return ids, errors.tolist(), binomial_error_variance(errors, fidelities, self.nvalid).tolist()

    def incumbent(self) -> tuple[int, float] | None:
        """The best instruction at full fidelity so far: (id, error)."""
        full = [(e, i) for (i, f), e in self.cache.errors.items() if f >= self.nvalid]
        if not full:
            return None
        e, i = min(full)
        return i, e

    def fit_gp(self) -> bool:
        ids, errors, variances = self.gp_data()
        if len(ids) < self.min_gp_points:
            return False
        self.gp = self.gp_factory()
        self.gp.set_data(self.features[ids], torch.tensor(errors), torch.tensor(variances))
        self.gp.fit(**self.gp_settings)
        return True

    def propose(self, n: int, exclude: set[int]) -> list[int]:
        """n distinct instruction ids: random interleaving or argmax LogEI over unevaluated instructions."""
        evaluated = {i for i, _ in self.cache.errors}
        candidates = [i for i in range(self.pool_size) if i not in exclude and i not in evaluated]
        if not candidates:
            candidates = [i for i in range(self.pool_size) if i not in exclude]
        n = min(n, len(candidates))
        gp_ready = self.use_bo and self.fit_gp()
        scores = None
        if gp_ready:
            with torch.no_grad():
                scores = self.gp.log_ei(self.features[candidates]).tolist()
        chosen: list[int] = []
        remaining = dict(zip(candidates, scores, strict=True)) if scores is not None else dict.fromkeys(candidates, 0.0)
        while len(chosen) < n:
            if scores is None or self.rng.random() < self.random_interleaving_prob:
                pick = self.rng.choice(list(remaining))
            else:
                pick = max(remaining, key=remaining.get)
            chosen.append(pick)
            del remaining[pick]
        return chosen

    def _record(self) -> None:
        inc = self.incumbent()
        self.history.append({"llm_calls": self.cache.calls, "best_error": inc[1] if inc else None,
                             "best_id": inc[0] if inc else None})

    def run_bracket(self, bracket: Bracket) -> None:
        """Successive halving on n proposed instructions: evaluate at b_i, keep the best n_{i+1}."""
        current = self.propose(bracket.n, exclude=set())
        for i, stage in enumerate(bracket.stages):
            current = current[: stage.n_keep]
            errors = {idx: self.cache.evaluate(idx, stage.fidelity) for idx in current}
            current = sorted(current, key=lambda idx: (errors[idx], idx))
            self._record()
            log.debug("bracket %d stage %d: %d instructions at %d questions", bracket.s, i, len(current),
                      stage.fidelity)

    def run(self, quiet: bool = True, max_calls: int | None = None) -> HyperbandResult:
        """All brackets (or until `max_calls` questions have been evaluated)."""
        with progress_bar(quiet, unit="bracket") as bar:
            task = bar.add_task("Hyperband", total=len(self.schedule), info="")
            for bracket in self.schedule:
                if max_calls is not None and self.cache.calls >= max_calls:
                    break
                self.run_bracket(bracket)
                inc = self.incumbent()
                bar.update(task, advance=1, info=f"best {inc[1]:.3f}" if inc else "")
        inc = self.incumbent()
        if inc is None:
            raise RuntimeError("Hyperband finished without a full-fidelity evaluation")
        return HyperbandResult(inc[0], inc[1], self.cache.calls, list(self.history))


def race_fidelities(nvalid: int, bmin: int, eta: float, min_fidelity_pct: float) -> list[int]:
    """Screening fidelities of a racing evaluation: bmin eta^i for i >= 1, below the GP's min_fidelity_pct * nvalid."""
    out, i = [], 1
    while (f := int(round(bmin * eta**i))) < min_fidelity_pct * nvalid:
        out.append(f)
        i += 1
    return out


def race_to_full(evaluate_at: Callable[[int], float], nvalid: int, incumbent_error: float, fidelities: list[int],
                 alpha: float) -> tuple[float, int, bool]:
    """Evaluate one instruction at growing fidelities; stop early once it is significantly worse than the incumbent.

    At each screening fidelity f (questions) with k wrong answers, one-sided binomial test of "its true error is at
    most the incumbent's": stop when P(X >= k | f, incumbent_error) < alpha. Otherwise continue, finally to nvalid.
    evaluate_at(f) -> error at f questions (an EvaluationCache extends lower fidelities, so a survivor costs nvalid
    in all). Returns (error at the fidelity reached, that fidelity, stopped early).
    """
    from scipy.stats import binom

    p = min(max(float(incumbent_error), 1e-3), 1.0 - 1e-3)
    for f in fidelities:
        if f >= nvalid:
            break
        error = float(evaluate_at(f))
        wrong = int(round(error * f))
        if binom.sf(wrong - 1, f, p) < alpha:
            return error, f, True
    return float(evaluate_at(nvalid)), nvalid, False

