import math
import random

import pytest
import torch

from latentspace.lipo.hyperband import EvaluationCache, LIPOHyperband, hyperband_schedule


@pytest.mark.parametrize(("nvalid", "bmin", "eta"), [(200, 10, 2.0), (270, 10, 3.0), (1319, 10, 2.0), (40, 10, 2.0)])
def test_schedule_matches_the_seed_formulas(nvalid, bmin, eta):
    brackets = hyperband_schedule(nvalid, bmin, eta)
    smax = math.floor(math.log(nvalid / bmin) / math.log(eta))
    budget = (smax + 1) * nvalid
    assert [b.s for b in brackets] == list(range(smax, -1, -1))
    for bracket in brackets:
        s = bracket.s
        assert bracket.n == math.ceil((budget / nvalid) * eta**s / (s + 1))
        assert [st.n_keep for st in bracket.stages] == [max(1, math.floor(bracket.n * eta**-i)) for i in range(s + 1)]
        fidelities = [st.fidelity for st in bracket.stages]
        assert fidelities[-1] == nvalid
        assert fidelities[:-1] == [min(nvalid, round(bmin * eta ** (i + smax - s))) for i in range(s)]
    # the most exploratory bracket starts at bmin and grows as bmin * eta^i
    assert [st.fidelity for st in brackets[0].stages][:-1] == [round(bmin * eta**i) for i in range(smax)]


def test_exact_schedule_for_eta_3():
    first = hyperband_schedule(270, 10, 3.0)[0]
    assert first.n == 27
    assert [(st.n_keep, st.fidelity) for st in first.stages] == [(27, 10), (9, 30), (3, 90), (1, 270)]


def test_cache_extends_from_lower_fidelity():
    outcomes = {7: [i % 3 == 0 for i in range(100)]}
    asked = []

    def evaluate_range(i, start, stop):
        asked.append((i, start, stop))
        return sum(outcomes[i][start:stop]) / (stop - start)

    cache = EvaluationCache(evaluate_range)
    e10 = cache.evaluate(7, 10)
    e40 = cache.evaluate(7, 40)
    assert asked == [(7, 0, 10), (7, 10, 40)]
    assert e40 == pytest.approx(sum(outcomes[7][:40]) / 40)
    assert e40 == pytest.approx((e10 * 10 + sum(outcomes[7][10:40]) / 30 * 30) / 40)
    assert cache.evaluate(7, 40) == e40 and len(asked) == 2  # cached
    assert cache.calls == 40 and cache.highest(7) == (40, e40)


def _pool(n=120, nvalid=80, seed=0):
    """Instructions with features; true error depends smoothly on the features; outcomes per question fixed."""
    g = torch.Generator().manual_seed(seed)
    features = torch.rand(n, 4, generator=g, dtype=torch.float64)
    p_err = 0.1 + 0.8 * ((features[:, :2] - 0.7) ** 2).sum(-1).clamp(max=1.0)
    rng = random.Random(seed)
    outcomes = [[rng.random() < float(p) for _ in range(nvalid)] for p in p_err]
    true = torch.tensor([sum(o) / nvalid for o in outcomes])
    return features, outcomes, true


def test_hyperband_with_bo_finds_a_good_instruction_and_trains_gp_on_high_fidelity_only():
    features, outcomes, true = _pool()
    hb = LIPOHyperband(features, lambda i, a, b: sum(outcomes[i][a:b]) / (b - a), nvalid=80, bmin=10, eta=2.0,
                       gp_settings={"epochs": 40, "lr": 0.02, "patience": 10}, seed=0)
    result = hb.run()
    assert result.llm_calls == hb.cache.calls > 0
    assert result.best_error == pytest.approx(float(true[result.best_id]))
    assert float(true[result.best_id]) <= float(true.quantile(0.2))
    ids, errors = hb.high_fidelity_data()
    assert all(hb.cache.highest(i)[0] >= 0.75 * 80 for i in ids)
    # the last GP fit (before the last bracket) saw only instructions evaluated at high fidelity
    assert hb.gp is not None and 4 <= hb.gp.n <= len(ids)
    high = {tuple(features[i].tolist()) for i in ids}
    assert all(tuple(row.tolist()) in high for row in hb.gp.X)
    assert [h["llm_calls"] for h in result.history] == sorted(h["llm_calls"] for h in result.history)


