import copy
import math
import pickle

import pytest
import torch

from latentspace.rbsqa.belief import BeliefStateTracker, ReferenceKernel, SpanCandidate, best_span_scores_reference
from latentspace.rbsqa.belief_fast import FastKernel

from .conftest import context, logits


def _trackers(method: str, calibration: bool = True, max_answer_len: int = 3):
    """A tracker with its fast kernel and a copy of it (the same parameters) with the reference kernel."""
    torch.manual_seed(2)
    fast = BeliefStateTracker(context_dim=8, re_scoring_method=method, max_answer_len=max_answer_len,
                              confidence_calibration=calibration)
    with torch.no_grad():
        fast.log_temperature.fill_(0.4)
        fast.confidence_bias.fill_(-0.2)
        fast.confidence_scaler.fill_(1.3)
    reference = copy.deepcopy(fast)
    reference.kernel = ReferenceKernel(reference)
    return fast, reference


@pytest.mark.parametrize("method", ["learned", "context_weighted"])
@pytest.mark.parametrize("calibration", [True, False])
def test_fast_kernel_agrees_with_the_reference(method, calibration):
    fast_tracker, reference_tracker = _trackers(method, calibration)
    fast, reference = fast_tracker.kernel, reference_tracker.kernel
    assert isinstance(fast, FastKernel)
    gen = torch.Generator().manual_seed(0)
    for fresh in (True, False):
        fast.prepare(fresh)
        reference.prepare(fresh)
        for gmm in (torch.randn(4, 8, generator=gen), torch.randn(1, 3, 8, generator=gen), torch.randn(1, 8)):
            torch.testing.assert_close(fast.summary(gmm), reference.summary(gmm))
        assert fast.summary(None) is None and reference.summary(None) is None
        for length in (2, 5, 12):
            start, end = torch.randn(length, generator=gen) * 3, torch.randn(length, generator=gen) * 3
            s, e, z, confidence = fast.best_span(start, end)
            assert (s, e) == reference.best_span(start, end)[:2]
            assert (z, confidence) == pytest.approx(reference.best_span(start, end)[2:], rel=1e-5, abs=1e-6)
            states = torch.randn(length, 8, generator=gen)
            torch.testing.assert_close(fast.span_embedding(states, s, e), reference.span_embedding(states, s, e))
        now = fast.summary(torch.randn(3, 8, generator=gen))
        spans = [SpanCandidate((i, i), 0.2 + 0.1 * i, i, 0, context_vector=torch.randn(8, generator=gen),
                               span_embedding=torch.randn(8, generator=gen)) for i in range(4)]
        assert fast.re_score(spans, now) == pytest.approx(reference.re_score(spans, now), rel=1e-5)
        for held in spans:
            assert fast.re_score_held(held, now) == pytest.approx(reference.re_score_held(held, now), rel=1e-5)
        # what re-scoring cannot use: the original confidences
        bare = SpanCandidate((1, 1), 0.6, 0, 0)
        for kernel in (fast, reference):
            assert kernel.re_score([], now) == []
            assert kernel.re_score(spans, None) == [c.confidence for c in spans]
            assert kernel.re_score_held(bare, now) == 0.6


@pytest.mark.parametrize("method", ["learned", "context_weighted"])
def test_update_belief_with_the_fast_and_the_reference_kernel_agree(method):
    """Whole documents read by the tracker give the same beliefs with either kernel."""
    fast, reference = _trackers(method)
    gen = torch.Generator().manual_seed(4)
    revisions = 0
    for _document in range(6):
        fast.reset_belief()
        reference.reset_belief()
        for seg in range(8):
            start = torch.randn(10, generator=gen) * (4.0 if seg in (0, 5) else 1.5)
            end = torch.randn(10, generator=gen)
            memory, states = torch.randn(1, 2, 8, generator=gen), torch.randn(10, 8, generator=gen)
            got = fast.update_belief((start, end), seg, memory, 10 * seg, token_states=states)
            want = reference.update_belief((start, end), seg, memory, 10 * seg, token_states=states)
            assert (got.best_span, got.segment_id, got.revision_count, got.total_segments) == (
                want.best_span, want.segment_id, want.revision_count, want.total_segments)
            assert got.confidence_history == pytest.approx(want.confidence_history, rel=1e-5)
            assert [c.span for c in got.span_history] == [c.span for c in want.span_history]
            assert fast.should_halt() == reference.should_halt()
        revisions += got.revision_count
    assert revisions  # revisions happened, so re-scoring decided something


def test_a_tracker_with_its_kernel_state_copies_and_pickles():
    tracker = BeliefStateTracker(context_dim=8, re_scoring_method="learned")
    tracker.update_belief(logits(6, {(2, 2): 3.0}), 0, context(0), 0, token_states=torch.randn(6, 8))
    assert pickle.loads(pickle.dumps(tracker)).belief.to_dict() == tracker.belief.to_dict()
    again = copy.deepcopy(tracker)
    assert again.kernel.tracker is again
    seg = logits(6, {(3, 3): 1.0})
    assert again.extract_best_span(seg, 1, 0).confidence == tracker.extract_best_span(seg, 1, 0).confidence
    with torch.no_grad():
        again.confidence_bias.fill_(2.0)  # the copy's own parameters
    assert again.extract_best_span(seg, 1, 0).confidence == pytest.approx(1 / (1 + math.exp(-3.0)), rel=1e-6)


