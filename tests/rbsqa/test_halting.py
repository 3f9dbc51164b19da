import random

import pytest
import torch

from latentspace.rbsqa.config import RBSQAConfig
from latentspace.rbsqa.data import encode_document, generate_fact_paragraphs, long_documents, parse_squad
from latentspace.rbsqa.halting import answer_without_tracker, read_document
from latentspace.rbsqa.model import RBSQAModel


@pytest.fixture(scope="module")
def model_and_doc():
    config = RBSQAConfig.preset("tiny")
    torch.manual_seed(0)
    model = RBSQAModel(config).eval()
    base = parse_squad(generate_fact_paragraphs(6, random.Random(0)))
    doc = encode_document(long_documents(base[:1], 3, random.Random(0), pool_docs=base)[0], model.tokenizer, config)
    return model, doc


def test_trajectory_records_every_segment(model_and_doc):
    model, doc = model_and_doc
    traj = read_document(model, doc, halt=False)
    assert traj.segments_read == traj.num_segments == doc.num_segments and traj.halted_at is None
    assert [s.segment for s in traj.steps] == list(range(doc.num_segments))
    assert traj.answer_span == model.tracker.belief.best_span
    assert traj.revisions == [s.segment for s in traj.steps if s.revised]
    assert len(traj.revisions) == model.tracker.belief.revision_count
    for step in traj.steps:
        assert 0.0 <= step.confidence <= 1.0 and step.candidate_text == doc.span_text(step.candidate_span)
    assert traj.tracker_seconds > 0 and traj.bytes > 0


def test_halting_stops_at_the_first_confident_segment(model_and_doc):
    model, doc = model_and_doc
    tracker = model.tracker
    old = tracker.confidence_threshold
    try:
        tracker.confidence_threshold = 0.0
        traj = read_document(model, doc, halt=True)
        assert traj.segments_read == 1 and traj.halted_at == 0 and traj.steps[-1].halted
        tracker.confidence_threshold = 1.0
        assert read_document(model, doc, halt=True).segments_read == doc.num_segments
    finally:
        tracker.confidence_threshold = old


def test_baseline_is_the_best_scoring_span_over_all_segments(model_and_doc):
    model, doc = model_and_doc
    traj = read_document(model, doc)
    span, text, _ = answer_without_tracker(model, doc)
    best = max(traj.steps, key=lambda s: s.candidate_score)
    assert span == best.candidate_span and text == best.candidate_text


def test_halts_needs_confidence_and_no_falling_trend():
    from latentspace.rbsqa.belief import halts

    assert not halts([], 0.5) and not halts([0.9, 0.4], 0.5)
    assert halts([0.2, 0.6], 0.5) and halts([0.95, 0.9, 0.8], 0.7)
    assert not halts([1.0, 0.9, 0.5], 0.5) and halts([1.0, 0.9, 0.5], 0.5, trend_analysis=False)


def test_fitted_halting_threshold_trades_segments_for_f1(model_and_doc):
    """A loose F1 tolerance lets halting stop early; an impossible one keeps reading everything."""
    from latentspace.rbsqa.train import fit_halting_threshold

    model, doc = model_and_doc
    tracker = model.tracker
    saved = (tracker.confidence_threshold, model.config.belief_state_threshold)
    try:
        with torch.no_grad():
            tracker.confidence_bias.fill_(6.0)  # every belief is confident
        loose = fit_halting_threshold(model, [doc], None, tolerance=1.0)
        assert loose["halting_threshold"] == tracker.confidence_threshold == model.config.belief_state_threshold
        assert loose["val_segments_read_frac_halting"] == pytest.approx(1 / doc.num_segments)
        assert read_document(model, doc, halt=True).segments_read == 1
        strict = fit_halting_threshold(model, [doc], None, tolerance=-1.0)
        assert strict["halting_threshold"] > 1.0 and strict["val_segments_read_frac_halting"] == 1.0
    finally:
        with torch.no_grad():
            tracker.confidence_bias.fill_(0.0)
        tracker.confidence_threshold, model.config.belief_state_threshold = saved
