"""The belief-state tracker: the best answer span so far, revised non-monotonically as segments arrive.

After each segment the tracker extracts that segment's best span (`extract_best_span`), gives it a
calibrated confidence (`compute_confidence`: sigmoid(scale * z / temperature + bias) of the span-vs-null
logit z), re-scores the span it believed so far in the light of the new memory context
(`re_score_past_spans`, "context_weighted" or "learned"), and keeps whichever is more confident: a new
span that wins is a *revision*. `should_halt` says when the belief is confident enough to stop reading
(the rule: `halting.py`). Temperature scaling on a validation split (`fit_temperature`) calibrates the
confidences; `expected_calibration_error` measures them. Names follow the seed (rbsqa.md, Story 2.1).

The per-segment arithmetic (span search, calibrated confidence, memory summary, re-scoring, span embedding) goes
through the tracker's `kernel`, a `TrackerKernel`: `ReferenceKernel` here (plain torch, obviously correct) or
`belief_fast.FastKernel` (the default: Python floats and a few torch calls), tested against each other.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.errors import ConfigError
from .belief_fast import FastKernel
from .halting import confidence_slope, halts

log = logging.getLogger("latentspace")


@dataclasses.dataclass
class SpanCandidate:
    """A span found in one segment. `score` is the uncalibrated span-vs-null logit z; the two vectors
    (memory summary when found, mean token state of the span) are what re-scoring compares with later."""

    span: tuple[int, int]
    confidence: float
    segment_id: int
    gmm_context_hash: int
    score: float = 0.0
    context_vector: torch.Tensor | None = None  # (D,)
    span_embedding: torch.Tensor | None = None  # (D,)

    def to_dict(self) -> dict[str, Any]:
        return {"span": list(self.span), "confidence": self.confidence, "segment_id": self.segment_id,
                "gmm_context_hash": self.gmm_context_hash, "score": self.score,
                "context_vector": None if self.context_vector is None else self.context_vector.tolist(),
                "span_embedding": None if self.span_embedding is None else self.span_embedding.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SpanCandidate:
        vec = data.get("context_vector")
        emb = data.get("span_embedding")
        return cls(tuple(data["span"]), float(data["confidence"]), int(data["segment_id"]),
                   int(data["gmm_context_hash"]), float(data.get("score", 0.0)),
                   None if vec is None else torch.tensor(vec), None if emb is None else torch.tensor(emb))

    def nbytes(self) -> int:
        tensors = sum(t.numel() * t.element_size() for t in (self.context_vector, self.span_embedding)
                      if t is not None)
        return tensors + 8 * 6


@dataclasses.dataclass
class BeliefState:
    """What the tracker believes after `total_segments` segments (seed fields)."""

    best_span: tuple[int, int] | None
    confidence: float
    segment_id: int
    span_history: list[SpanCandidate]
    confidence_history: list[float]
    revision_count: int
    total_segments: int

    def to_dict(self) -> dict[str, Any]:
        return {"best_span": None if self.best_span is None else list(self.best_span),
                "confidence": self.confidence, "segment_id": self.segment_id,
                "span_history": [c.to_dict() for c in self.span_history],
                "confidence_history": list(self.confidence_history), "revision_count": self.revision_count,
                "total_segments": self.total_segments}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BeliefState:
        best = data.get("best_span")
        return cls(None if best is None else tuple(best), float(data["confidence"]), int(data["segment_id"]),
                   [SpanCandidate.from_dict(c) for c in data["span_history"]],
                   [float(c) for c in data["confidence_history"]], int(data["revision_count"]),
                   int(data["total_segments"]))

    def nbytes(self) -> int:
        """Bytes the state holds: its candidates' vectors and scalars plus the confidence history."""
        return sum(c.nbytes() for c in self.span_history) + 8 * (len(self.confidence_history) + 8)


def empty_belief() -> BeliefState:
    return BeliefState(best_span=None, confidence=0.0, segment_id=-1, span_history=[], confidence_history=[],
                       revision_count=0, total_segments=0)


