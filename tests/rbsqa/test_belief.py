import math

import pytest
import torch

from latentspace.core.errors import ConfigError
from latentspace.rbsqa.belief import (
    BeliefState,
    BeliefStateTracker,
    SpanCandidate,
    best_span_scores,
    best_span_scores_reference,
    expected_calibration_error,
    fit_temperature,
)

from .conftest import context, logits

NEG = float("-inf")


def test_belief_state_initialization():
    tracker = BeliefStateTracker(context_dim=8)
    b = tracker.belief
    assert (b.best_span, b.confidence, b.segment_id, b.revision_count, b.total_segments) == (None, 0.0, -1, 0, 0)
    assert b.span_history == [] and b.confidence_history == []
    assert tracker.confidence_scaler.item() == 1.0 and tracker.confidence_bias.item() == 0.0
    assert tracker.re_score_network is None
    learned = BeliefStateTracker(re_scoring_method="learned", context_dim=384)
    assert learned.re_score_network[0].in_features == 768  # GMM context dim + span features, as in the seed
    with pytest.raises(ConfigError):
        BeliefStateTracker(re_scoring_method="vote")


def test_span_extraction_accuracy():
    tracker = BeliefStateTracker(context_dim=8, max_answer_len=3)
    cand = tracker.extract_best_span(logits(10, {(3, 4): 6.0, (7, 7): 2.0}), segment_id=2, global_offset=100)
    assert cand.span == (102, 103)  # index 1 is the segment's first token = global 100
    assert cand.segment_id == 2
    assert cand.score == pytest.approx(6.0)
    assert cand.confidence == pytest.approx(1 / (1 + math.exp(-6.0)), rel=1e-5)


def test_batched_span_search_matches_reference():
    gen = torch.Generator().manual_seed(0)
    start, end = torch.randn(16, 12, generator=gen), torch.randn(16, 12, generator=gen)
    start[:, 9:] = NEG
    end[:, 9:] = NEG
    for max_len in (1, 3, 12):
        fast, slow = best_span_scores(start, end, max_len), best_span_scores_reference(start, end, max_len)
        for a, b in zip(fast, slow, strict=True):
            assert torch.allclose(a.float(), b.float())
        assert bool(((fast[1] - fast[0]) < max_len).all() and (fast[1] >= fast[0]).all() and (fast[0] >= 1).all())


def test_confidence_calibration():
    torch.manual_seed(0)
    z = torch.randn(4000) * 4  # an over-confident scorer: the truth follows sigmoid(z / 3 - 0.5)
    correct = (torch.rand(4000) < torch.sigmoid(z / 3 - 0.5)).float()
    tracker = BeliefStateTracker(context_dim=8)
    before = expected_calibration_error(tracker.calibrate(z).detach(), correct)
    info = fit_temperature(tracker, z, correct)
    after = expected_calibration_error(tracker.calibrate(z).detach(), correct)
    assert info["temperature"] == pytest.approx(3.0, rel=0.15) and info["bias"] == pytest.approx(-0.5, abs=0.15)
    assert after < 0.03 < before and info["nll_after"] < info["nll_before"]
    start, end = logits(6, {(2, 2): 3.0})
    expected = torch.sigmoid(torch.tensor(3.0) / tracker.temperature + tracker.confidence_bias).item()
    assert tracker.compute_confidence(start, end, 2, 2) == pytest.approx(expected, rel=1e-5)
    off = BeliefStateTracker(context_dim=8, confidence_calibration=False)
    off.log_temperature.data.fill_(2.0)
    assert off.compute_confidence(start, end, 2, 2) == pytest.approx(torch.sigmoid(torch.tensor(3.0)).item())


def test_expected_calibration_error_known_values():
    assert expected_calibration_error(torch.tensor([0.9, 0.9]), torch.tensor([1.0, 1.0])) == pytest.approx(0.1)
    assert expected_calibration_error(torch.tensor([0.25, 0.75]), torch.tensor([0.0, 1.0])) == pytest.approx(0.25)


