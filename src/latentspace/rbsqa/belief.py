"""The belief-state tracker: the best answer span so far, revised non-monotonically as segments arrive.

After each segment the tracker extracts that segment's best span (`extract_best_span`), gives it a
calibrated confidence (`compute_confidence`: sigmoid(scale * z / temperature + bias) of the span-vs-null
logit z), re-scores the span it believed so far in the light of the new memory context
(`re_score_past_spans`, "context_weighted" or "learned"), and keeps whichever is more confident: a new
span that wins is a *revision*. `should_halt` says when the belief is confident enough to stop reading.
Temperature scaling on a validation split (`fit_temperature`) calibrates the confidences; `expected_
calibration_error` measures them. Names follow the seed (rbsqa.md, Story 2.1).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import operator
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.errors import ConfigError

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

    @property
    def temperature(self) -> torch.Tensor:
        return self.log_temperature.exp()

    # ---- confidence ------------------------------------------------------------------------------------

    def calibrate(self, z: torch.Tensor) -> torch.Tensor:
        """Confidence in [0, 1] from span-vs-null logits z (any shape)."""
        if not self.confidence_calibration:
            return torch.sigmoid(z)
        return torch.sigmoid(self.confidence_scaler * z / self.temperature + self.confidence_bias)

    def _calibration(self, entry: tuple | None = None) -> tuple[float, float] | None:
        """The calibration as Python floats (scale / temperature, bias), None when calibration is off: a span's
        confidence is sigmoid(scale / temperature * z + bias), computed without tensors (the per-segment path).
        `entry`: a `_fast_entry` (fetched when None)."""
        if not self.confidence_calibration:
            return None
        scale, bias, log_t = (entry or self._fast_entry())[2]  # memoryviews: mv[0] is a Python float
        return scale[0] / math.exp(log_t[0]), bias[0]

    def _fast_params(self) -> tuple[np.ndarray, ...]:
        """NumPy arrays of the tracker's parameters for the per-segment path: (scale, bias, log temperature)
        of shape (1,), then with the learned re-scorer W1 (H, 2D), b1 (H,), w2 (1, H), b2 (1,).

        On CPU in float32 they are views of the parameters themselves, so any in-place update (an optimizer
        step, `load_state_dict`, `.data.fill_`) is seen at once; a replaced parameter (another data pointer)
        or, elsewhere, a changed version makes them be fetched again.
        """
        return self._fast_entry()[1]

    def _fast_entry(self) -> tuple:
        """(key, `_fast_params` arrays, memoryviews of the three calibration arrays, the re-scorer's arrays as
        tensors or None), cached while the parameters' (data pointer, version) stay the same. The memoryviews and
        tensors share the arrays' memory, so what the arrays see they see; reading a float through a memoryview
        or multiplying by a tensor calls no NumPy function (entering NumPy right after a forward costs ~30 us).
        """
        own = self._parameters  # direct dict reads: module attribute lookup costs more than the check itself
        params = [own["confidence_scaler"], own["confidence_bias"], own["log_temperature"]]
        net = self._modules.get("re_score_network")
        if net is not None:
            first, second = net._modules["0"]._parameters, net._modules["2"]._parameters
            params += [first["weight"], first["bias"], second["weight"], second["bias"]]
        key = tuple((p.data_ptr(), p._version) for p in params)
        cached = self.__dict__.get("_fast_cache")
        if cached is not None and cached[0] == key:
            return cached
        arrays = tuple(p.detach().numpy() if p.device.type == "cpu" and p.dtype == torch.float32
                       else p.detach().float().cpu().numpy() for p in params)
        views = tuple(memoryview(a) for a in arrays[:3])
        tensors = tuple(torch.from_numpy(a) for a in arrays[3:]) or None  # no copy: the arrays' memory
        cached = self.__dict__["_fast_cache"] = (key, arrays, views, tensors)  # a plain attribute, not a parameter
        return cached

    def _document_params(self) -> tuple[tuple[np.ndarray, ...], tuple[float, float] | None, tuple | None]:
        """What `update_belief` reads of the parameters, fetched (and checked) at the first segment of each
        document and kept for its other segments: (`_fast_params` arrays, calibration (scale / temperature,
        bias) as Python floats or None when calibration is off, learned re-scorer (W1 (H, 2D), b1 (H,), w2 (1, H),
        b2 (1,)) as tensors or None). The re-scorer's tensors share the parameters' memory (CPU, float32: through
        the `_fast_params` views), so in-place writes are seen at once; the calibration floats, and a parameter
        *replaced* in the middle of a document (a new object, `.data =`, `.to()`), are seen from the next
        document. The public methods read the parameters on every call.
        """
        cached = self.__dict__.get("_document_cache")
        if cached is None or self.belief.total_segments == 0:
            entry = self._fast_entry()
            cached = self.__dict__["_document_cache"] = (entry[1], self._calibration(entry), entry[3])
        return cached

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

        One segment holds a few dozen logits, so the search runs on Python floats (`_best_span_lists`): per-op
        overhead of tiny tensors, not arithmetic, is what the tracker would otherwise cost. It returns
        what `best_span_scores` (the batched torch search) returns.

        Args:
            logits: (start, end), each (L,): index 0 is the null ([CLS]) score, index i >= 1 the segment's
                i-th token; padding holds -inf.
            global_offset: global token index of the segment's first token (index 1).
            gmm_context: memory after this segment, (K, D) or (1, K, D).
            token_states: (L, D) states aligned with the logits, for the span embedding.
        """
        candidate, s, e = self._candidate(logits, segment_id, global_offset, _context_vector(gmm_context),
                                          self._calibration())
        if token_states is not None:
            candidate.span_embedding = _span_embedding(token_states, s, e)
        return candidate

    def _candidate(self, logits: tuple[torch.Tensor, torch.Tensor], segment_id: int, global_offset: int,
                   context: torch.Tensor | None,
                   calibration: tuple[float, float] | None) -> tuple[SpanCandidate, int, int]:
        """(candidate, start, end in the segment's logits) of one segment, given its memory summary (D,) and the
        calibration (`_calibration`)."""
        start, end = logits[0].tolist(), logits[1].tolist()  # (L,) each, Python floats
        s, e, best = _best_span_lists(start, end, self.max_answer_len)
        z = best - (start[0] + end[0])  # span-vs-null logit
        candidate = SpanCandidate(
            span=(global_offset + s - 1, global_offset + e - 1),
            confidence=_sigmoid(calibration[0] * z + calibration[1] if calibration is not None else z),
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
        context = _context_vector(gmm_context)
        revised = self._re_score(past_spans, None if context is None else context.numpy())
        return [dataclasses.replace(c, confidence=r) for c, r in zip(past_spans, revised, strict=True)]

    def _re_score(self, past_spans: list[SpanCandidate], now: np.ndarray | None,
                  params: tuple[np.ndarray, ...] | None = None) -> list[float]:
        """Re-scored confidences of `past_spans` given the context summary now, (D,): batched over the P
        spans in a few NumPy ops (the network's weights are read through `_fast_params`)."""
        if not past_spans:
            return []
        try:
            if now is None:
                raise TypeError("no memory context to re-score with")
            if self.re_scoring_method == "learned":
                w1, b1, w2, b2 = (params or self._fast_params())[3:]
                features = np.empty((len(past_spans), 2 * now.shape[0]), dtype=np.float32)  # (P, 2D)
                for row, c in zip(features, past_spans, strict=True):
                    row[: now.shape[0]] = _as_array(c.span_embedding, np.float32)  # [span embedding, context now]
                features[:, now.shape[0] :] = now
                hidden = features @ w1.T + b1  # (P, H): one BLAS product with the contiguous W1 (H, 2D)
                logit = np.maximum(hidden, 0.0, out=hidden) @ w2[0] + b2[0]  # (P,)
                weight = 1.0 / (1.0 + np.exp(-logit))
            else:
                then = np.stack([_as_array(c.context_vector, np.float32) for c in past_spans])  # (P, D)
                norms = np.maximum(np.linalg.norm(then, axis=1), 1e-8) * max(float(np.linalg.norm(now)), 1e-8)
                weight = (1.0 + (then @ now) / norms) / 2  # (P,)
            return [c.confidence * w for c, w in zip(past_spans, weight.tolist(), strict=True)]
        except (TypeError, RuntimeError, AttributeError, ValueError, IndexError) as err:
            log.warning("re-scoring failed (%s); keeping the original confidences", err)
            return [c.confidence for c in past_spans]

    def _re_score_held(self, held: SpanCandidate, now: torch.Tensor | None, params: tuple) -> float:
        """`_re_score` of the one candidate `update_belief` re-scores, in three torch calls (`params`:
        `_document_params`; `now`: the context summary (D,))."""
        rescorer, embedding = params[2], held.span_embedding
        if (self.re_scoring_method != "learned" or rescorer is None or now is None or embedding is None
                or embedding.dtype != torch.float32 or embedding.device.type != "cpu"):
            # cosine weighting, or the general path's conversions and fallbacks
            return self._re_score([held], None if now is None else now.numpy(), params[0])[0]
        w1, b1, w2, b2 = rescorer
        hidden = F.linear(torch.cat((embedding, now)), w1, b1)  # (H,): [span embedding, context now]
        return held.confidence * _sigmoid(F.linear(hidden.relu_(), w2, b2).item())

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
        # The per-segment path runs on Python floats and a few torch calls. The model's forward leaves the CPU's
        # caches cold, and each first call of a kind after it (a NumPy reduction, a ufunc, a torch method) costs
        # 10-30 us where a warm one costs 1-3, so the count of *distinct* calls, not arithmetic, is what this step
        # costs (benchmarks/rbsqa.py, tracker_overhead_frac; benchmarks/rbsqa_tracker_profile.py). The averages
        # and the re-scorer are torch matrix products and linear layers, which the forward has just run (warm
        # code), and no NumPy function is called at all (entering NumPy first costs ~30 us); the parameters are
        # read once per document.
        params = self._document_params()
        context = _context_vector(gmm_context)  # (D,)
        current, s, e = self._candidate(current_logits, current_segment_id, global_offset, context, params[1])
        confidence = current.confidence
        belief = self.belief
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
                revised = self._re_score_held(held, context, params) if self.enable_re_scoring else held.confidence
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
                current.span_embedding = _span_embedding(token_states, s, e)  # (D,)
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


def confidence_slope(history: list[float]) -> float:
    """Least-squares slope of a confidence sequence (per segment); 0 with fewer than 2 values."""
    n = len(history)
    if n < 2:
        return 0.0
    if n == 2:
        return history[1] - history[0]
    if n == 3:  # the halting window: x - mean(x) = (-1, 0, 1)
        return (history[2] - history[0]) / 2
    mean_x, mean_y = (n - 1) / 2, sum(history) / n
    num = sum((x - mean_x) * (y - mean_y) for x, y in enumerate(history))
    return num / (n * (n * n - 1) / 12)  # sum of (x - mean_x)^2 over x = 0..n-1


def halts(confidence_history: list[float], threshold: float, trend_analysis: bool = True, stable_for: int = 1,
          stable_segments: int = 1) -> bool:
    """`should_halt` after a belief confidence history: confident, (with trend analysis) not falling fast, and
    the belief's span unchanged for the last `stable_segments` segments (`stable_for`: how many it has been)."""
    if not confidence_history or confidence_history[-1] < threshold or stable_for < stable_segments:
        return False
    return not trend_analysis or confidence_slope(confidence_history[-3:]) > -0.25


def _best_span_lists(start: list[float], end: list[float], max_answer_len: int) -> tuple[int, int, float]:
    """(start, end, score) of the best non-null span of one segment's logits, Python lists (L,) each with
    index 0 = null: what `best_span_scores` (the batched torch search) returns for one row, ties included
    (the higher sum, then the smaller start, then the shorter span). The band is searched one span length
    at a time with the interpreter's own map / max: one segment holds a few dozen logits, so per-call overhead,
    not arithmetic, is the cost, and no NumPy call is made."""
    add = operator.add
    starts, ends = start[1:], end[1:]  # non-null positions; map() stops at the shorter of its two lists
    best, best_i, best_k = -math.inf, 0, 0
    for k in range(min(max_answer_len, len(starts))):
        sums = list(map(add, starts, ends[k:] if k else ends))  # spans (i, i + k), i = 1..
        top = max(sums)
        if top >= best:
            i = sums.index(top)
            if top > best or i < best_i:
                best, best_i, best_k = top, i, k
    return best_i + 1, best_i + best_k + 1, best


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


def _as_array(tensor: torch.Tensor | np.ndarray, dtype) -> np.ndarray:
    """A NumPy view (or copy, for another dtype or device) of a tensor."""
    if tensor is None:
        raise TypeError("expected a tensor, got None")
    if isinstance(tensor, torch.Tensor):
        if tensor.requires_grad:
            tensor = tensor.detach()
        if tensor.device.type != "cpu":
            tensor = tensor.cpu()
        tensor = (tensor if tensor.dtype in (torch.float32, torch.float64) else tensor.float()).numpy()
    return np.asarray(tensor, dtype=dtype)


def _averager(n: int) -> torch.Tensor:
    """(n,) float32 weights 1/n: a mean as one matrix product (`weights @ rows`), cached per n."""
    weights = _AVERAGERS.get(n)
    if weights is None:
        weights = _AVERAGERS[n] = torch.full((n,), 1.0 / n, dtype=torch.float32)
    return weights


_AVERAGERS: dict[int, torch.Tensor] = {}


def _context_hash(context: torch.Tensor) -> int:
    """Fingerprint of a context summary (D,): the hash of its values as Python floats. Deterministic across
    processes (Python randomises the hashes of str and bytes, never of floats and tuples of them), and it calls
    no NumPy function (a CRC of the buffer needs a NumPy view: ~30 us more right after a forward)."""
    return hash(tuple(context.tolist()))


def _cpu_float(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor without grad, on the CPU, in float32 (itself in the common case)."""
    if tensor.requires_grad:
        tensor = tensor.detach()
    if tensor.dtype != torch.float32 or tensor.device.type != "cpu":
        tensor = tensor.to("cpu", torch.float32)
    return tensor


def _context_vector(gmm_context: torch.Tensor | None) -> torch.Tensor | None:
    """Memory summary (D,) float32 CPU tensor of a (K, D) / (1, K, D) context: its mean over slots (a new tensor).

    A matrix product with 1/K weights rather than `mean`: the forward has just run matrix products, so their
    code is warm, and a reduction's is not (right after a forward: ~35 us vs ~70 us for NumPy's product, on
    this project's 2-core machine); it agrees with `mean` to float32 rounding."""
    if gmm_context is None:
        return None
    flat = _cpu_float(gmm_context)
    flat = flat.reshape(-1, flat.shape[-1])  # (K, D)
    return flat[0].clone() if flat.shape[0] == 1 else _averager(flat.shape[0]) @ flat


def _span_embedding(token_states: torch.Tensor, s: int, e: int) -> torch.Tensor:
    """Mean token state (D,) over positions s..e of (L, D) states aligned with the logits (a new tensor)."""
    states = _cpu_float(token_states[s : e + 1])
    return states[0].clone() if e == s else _averager(e + 1 - s) @ states


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
