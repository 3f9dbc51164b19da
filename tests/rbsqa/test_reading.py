from latentspace.rbsqa.reading import answer_without_tracker, read_document


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
    old = tracker.confidence_threshold, tracker.stable_segments
    try:
        tracker.confidence_threshold, tracker.stable_segments = 0.0, 1
        traj = read_document(model, doc, halt=True)
        assert traj.segments_read == 1 and traj.halted_at == 0 and traj.steps[-1].halted
        # with the stability condition it halts at the first segment whose belief span is the previous one's
        tracker.stable_segments = 2
        full = read_document(model, doc, halt=False)
        same = [t for t in range(1, len(full.steps)) if full.steps[t].belief_span == full.steps[t - 1].belief_span]
        traj = read_document(model, doc, halt=True)
        assert traj.segments_read == (same[0] + 1 if same else doc.num_segments)
        tracker.confidence_threshold, tracker.stable_segments = 1.0, 1
        assert read_document(model, doc, halt=True).segments_read == doc.num_segments
    finally:
        tracker.confidence_threshold, tracker.stable_segments = old


def test_baseline_is_the_best_scoring_span_over_all_segments(model_and_doc):
    model, doc = model_and_doc
    traj = read_document(model, doc)
    span, text, _ = answer_without_tracker(model, doc)
    best = max(traj.steps, key=lambda s: s.candidate_score)
    assert span == best.candidate_span and text == best.candidate_text