def test_non_monotonic_revision():
    tracker = BeliefStateTracker(context_dim=8)
    ctx = context(0)
    tracker.update_belief(logits(8, {(2, 3): 4.0}, null=0.0), 0, ctx, global_offset=0)
    assert tracker.belief.best_span == (1, 2) and tracker.belief.revision_count == 0
    # a segment whose best span is weak: the old belief is kept (same context: not weakened)
    tracker.update_belief(logits(8, {(5, 5): -3.0}, null=0.0), 1, ctx, global_offset=6)
    assert tracker.belief.best_span == (1, 2) and tracker.belief.segment_id == 0
    # a stronger span later revises the belief: non-monotonic
    tracker.update_belief(logits(8, {(4, 4): 6.0}, null=0.0), 2, ctx, global_offset=12)
    b = tracker.belief
    assert b.best_span == (15, 15) and b.segment_id == 2 and b.revision_count == 1 and b.total_segments == 3
    assert len(b.span_history) == 3 and len(b.confidence_history) == 3
    assert b.confidence_history[-1] == pytest.approx(torch.sigmoid(torch.tensor(6.0)).item(), rel=1e-5)


def test_re_scoring_with_new_context():
    tracker = BeliefStateTracker(context_dim=8)
    old = SpanCandidate((3, 4), 0.8, 0, 0, context_vector=context(0).mean(0))
    same, orthogonal, opposite = (tracker.re_score_past_spans([old], c)[0].confidence
                                  for c in (context(0), context(1), -context(0)))
    assert same == pytest.approx(0.8) and orthogonal == pytest.approx(0.4) and opposite == pytest.approx(0.0)
    assert old.confidence == 0.8  # re-scoring returns new candidates
    # with re-scoring, a changed context lets a weaker new span revise a confident old belief
    for rescore, expected in ((True, (10, 10)), (False, (1, 1))):
        t = BeliefStateTracker(context_dim=8, enable_re_scoring=rescore)
        t.update_belief(logits(6, {(2, 2): 3.0}), 0, context(0), 0)
        t.update_belief(logits(6, {(1, 1): 2.0}), 1, context(1), 10)
        assert t.belief.best_span == expected
    learned = BeliefStateTracker(context_dim=8, re_scoring_method="learned")
    emb = torch.randn(8)
    cand = SpanCandidate((1, 1), 0.9, 0, 0, span_embedding=emb)
    ctx = context(2)
    weight = learned.re_score_network(torch.cat([emb, ctx.mean(0)])).item()
    assert learned.re_score_past_spans([cand], ctx)[0].confidence == pytest.approx(0.9 * weight, rel=1e-5)
    # graceful degradation: a span without an embedding keeps its confidence
    assert learned.re_score_past_spans([SpanCandidate((1, 1), 0.6, 0, 0)], ctx)[0].confidence == 0.6


def test_should_halt_and_reset():
    tracker = BeliefStateTracker(context_dim=8, confidence_threshold=0.7)
    tracker.update_belief(logits(6, {(2, 2): -1.0}), 0, context(0), 0)
    assert not tracker.should_halt()
    tracker.update_belief(logits(6, {(3, 3): 5.0}), 1, context(0), 5)
    assert tracker.should_halt()
    tracker.reset_belief()
    assert tracker.belief.best_span is None and tracker.belief.total_segments == 0


def test_span_history_is_truncated_and_state_round_trips():
    tracker = BeliefStateTracker(context_dim=8, max_segments=3)
    for s in range(5):
        tracker.update_belief(logits(6, {(2, 2): float(s)}), s, context(s % 8), 10 * s,
                              token_states=torch.randn(6, 8))
    b = tracker.belief
    assert len(b.span_history) == 3 and [c.segment_id for c in b.span_history] == [2, 3, 4]
    again = BeliefState.from_dict(b.to_dict())
    assert again.to_dict() == b.to_dict()
    assert 0 < b.nbytes() < 10_000