def test_plain_hyperband_uses_random_proposals_and_max_calls():
    features, outcomes, _ = _pool(n=60, nvalid=40)
    hb = LIPOHyperband(features, lambda i, a, b: sum(outcomes[i][a:b]) / (b - a), nvalid=40, bmin=10, eta=2.0,
                       use_bo=False, seed=1)
    result = hb.run(max_calls=100)
    assert hb.gp is None and result.llm_calls >= 100
    assert len(hyperband_schedule(40, 10, 2.0)) > 1


def test_race_to_full_stops_a_clearly_worse_instruction_and_lets_a_good_one_through():
    from latentspace.lipo.hyperband import race_fidelities, race_to_full

    assert race_fidelities(200, 10, 2.0, 0.75) == [20, 40, 80]  # below the GP's 150 questions
    rates = {0: 0.5, 1: 0.08}  # instruction 0 is far worse than the incumbent (0.1), 1 is better
    cache = EvaluationCache(lambda i, a, b: sum((q * 37 % 100) < 100 * rates[i] for q in range(a, b)) / (b - a))
    error, fidelity, stopped = race_to_full(lambda f: cache.evaluate(0, f), 200, 0.1, [20, 40, 80], alpha=0.05)
    assert stopped and fidelity == 20 and cache.calls == 20 and error >= 0.3
    error, fidelity, stopped = race_to_full(lambda f: cache.evaluate(1, f), 200, 0.1, [20, 40, 80], alpha=0.05)
    assert not stopped and fidelity == 200 and cache.calls == 20 + 200  # lower fidelities extended, not repeated
    assert abs(error - cache.evaluate(1, 200)) < 1e-12
    # alpha 0 never stops
    assert race_to_full(lambda f: cache.evaluate(0, f), 200, 0.1, [20, 40, 80], alpha=0.0)[2] is False


def test_binomial_error_variance():
    from latentspace.lipo.hyperband import binomial_error_variance

    err = torch.tensor([0.0, 0.3, 0.3, 0.25])
    f = torch.tensor([10, 10, 40, 200])
    var = binomial_error_variance(err, f, 200)
    # p = (k + 1) / (f + 2); p (1 - p) / f * (N - f) / (N - 1)
    p0, p1, p2 = 1 / 12, 4 / 12, 13 / 42
    expected = [p0 * (1 - p0) / 10 * 190 / 199, p1 * (1 - p1) / 10 * 190 / 199, p2 * (1 - p2) / 40 * 160 / 199, 0.0]
    assert torch.allclose(var, torch.tensor(expected, dtype=torch.float64))
    assert var[0] > 0 and var[1] > var[2] > var[3] == 0  # never zero below full fidelity, shrinking with questions


def test_gp_on_all_fidelities_starts_early_and_weights_by_noise():
    features, outcomes, true = _pool()
    evaluate = lambda i, a, b: sum(outcomes[i][a:b]) / (b - a)  # noqa: E731
    hb = LIPOHyperband(features, evaluate, nvalid=80, bmin=10, eta=2.0,
                       gp_settings={"epochs": 40, "lr": 0.02, "patience": 10}, seed=0, gp_fidelity="all")
    first = hb.schedule[0]
    for i in hb.propose(first.n, exclude=set()):  # one screening stage: no full-fidelity point exists yet
        hb.cache.evaluate(i, first.stages[0].fidelity)
    assert hb.high_fidelity_data()[0] == []
    ids, errors, variances = hb.gp_data()
    assert len(ids) == first.n and all(v > 0 for v in variances)
    assert hb.fit_gp() and hb.gp.noisy and hb.gp.n == first.n  # the seed's rule would have no GP here
    result = hb.run()
    assert float(true[result.best_id]) <= float(true.quantile(0.2))
    ids, errors, variances = hb.gp_data()
    for i, v in zip(ids, variances, strict=True):
        assert (v == 0.0) == (hb.cache.highest(i)[0] == 80)
    with pytest.raises(ValueError, match="gp_fidelity"):
        LIPOHyperband(features, evaluate, nvalid=80, gp_fidelity="low")
