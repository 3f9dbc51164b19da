"""Reading a document segment by segment: the belief trajectory, halting, and the no-tracker baseline.

`read_document` is the recurrent inference loop (one segment at a time, as a reader would): encode the
segment (or take its cached encoding), step the model with the memory, feed the logits to the tracker,
and stop as soon as `tracker.should_halt()` (the rule of `halting.py`) when halting is on.
`answer_without_tracker` is the baseline the tracker is compared with: the single highest-scoring span over all
segments (standard long-document extractive QA). It is also the slow per-segment reference of
`RBSQAModel.forward_document`.
"""

from __future__ import annotations

import dataclasses
import time

import torch

from .belief import best_span_scores
from .data import EncodedDocument
from .model import RBSQAModel


@dataclasses.dataclass
class TrajectoryStep:
    """The belief after one segment, and the candidate that segment proposed."""

    segment: int
    candidate_span: tuple[int, int]
    candidate_text: str
    candidate_confidence: float
    candidate_score: float
    belief_span: tuple[int, int] | None
    belief_text: str
    confidence: float
    revised: bool
    halted: bool


@dataclasses.dataclass
class Trajectory:
    """A document read by the tracker: the steps, the final answer and where time went."""

    steps: list[TrajectoryStep]
    answer_span: tuple[int, int] | None
    answer_text: str
    segments_read: int
    num_segments: int
    halted_at: int | None
    model_seconds: float
    tracker_seconds: float
    bytes: int
    start_logits: list[torch.Tensor] = dataclasses.field(default_factory=list)  # (L,) per segment read
    end_logits: list[torch.Tensor] = dataclasses.field(default_factory=list)

    @property
    def revisions(self) -> list[int]:
        return [s.segment for s in self.steps if s.revised]

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out.pop("start_logits")
        out.pop("end_logits")
        return out


@torch.no_grad()
def read_document(model: RBSQAModel, doc: EncodedDocument, hidden: torch.Tensor | None = None,
                  halt: bool = False) -> Trajectory:
    """Read `doc` one segment at a time with the model's tracker, optionally halting when confident.

    Args:
        hidden: (S, L, D) cached encoder states; None encodes each segment as it is read.
        halt: stop after the first segment at which `tracker.should_halt()`.
    """
    if model.tracker is None:
        raise ValueError("read_document needs a model built with use_belief_state=True")
    tracker = model.tracker
    tracker.reset_belief()
    memory = model.init_memory(1)  # (1, K, D)
    steps: list[TrajectoryStep] = []
    model_seconds = tracker_seconds = 0.0
    halted_at = None
    starts, ends = [], []
    for s in range(doc.num_segments):
        t0 = time.perf_counter()
        ids, att = doc.input_ids[s : s + 1], doc.attention_mask[s : s + 1]
        h = model.encode(ids, att) if hidden is None else hidden[s : s + 1].float()  # (1, L, D)
        out = model.segment_forward(h, att, doc.context_mask[s : s + 1], memory)
        memory = out["memory"]
        start, end = model.tracker_logits(out["start"][0], out["end"][0])  # (1 + segment_len,)
        states = out["states"][0][model.tracker_index]  # (1 + segment_len, D)
        t1 = time.perf_counter()
        previous = tracker.belief.best_span
        belief = tracker.update_belief((start, end), s, memory, doc.offsets[s], token_states=states)
        halted = halt and tracker.should_halt()
        t2 = time.perf_counter()
        model_seconds += t1 - t0
        tracker_seconds += t2 - t1
        starts.append(out["start"][0])
        ends.append(out["end"][0])
        cand = belief.span_history[-1]
        steps.append(TrajectoryStep(s, cand.span, doc.span_text(cand.span), cand.confidence, cand.score,
                                    belief.best_span, doc.span_text(belief.best_span), belief.confidence,
                                    previous is not None and belief.best_span != previous, halted))
        if halted:
            halted_at = s
            break
    belief = tracker.belief
    return Trajectory(steps, belief.best_span, doc.span_text(belief.best_span), len(steps), doc.num_segments,
                      halted_at, model_seconds, tracker_seconds, belief.nbytes(), starts, ends)


@torch.no_grad()
def answer_without_tracker(model: RBSQAModel, doc: EncodedDocument,
                           hidden: torch.Tensor | None = None) -> tuple[tuple[int, int], str, list[torch.Tensor]]:
    """Baseline: the highest span-vs-null score over all segments, read recurrently without a tracker.

    Returns:
        (global span, its text, per-segment start logits (L,) for comparing with `forward_document`)
    """
    memory = model.init_memory(1)
    best = (float("-inf"), (0, 0))
    starts = []
    for s in range(doc.num_segments):
        ids, att = doc.input_ids[s : s + 1], doc.attention_mask[s : s + 1]
        h = model.encode(ids, att) if hidden is None else hidden[s : s + 1].float()
        out = model.segment_forward(h, att, doc.context_mask[s : s + 1], memory)
        memory = out["memory"]
        start, end = model.tracker_logits(out["start"][0], out["end"][0])
        i, j, score = best_span_scores(start[None], end[None], model.config.max_answer_len)
        z = float(score[0] - start[0] - end[0])
        if z > best[0]:
            best = (z, (doc.offsets[s] + int(i[0]) - 1, doc.offsets[s] + int(j[0]) - 1))
        starts.append(out["start"][0])
    return best[1], doc.span_text(best[1]), starts
