import numpy as np
import pytest
import torch

from latentspace.rbsqa.halting import confidence_slope, halts
from latentspace.rbsqa.reading import read_document


def test_halts_needs_confidence_and_no_falling_trend():
    assert not halts([], 0.5) and not halts([0.9, 0.4], 0.5)
    assert halts([0.2, 0.6], 0.5) and halts([0.95, 0.9, 0.8], 0.7)
    assert not halts([1.0, 0.9, 0.5], 0.5) and halts([1.0, 0.9, 0.5], 0.5, trend_analysis=False)
    assert not halts([0.2, 0.9], 0.5, stable_for=1, stable_segments=2)
    assert halts([0.9, 0.9], 0.5, stable_for=2, stable_segments=2)


def test_confidence_slope_is_the_least_squares_slope():
    assert confidence_slope([]) == confidence_slope([0.7]) == 0.0
    for history in ([0.2, 0.6], [0.9, 0.5, 0.8], [0.1, 0.4, 0.35, 0.9, 0.7]):
        expected = np.polyfit(np.arange(len(history)), history, 1)[0]
        assert confidence_slope(history) == pytest.approx(expected)


def test_hoeffding_bentkus_p_value_needs_enough_documents():
    from latentspace.rbsqa.train import hoeffding_bentkus_p_value

    # no loss on n documents: p = (1 - alpha)^n (Chernoff form); 50 documents certify nothing at 1 point
    assert hoeffding_bentkus_p_value(0.0, 50, 0.01) == pytest.approx(0.99 ** 50)
    assert hoeffding_bentkus_p_value(0.0, 50, 0.01) > 0.5
    assert hoeffding_bentkus_p_value(0.0, 1000, 0.01) < 1e-4
    assert hoeffding_bentkus_p_value(0.003, 1000, 0.01) < 0.05 < hoeffding_bentkus_p_value(0.006, 1000, 0.01)
    assert hoeffding_bentkus_p_value(0.02, 1000, 0.01) == 1.0  # the observed risk is above the budget


def test_risk_controlled_selection_stops_at_the_first_uncertified_threshold():
    from latentspace.rbsqa.train import select_halting_threshold

    n = 1000
    # loss rate by threshold: 0 at 0.9 and above, 0.2 % at 0.8, 3 % at 0.7, and (non-monotone) 0 again at 0.6
    rates = {0.95: 0.0, 0.9: 0.0, 0.8: 0.002, 0.7: 0.03, 0.6: 0.0}

    def losses_at(threshold):
        bad = round(rates[threshold] * n)
        return [1.0] * bad + [0.0] * (n - bad)

    threshold, p = select_halting_threshold(losses_at, list(rates), alpha=0.01, delta=0.05)
    assert threshold == 0.8 and p < 0.05  # 0.6 is never reached: fixed-sequence testing stops at 0.7
    threshold, _ = select_halting_threshold(losses_at, list(rates), alpha=0.01, delta=1e-9)
    assert threshold is None  # nothing certified at an absurd confidence: read everything


def test_fitted_halting_threshold_trades_segments_for_f1(model_and_doc):
    """A loose F1 tolerance lets halting stop early; an impossible one keeps reading everything."""
    from latentspace.rbsqa.train import fit_halting_threshold

    model, doc = model_and_doc
    tracker = model.tracker
    saved = (tracker.confidence_threshold, model.config.belief_state_threshold)
    tracker.stable_segments = 1
    try:
        with torch.no_grad():
            tracker.confidence_bias.fill_(6.0)  # every belief is confident
        # risk control on one document certifies no threshold: read everything
        assert fit_halting_threshold(model, [doc], None)["val_segments_read_frac_halting"] == 1.0
        loose = fit_halting_threshold(model, [doc], None, tolerance=1.0, method="empirical")
        assert loose["halting_threshold"] == tracker.confidence_threshold == model.config.belief_state_threshold
        assert loose["val_segments_read_frac_halting"] == pytest.approx(1 / doc.num_segments)
        assert read_document(model, doc, halt=True).segments_read == 1
        strict = fit_halting_threshold(model, [doc], None, tolerance=-1.0, method="empirical")
        assert strict["halting_threshold"] > 1.0 and strict["val_segments_read_frac_halting"] == 1.0
    finally:
        with torch.no_grad():
            tracker.confidence_bias.fill_(0.0)
        tracker.confidence_threshold, model.config.belief_state_threshold = saved
        tracker.stable_segments = model.config.halting_stable_segments