def test_batched_re_scoring_matches_the_torch_reference():
    """The fast kernel's NumPy path re-scores P spans as the torch network and cosine similarity do (the reference
    kernel's formulas, written out)."""
    torch.manual_seed(1)
    spans = [SpanCandidate((i, i), 0.1 + 0.15 * i, i, 0, context_vector=torch.randn(8), span_embedding=torch.randn(8))
             for i in range(5)]
    now = torch.randn(3, 8)
    learned = BeliefStateTracker(context_dim=8, re_scoring_method="learned")
    features = torch.cat([torch.stack([c.span_embedding for c in spans]), now.mean(0).expand(5, 8)], -1)
    with torch.no_grad():
        expected = torch.tensor([c.confidence for c in spans]) * learned.re_score_network(features).squeeze(-1)
    got = torch.tensor([c.confidence for c in learned.re_score_past_spans(spans, now)])
    assert torch.allclose(got, expected, rtol=1e-5)
    assert torch.allclose(torch.tensor(ReferenceKernel(learned).re_score(spans, now.mean(0))), expected, rtol=1e-5)
    weighted = BeliefStateTracker(context_dim=8)
    cos = torch.nn.functional.cosine_similarity(torch.stack([c.context_vector for c in spans]), now.mean(0)[None])
    expected = torch.tensor([c.confidence for c in spans]) * (1 + cos) / 2
    got = torch.tensor([c.confidence for c in weighted.re_score_past_spans(spans, now)])
    assert torch.allclose(got, expected, rtol=1e-5)
    assert torch.allclose(torch.tensor(ReferenceKernel(weighted).re_score(spans, now.mean(0))), expected, rtol=1e-5)


def test_per_segment_path_sees_parameter_changes():
    """The fast kernel's NumPy views of the parameters follow in-place updates, `.data` writes, state dicts and
    replacement."""
    tracker = BeliefStateTracker(context_dim=8, re_scoring_method="learned")
    seg = logits(6, {(2, 2): 2.0})

    def confidence() -> float:
        return tracker.extract_best_span(seg, 0, 0).confidence

    assert confidence() == pytest.approx(torch.sigmoid(torch.tensor(2.0)).item(), rel=1e-6)
    tracker.confidence_bias.data.fill_(1.0)  # no version bump: seen through the shared memory
    assert confidence() == pytest.approx(torch.sigmoid(torch.tensor(3.0)).item(), rel=1e-6)
    state = {k: v.clone() for k, v in tracker.state_dict().items()}
    state["log_temperature"].fill_(math.log(2.0))
    tracker.load_state_dict(state)
    assert confidence() == pytest.approx(torch.sigmoid(torch.tensor(2.0)).item(), rel=1e-6)  # 2 / 2 + 1
    tracker.confidence_bias = torch.nn.Parameter(torch.full((1,), -1.0))  # a new parameter object
    assert confidence() == pytest.approx(torch.sigmoid(torch.tensor(0.0)).item(), rel=1e-6)
    cand = SpanCandidate((1, 1), 0.9, 0, 0, span_embedding=torch.randn(8))
    ctx = context(2)
    with torch.no_grad():
        tracker.re_score_network[2].bias.fill_(30.0)  # the re-scorer now says: it still holds
    assert tracker.re_score_past_spans([cand], ctx)[0].confidence == pytest.approx(0.9, rel=1e-6)
    tracker.re_score_network[2].bias.data.fill_(-30.0)
    assert tracker.re_score_past_spans([cand], ctx)[0].confidence == pytest.approx(0.0, abs=1e-6)


def test_per_segment_span_search_breaks_ties_as_the_reference():
    """Integer logits tie often: the tracker's search picks the reference's span (smaller start, then shorter)."""
    gen = torch.Generator().manual_seed(3)
    for _ in range(300):
        length, max_len = int(torch.randint(2, 12, (1,), generator=gen)), int(torch.randint(1, 6, (1,), generator=gen))
        start = torch.randint(-3, 4, (1, length), generator=gen).float()
        end = torch.randint(-3, 4, (1, length), generator=gen).float()
        i, j, score = best_span_scores_reference(start, end, max_len)
        tracker = BeliefStateTracker(context_dim=8, max_answer_len=max_len)
        cand = tracker.extract_best_span((start[0], end[0]), 0, 0)
        assert cand.span == (int(i[0]) - 1, int(j[0]) - 1)
        assert cand.score == pytest.approx(float(score[0] - start[0, 0] - end[0, 0]))
        assert ReferenceKernel(tracker).best_span(start[0], end[0])[:2] == (int(i[0]), int(j[0]))


def test_per_segment_span_search_matches_the_reference_loop_with_padding():
    gen = torch.Generator().manual_seed(0)
    start, end = torch.randn(16, 12, generator=gen), torch.randn(16, 12, generator=gen)
    start[:, 9:] = float("-inf")  # padding
    end[:, 9:] = float("-inf")
    for max_len in (1, 3, 12):
        i, j, score = best_span_scores_reference(start, end, max_len)
        tracker = BeliefStateTracker(context_dim=8, max_answer_len=max_len)
        for row in range(start.shape[0]):
            cand = tracker.extract_best_span((start[row], end[row]), 0, global_offset=0)
            assert cand.span == (int(i[row]) - 1, int(j[row]) - 1)
            assert cand.score == pytest.approx(float(score[row] - start[row, 0] - end[row, 0]), abs=1e-5)
            assert ReferenceKernel(tracker).best_span(start[row], end[row])[:2] == (int(i[row]), int(j[row]))