def test_learned_re_scoring_uses_the_beliefs_span_embedding():
    """Only the belief's candidate gets a span embedding (the mean token state over the span); a new span
    revises a confident old one once the re-scorer says the old one no longer holds."""
    torch.manual_seed(0)
    tracker = BeliefStateTracker(context_dim=8, re_scoring_method="learned")
    states = torch.randn(8, 8)
    tracker.update_belief(logits(8, {(2, 3): 4.0}), 0, context(0), global_offset=0, token_states=states)
    held = tracker.belief.span_history[-1]
    assert torch.allclose(held.span_embedding, states[2:4].mean(0))
    tracker.update_belief(logits(8, {(5, 5): -2.0}), 1, context(0), global_offset=6, token_states=states)
    assert tracker.belief.best_span == (1, 2) and tracker.belief.span_history[-1].span_embedding is None
    # the held span is re-scored from the confidence it was found with, not the already re-scored belief
    weight = tracker.re_score_network(torch.cat([held.span_embedding, context(0).mean(0)])).item()
    assert tracker.belief.confidence == pytest.approx(held.confidence * weight, rel=1e-5)
    last = tracker.re_score_network[2]
    last.weight.data.zero_()
    last.bias.data.fill_(-20.0)  # the re-scorer now says: the old span no longer holds
    tracker.update_belief(logits(8, {(4, 4): 1.0}), 2, context(1), global_offset=12, token_states=states)
    assert tracker.belief.best_span == (15, 15) and tracker.belief.revision_count == 1


def test_history_truncation_keeps_the_held_candidate():
    tracker = BeliefStateTracker(context_dim=8, max_segments=3)
    tracker.update_belief(logits(6, {(2, 2): 8.0}), 0, context(0), global_offset=0)
    for s in range(1, 6):  # weak segments: the first span stays the belief
        tracker.update_belief(logits(6, {(3, 3): -4.0}), s, context(0), global_offset=10 * s)
    history = tracker.belief.span_history
    assert tracker.belief.best_span == (1, 1) and len(history) == 3
    assert history[0].segment_id == 0 and [c.segment_id for c in history[1:]] == [4, 5]


def test_update_belief_agrees_with_the_public_methods():
    """The per-segment path of update_belief gives what extract_best_span and re_score_past_spans give."""
    torch.manual_seed(1)
    tracker = BeliefStateTracker(context_dim=8, re_scoring_method="learned", max_answer_len=3)
    with torch.no_grad():
        tracker.log_temperature.fill_(0.5)
        tracker.confidence_bias.fill_(-0.3)
    kept = revised_away = skipped = 0
    for seg in range(8):
        start, end = torch.randn(10) * (4.0 if seg in (0, 5) else 1.0), torch.randn(10)
        ctx, states = torch.randn(2, 8), torch.randn(10, 8)
        held = next((c for c in reversed(tracker.belief.span_history) if c.span == tracker.belief.best_span), None)
        expected = tracker.extract_best_span((start, end), seg, 10 * seg, ctx)
        revised = None if held is None else tracker.re_score_past_spans([held], ctx)[0].confidence
        previous = tracker.belief.best_span
        belief = tracker.update_belief((start, end), seg, ctx, 10 * seg, token_states=states)
        got = belief.span_history[-1]
        if revised is not None:  # the decision is the re-scored old span against the new one, re-scored or not
            kept_old = revised > expected.confidence
            assert belief.best_span == (previous if kept_old else expected.span)
            skipped += held.confidence <= expected.confidence  # the old span cannot win: not re-scored
        assert (got.span, got.segment_id, got.gmm_context_hash) == (expected.span, seg, expected.gmm_context_hash)
        assert got.confidence == pytest.approx(expected.confidence, rel=1e-6)
        if revised is not None and belief.best_span != got.span:
            assert belief.confidence == pytest.approx(revised, rel=1e-5)  # the old belief, re-scored
            kept += 1
        elif revised is not None:
            revised_away += 1
        if belief.best_span == got.span:
            i, j = got.span[0] - 10 * seg + 1, got.span[1] - 10 * seg + 1
            assert torch.allclose(got.span_embedding, states[i : j + 1].mean(0))
    assert kept and revised_away and skipped  # every branch was taken