def span_mask(length: int, max_answer_len: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Which (start, end) pairs of the L - 1 non-null positions form a span: (L-1, L-1) bool."""
    i = torch.arange(length - 1, device=device)
    return (i[None, :] >= i[:, None]) & (i[None, :] - i[:, None] < max_answer_len)


def best_span_scores(start_logits: torch.Tensor, end_logits: torch.Tensor,
                     max_answer_len: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best non-null span per row, batched. Index 0 is the null position and never part of a span.

    Args:
        start_logits, end_logits: (B, L); padding positions hold -inf.

    Returns:
        start (B,), end (B,), score (B,) with score = start_logit + end_logit, end - start < max_answer_len.
    """
    B, L = start_logits.shape
    allowed = span_mask(L, max_answer_len, start_logits.device)  # (L-1, L-1)
    scores = start_logits[:, 1:, None] + end_logits[:, None, 1:]  # (B, L-1, L-1)
    scores = scores.masked_fill(~allowed, float("-inf")).reshape(B, -1)
    best, flat = scores.max(dim=-1)
    return flat // (L - 1) + 1, flat % (L - 1) + 1, best


def best_span_scores_reference(start_logits: torch.Tensor, end_logits: torch.Tensor,
                               max_answer_len: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Slow, obviously-correct double loop giving the same result as `best_span_scores`."""
    out = []
    for s, e in zip(start_logits.tolist(), end_logits.tolist(), strict=True):
        best = (float("-inf"), 1, 1)
        for i in range(1, len(s)):
            for j in range(i, min(len(s), i + max_answer_len)):
                if s[i] + e[j] > best[0]:
                    best = (s[i] + e[j], i, j)
        out.append(best)
    return (torch.tensor([b[1] for b in out]), torch.tensor([b[2] for b in out]),
            torch.tensor([b[0] for b in out], dtype=start_logits.dtype))


def expected_calibration_error(confidence: torch.Tensor, correct: torch.Tensor, bins: int = 10) -> float:
    """ECE: the bin-weighted mean |accuracy - mean confidence| over equal-width confidence bins."""
    confidence, correct = confidence.float().flatten(), correct.float().flatten()
    if confidence.numel() == 0:
        return float("nan")
    index = torch.clamp((confidence * bins).long(), max=bins - 1)
    ece = torch.zeros(())
    for b in range(bins):
        sel = index == b
        if sel.any():
            ece += sel.float().mean() * (correct[sel].mean() - confidence[sel].mean()).abs()
    return float(ece)


class TrackerKernel(Protocol):
    """The tracker's per-segment arithmetic: `ReferenceKernel` or `belief_fast.FastKernel`."""

    def prepare(self, fresh: bool) -> None:
        """Called before each segment's (or public call's) work; `fresh`: read the tracker's parameters again."""

    def summary(self, gmm_context: torch.Tensor | None) -> torch.Tensor | None:
        """Memory summary (D,) float32 CPU of a (K, D) / (1, K, D) context: its mean over slots; None for None."""

    def best_span(self, start: torch.Tensor, end: torch.Tensor) -> tuple[int, int, float, float]:
        """(start, end, z, confidence) of one segment's logits (L,) each, index 0 = null: the best non-null span
        as `best_span_scores` finds it, its span-vs-null logit z and `calibrate(z)`."""

    def span_embedding(self, token_states: torch.Tensor, s: int, e: int) -> torch.Tensor:
        """Mean token state (D,) over positions s..e of (L, D) states aligned with the logits."""

    def re_score(self, past_spans: list[SpanCandidate], context: torch.Tensor | None) -> list[float]:
        """Each span's confidence times its weight in [0, 1] given the context summary now (D,): context_weighted
        (1 + cos(context then, now)) / 2, learned re_score_network([span embedding, context now]); the original
        confidences (with a warning) when a span lacks what re-scoring needs."""

    def re_score_held(self, held: SpanCandidate, context: torch.Tensor | None) -> float:
        """`re_score` of one candidate (the held belief, once per segment)."""


class ReferenceKernel:
    """`TrackerKernel` in plain torch calls on the tracker's modules: slow, obviously correct."""

    def __init__(self, tracker: BeliefStateTracker):
        self.tracker = tracker

    def prepare(self, fresh: bool) -> None:
        pass  # reads the parameters on every call

    def summary(self, gmm_context: torch.Tensor | None) -> torch.Tensor | None:
        if gmm_context is None:
            return None
        flat = gmm_context.detach().to("cpu", torch.float32)
        return flat.reshape(-1, flat.shape[-1]).mean(0)  # (K, D) -> (D,)

    @torch.no_grad()
    def best_span(self, start: torch.Tensor, end: torch.Tensor) -> tuple[int, int, float, float]:
        i, j, score = best_span_scores(start[None], end[None], self.tracker.max_answer_len)
        z = score[0] - (start[0] + end[0])
        return int(i[0]), int(j[0]), float(z), float(self.tracker.calibrate(z))

    def span_embedding(self, token_states: torch.Tensor, s: int, e: int) -> torch.Tensor:
        return token_states[s : e + 1].detach().to("cpu", torch.float32).mean(0)

    @torch.no_grad()
    def re_score(self, past_spans: list[SpanCandidate], context: torch.Tensor | None) -> list[float]:
        if not past_spans:
            return []
        try:
            if context is None:
                raise TypeError("no memory context to re-score with")
            if self.tracker.re_scoring_method == "learned":
                embeddings = torch.stack([c.span_embedding.float() for c in past_spans])  # (P, D)
                features = torch.cat([embeddings, context.expand_as(embeddings)], dim=-1)  # (P, 2D)
                weight = self.tracker.re_score_network(features).squeeze(-1)  # (P,)
            else:
                then = torch.stack([c.context_vector.float() for c in past_spans])  # (P, D)
                weight = (1 + F.cosine_similarity(then, context[None], eps=1e-8)) / 2  # (P,)
            return [c.confidence * w for c, w in zip(past_spans, weight.tolist(), strict=True)]
        except (TypeError, RuntimeError, AttributeError, ValueError, IndexError) as err:
            log.warning("re-scoring failed (%s); keeping the original confidences", err)
            return [c.confidence for c in past_spans]

    def re_score_held(self, held: SpanCandidate, context: torch.Tensor | None) -> float:
        return self.re_score([held], context)[0]


class BeliefStateTracker(nn.Module):
    """Tracks the best span across segments with calibrated confidence and non-monotonic revision.

    Args:
        max_segments: span history kept (older candidates are dropped).
        confidence_threshold: `should_halt` when the belief's confidence reaches it.
        re_scoring_method: "context_weighted" (agreement of the memory context then and now) or "learned"
            (a small network on [span embedding, memory context], trained with the model:
            `RBSQAModel.re_score_loss`).
        enable_trend_analysis: `should_halt` also asks the confidence not to be falling.
        stable_segments: `should_halt` also asks the belief's span to have been the same for this many
            segments in a row (1: no stability condition).
        context_dim: width D of the memory context and span embeddings.
        max_answer_len: longest span in tokens.
        enable_re_scoring: re-score the old belief before comparing (off: compare raw confidences).
        confidence_calibration: apply scale / temperature / bias (off: plain sigmoid of z).

    Attributes:
        kernel: the per-segment arithmetic (`FastKernel`; a `ReferenceKernel(tracker)` computes the same in
            plain torch).
    """

    def __init__(self, max_segments: int = 32, confidence_threshold: float = 0.7,
                 re_scoring_method: str = "context_weighted", enable_trend_analysis: bool = True,
                 context_dim: int = 384, max_answer_len: int = 4, enable_re_scoring: bool = True,
                 confidence_calibration: bool = True, stable_segments: int = 1):
        super().__init__()
        if re_scoring_method not in ("context_weighted", "learned"):
            raise ConfigError(f"re_scoring_method {re_scoring_method!r}: expected context_weighted or learned")
        self.max_segments = max_segments
        self.confidence_threshold = confidence_threshold
        self.re_scoring_method = re_scoring_method
        self.enable_trend_analysis = enable_trend_analysis
        self.stable_segments = stable_segments
        self.stable_for = 0  # segments in a row (the last one included) after which the belief span was the same
        self.max_answer_len = max_answer_len
        self.enable_re_scoring = enable_re_scoring
        self.confidence_calibration = confidence_calibration

        # Learnable parameters for confidence calibration
        self.confidence_scaler = nn.Parameter(torch.ones(1))
        self.confidence_bias = nn.Parameter(torch.zeros(1))
        self.log_temperature = nn.Parameter(torch.zeros(1))

        # Learnable re-scoring network on [span embedding, memory context] (768 inputs for MiniLM's 384)
        self.re_score_network = nn.Sequential(
            nn.Linear(2 * context_dim, 256),
            nn.ReLU(),
            nn.Linear(256, 1),
            nn.Sigmoid(),
        ) if re_scoring_method == "learned" else None
        self.belief = empty_belief()
        self.kernel: TrackerKernel = FastKernel(self)

    @property
    def temperature(self) -> torch.Tensor:
        return self.log_temperature.exp()

    # ---- confidence ------------------------------------------------------------------------------------

    def calibrate(self, z: torch.Tensor) -> torch.Tensor:
        """Confidence in [0, 1] from span-vs-null logits z (any shape)."""
        if not self.confidence_calibration:
            return torch.sigmoid(z)
        return torch.sigmoid(self.confidence_scaler * z / self.temperature + self.confidence_bias)

    def compute_confidence(self, start_logits: torch.Tensor, end_logits: torch.Tensor,
                           start_idx: int, end_idx: int) -> float:
        """Compute calibrated confidence for a span: the span's score against the null (index 0) score."""
        z = (start_logits[start_idx] + end_logits[end_idx]) - (start_logits[0] + end_logits[0])
        with torch.no_grad():
            return float(self.calibrate(z))

    # ---- spans -----------------------------------------------------------------------------------------

    def extract_best_span(self, logits: tuple[torch.Tensor, torch.Tensor], segment_id: int, global_offset: int,
                          gmm_context: torch.Tensor | None = None,
                          token_states: torch.Tensor | None = None) -> SpanCandidate:
        """Extract best span from current segment logits.

        It returns what `best_span_scores` (the batched torch search) returns, through the tracker's kernel.

        Args:
            logits: (start, end), each (L,): index 0 is the null ([CLS]) score, index i >= 1 the segment's
                i-th token; padding holds -inf.
            global_offset: global token index of the segment's first token (index 1).
            gmm_context: memory after this segment, (K, D) or (1, K, D).
            token_states: (L, D) states aligned with the logits, for the span embedding.
        """
        kernel = self.kernel
        kernel.prepare(fresh=True)
        candidate, s, e = self._candidate(kernel, logits, segment_id, global_offset, kernel.summary(gmm_context))
        if token_states is not None:
            candidate.span_embedding = kernel.span_embedding(token_states, s, e)
        return candidate

    def _candidate(self, kernel: TrackerKernel, logits: tuple[torch.Tensor, torch.Tensor], segment_id: int,
                   global_offset: int, context: torch.Tensor | None) -> tuple[SpanCandidate, int, int]:
        """(candidate, start, end in the segment's logits) of one segment, given its memory summary (D,)."""
        s, e, z, confidence = kernel.best_span(logits[0], logits[1])
        candidate = SpanCandidate(
            span=(global_offset + s - 1, global_offset + e - 1),
            confidence=confidence,
            segment_id=segment_id,
            gmm_context_hash=0 if context is None else _context_hash(context),
            score=z,
            context_vector=context,
        )
        return candidate, s, e

    def re_score_past_spans(self, past_spans: list[SpanCandidate],
                            gmm_context: torch.Tensor) -> list[SpanCandidate]:
        """
        Re-score previously found spans using new GMM context.
        This enables non-monotonic reasoning.

        context_weighted: confidence * (1 + cos(context when found, context now)) / 2.
        learned: confidence * re_score_network([span embedding, context now]).
        Falls back to the original confidence (with a warning) when a span lacks what re-scoring needs.
        """
        kernel = self.kernel
        kernel.prepare(fresh=True)
        revised = kernel.re_score(past_spans, kernel.summary(gmm_context))
        return [dataclasses.replace(c, confidence=r) for c, r in zip(past_spans, revised, strict=True)]

    # ---- belief ----------------------------------------------------------------------------------------

    def update_belief(self, current_logits: tuple[torch.Tensor, torch.Tensor], current_segment_id: int,
                      gmm_context: torch.Tensor, global_offset: int,
                      token_states: torch.Tensor | None = None) -> BeliefState:
        """
        Update belief state with new segment information.

        Args:
            current_logits: (start_logits, end_logits) for current segment, (L,) each, index 0 = null
            current_segment_id: Index of current segment (0-based)
            gmm_context: Aggregated GMM memory context [batch, slots, hidden_dim] (batch 1) or [slots, hidden_dim]
            global_offset: Token offset for global index mapping
            token_states: (L, D) states aligned with the logits (the belief's span embedding, for learned
                re-scoring)

        Returns:
            Updated BeliefState with potential non-monotonic revisions
        """
        belief = self.belief
        kernel = self.kernel
        kernel.prepare(fresh=belief.total_segments == 0)  # the parameters are read once per document
        context = kernel.summary(gmm_context)  # (D,)
        current, s, e = self._candidate(kernel, current_logits, current_segment_id, global_offset, context)
        confidence = current.confidence
        previous_span = belief.best_span
        held = None
        if previous_span is not None:
            # the held span as last found, with the confidence it had then: re-scoring weighs it by what the
            # context now says (not the already re-scored belief, which would compound the weights)
            history = belief.span_history
            held = history[-1] if history and history[-1].span == previous_span else next(
                (c for c in reversed(history) if c.span == previous_span), None)
            if held is None:
                held = SpanCandidate(previous_span, belief.confidence, belief.segment_id, 0)
            revised = -1.0
            # Both re-scoring methods multiply the confidence by a weight in [0, 1], so a held span found with a
            # confidence <= the new span's cannot win whatever the context says: skipping its re-scoring gives
            # the same belief (the product of floats is monotone: c * w <= c for w <= 1).
            if held.confidence > confidence:
                revised = kernel.re_score_held(held, context) if self.enable_re_scoring else held.confidence
                if not 0.0 <= revised <= 1.0:  # also False for NaN
                    revised = held.confidence  # fallback to original belief if the revision is invalid
            if revised > confidence:
                belief.confidence = revised  # old belief confirmed by the new context
            else:
                if current.span != previous_span:
                    belief.revision_count += 1  # new span beats the re-scored old one: belief revision
                belief.best_span, belief.confidence, belief.segment_id = current.span, confidence, current_segment_id
        else:
            belief.best_span, belief.confidence, belief.segment_id = current.span, confidence, current_segment_id
        if current.span == belief.best_span:
            held = current  # the belief's latest candidate: the one re-scored from now on
            if token_states is not None and self.re_scoring_method == "learned":
                # only the belief's candidate is ever re-scored, so only it needs a span embedding
                current.span_embedding = kernel.span_embedding(token_states, s, e)  # (D,)
        history = belief.span_history
        history.append(current)
        if len(history) > self.max_segments:
            history = history[-self.max_segments :]
            if held is not None and all(c is not held for c in history):
                history = [held, *history[1:]]  # truncation never drops what re-scoring needs
            belief.span_history = history
        confidences = belief.confidence_history
        confidences.append(belief.confidence)
        if len(confidences) > self.max_segments:
            del confidences[: len(confidences) - self.max_segments]
        belief.total_segments += 1
        self.stable_for = self.stable_for + 1 if belief.best_span == previous_span else 1
        return belief

    def confidence_trend(self, window: int = 3) -> float:
        """Least-squares slope of the last `window` belief confidences (per segment); 0 with fewer than 2."""
        return confidence_slope(self.belief.confidence_history[-window:])

    def should_halt(self) -> bool:
        """Determine if current belief warrants halting (confident, with trend analysis not falling, and the
        same span for `stable_segments` segments)."""
        return halts(self.belief.confidence_history, self.confidence_threshold, self.enable_trend_analysis,
                     self.stable_for, self.stable_segments)

    def reset_belief(self) -> None:
        """Reset belief state for new document."""
        self.stable_for = 0
        self.belief = BeliefState(
            best_span=None,
            confidence=0.0,
            segment_id=-1,
            span_history=[],
            confidence_history=[],
            revision_count=0,
            total_segments=0
        )


def _context_hash(context: torch.Tensor) -> int:
    """Fingerprint of a context summary (D,): the hash of its values as Python floats. Deterministic across
    processes (Python randomises the hashes of str and bytes, never of floats and tuples of them), and it calls
    no NumPy function (the per-segment path calls none)."""
    return hash(tuple(context.tolist()))


def fit_temperature(tracker: BeliefStateTracker, z: torch.Tensor, correct: torch.Tensor, steps: int = 100) -> dict:
    """Temperature scaling (with bias) of the tracker's confidences on a validation split.

    Args:
        z: (N,) span-vs-null logits of validation candidates. correct: (N,) 1 where the span is right.

    Returns:
        {"temperature", "bias", "nll_before", "nll_after"}; the tracker's temperature and bias are set.
    """
    z, correct = z.detach().float(), correct.detach().float()
    if z.numel() == 0:
        raise ConfigError("temperature scaling needs at least one validation candidate")
    log_t = torch.zeros(1, requires_grad=True)
    bias = torch.zeros(1, requires_grad=True)
    scale = tracker.confidence_scaler.detach()
    optimizer = torch.optim.LBFGS([log_t, bias], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def nll() -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(scale * z / log_t.exp() + bias, correct)

    with torch.no_grad():
        before = float(nll())

    def closure():
        optimizer.zero_grad()
        loss = nll()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        tracker.log_temperature.copy_(log_t.detach())
        tracker.confidence_bias.copy_(bias.detach())
        after = float(nll())
    return {"temperature": float(log_t.detach().exp()), "bias": float(bias.detach()), "nll_before": before,
            "nll_after": after}
