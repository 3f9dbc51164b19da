"""The tracker's per-segment fast path: `FastKernel`, the `belief.TrackerKernel` of every `BeliefStateTracker`.

It computes what `belief.ReferenceKernel` computes with plain torch calls (a segment's best span and calibrated
confidence, the memory summary, the re-scored confidence of past spans, the span embedding), in a different way:
a segment holds a few dozen logits, and the tracker runs right after the model's forward, which leaves the CPU's
caches cold, so what a segment costs is the number of distinct calls, not their arithmetic. Hence the span search
and the calibration run on Python floats from one `tolist` of the logits; the averages (memory summary, span
embedding) are matrix products, which the forward has just run; the held span's learned re-scoring is two
`F.linear` calls; no NumPy function is called per segment; and the tracker's parameters are read through NumPy
views of their memory, once per document on the per-segment path.
Tests check it against the reference.
"""

from __future__ import annotations

import logging
import math
import operator

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger("latentspace")


class FastKernel:
    """The tracker's per-segment arithmetic on Python floats and a few torch calls (see the module docstring).

    The parameters are read by `prepare(fresh=True)` (the first segment of each document, and every public tracker
    call): on CPU in float32 the NumPy arrays are views of the parameters themselves, so in-place updates (an
    optimizer step, `load_state_dict`, `.data.fill_`) are seen at once; the calibration floats, and a parameter
    *replaced* (a new object, `.data =`, `.to()`), are seen from the next `prepare(fresh=True)`.

    Args:
        tracker: the `BeliefStateTracker` whose parameters and settings it reads.
    """

    def __init__(self, tracker):
        self.tracker = tracker
        self._entry: tuple | None = None  # (key, arrays, calibration memoryviews, re-scorer tensors or None)
        self._arrays: tuple[np.ndarray, ...] = ()  # see `_read`
        self._calibration: tuple[float, float] | None = None  # (scale / temperature, bias); None: calibration off
        self._rescorer: tuple[torch.Tensor, ...] | None = None  # W1 (H, 2D), b1 (H,), w2 (1, H), b2 (1,)
        self._prepared = False

    def __getstate__(self):  # memoryviews do not pickle: read again after a copy
        return {"tracker": self.tracker, "_entry": None, "_arrays": (), "_calibration": None, "_rescorer": None,
                "_prepared": False}

    # ---- parameters ----------------------------------------------------------------------------------

    def prepare(self, fresh: bool) -> None:
        """Read the tracker's parameters when `fresh` (or never read): scale / temperature and bias as floats,
        the re-scorer's weights as tensors sharing the arrays' memory."""
        if not fresh and self._prepared:
            return
        key, arrays, views, tensors = self._read()
        self._arrays, self._rescorer = arrays, tensors
        if self.tracker.confidence_calibration:
            scale, bias, log_t = views  # memoryviews: mv[0] is a Python float
            self._calibration = (scale[0] / math.exp(log_t[0]), bias[0])
        else:
            self._calibration = None
        self._prepared = True

    def _read(self) -> tuple:
        """(key, arrays, memoryviews of the three calibration arrays, the re-scorer's arrays as tensors or None),
        cached while the parameters' (data pointer, version) stay the same.

        The arrays are (scale, bias, log temperature) of shape (1,), then with the learned re-scorer W1 (H, 2D),
        b1 (H,), w2 (1, H), b2 (1,). The parameters are read by name through the modules' own dicts (module
        attribute lookup costs more than the check itself); the memoryviews and tensors share the arrays' memory,
        and reading a float through a memoryview or multiplying by a tensor calls no NumPy function.
        """
        tracker = self.tracker
        own = tracker._parameters
        params = [own["confidence_scaler"], own["confidence_bias"], own["log_temperature"]]
        net = tracker._modules.get("re_score_network")
        if net is not None:
            first, second = net._modules["0"]._parameters, net._modules["2"]._parameters
            params += [first["weight"], first["bias"], second["weight"], second["bias"]]
        key = tuple((p.data_ptr(), p._version) for p in params)
        cached = self._entry
        if cached is not None and cached[0] == key:
            return cached
        arrays = tuple(p.detach().numpy() if p.device.type == "cpu" and p.dtype == torch.float32
                       else p.detach().float().cpu().numpy() for p in params)
        views = tuple(memoryview(a) for a in arrays[:3])
        tensors = tuple(torch.from_numpy(a) for a in arrays[3:]) or None  # no copy: the arrays' memory
        self._entry = (key, arrays, views, tensors)
        return self._entry

    # ---- per segment ---------------------------------------------------------------------------------

    def summary(self, gmm_context: torch.Tensor | None) -> torch.Tensor | None:
        """Memory summary (D,) of a (K, D) / (1, K, D) context: its mean over slots (a new float32 CPU tensor)."""
        return context_vector(gmm_context)

    def best_span(self, start: torch.Tensor, end: torch.Tensor) -> tuple[int, int, float, float]:
        """(start, end, z, confidence) of one segment's logits (L,) each, index 0 = null: the best non-null span
        (`best_span_lists`), its span-vs-null logit z and its calibrated confidence."""
        start, end = start.tolist(), end.tolist()  # (L,) each, Python floats
        s, e, best = best_span_lists(start, end, self.tracker.max_answer_len)
        z = best - (start[0] + end[0])
        calibration = self._calibration
        return s, e, z, _sigmoid(calibration[0] * z + calibration[1] if calibration is not None else z)

    def span_embedding(self, token_states: torch.Tensor, s: int, e: int) -> torch.Tensor:
        """Mean token state (D,) over positions s..e of (L, D) states aligned with the logits."""
        return span_embedding(token_states, s, e)

    def re_score(self, past_spans: list, context: torch.Tensor | None) -> list[float]:
        """Re-scored confidences of `past_spans` given the context summary now (D,): batched over the P spans in
        a few NumPy ops; the original confidences (with a warning) when a span lacks what re-scoring needs."""
        return self._re_score(past_spans, None if context is None else context.numpy())

    def re_score_held(self, held, context: torch.Tensor | None) -> float:
        """`re_score` of the one candidate `update_belief` re-scores, in three torch calls."""
        rescorer, embedding = self._rescorer, held.span_embedding
        if (self.tracker.re_scoring_method != "learned" or rescorer is None or context is None or embedding is None
                or embedding.dtype != torch.float32 or embedding.device.type != "cpu"):
            # cosine weighting, or the general path's conversions and fallbacks
            return self.re_score([held], context)[0]
        w1, b1, w2, b2 = rescorer
        hidden = F.linear(torch.cat((embedding, context)), w1, b1)  # (H,): [span embedding, context now]
        return held.confidence * _sigmoid(F.linear(hidden.relu_(), w2, b2).item())

    def _re_score(self, past_spans: list, now: np.ndarray | None) -> list[float]:
        if not past_spans:
            return []
        try:
            if now is None:
                raise TypeError("no memory context to re-score with")
            if self.tracker.re_scoring_method == "learned":
                w1, b1, w2, b2 = self._arrays[3:]
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


def best_span_lists(start: list[float], end: list[float], max_answer_len: int) -> tuple[int, int, float]:
    """(start, end, score) of the best non-null span of one segment's logits, Python lists (L,) each with
    index 0 = null: what `belief.best_span_scores` (the batched torch search) returns for one row, ties included
    (the higher sum, then the smaller start, then the shorter span). The band is searched one span length
    at a time with the interpreter's own map / max, so no NumPy call is made."""
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


def _cpu_float(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor without grad, on the CPU, in float32 (itself in the common case)."""
    if tensor.requires_grad:
        tensor = tensor.detach()
    if tensor.dtype != torch.float32 or tensor.device.type != "cpu":
        tensor = tensor.to("cpu", torch.float32)
    return tensor


def context_vector(gmm_context: torch.Tensor | None) -> torch.Tensor | None:
    """Memory summary (D,) float32 CPU tensor of a (K, D) / (1, K, D) context: its mean over slots (a new tensor).

    A matrix product with 1/K weights rather than `mean`: the forward has just run matrix products, so their
    code is warm, and a reduction's is not; it agrees with `mean` to float32 rounding."""
    if gmm_context is None:
        return None
    flat = _cpu_float(gmm_context)
    flat = flat.reshape(-1, flat.shape[-1])  # (K, D)
    return flat[0].clone() if flat.shape[0] == 1 else _averager(flat.shape[0]) @ flat


def span_embedding(token_states: torch.Tensor, s: int, e: int) -> torch.Tensor:
    """Mean token state (D,) over positions s..e of (L, D) states aligned with the logits (a new tensor)."""
    states = _cpu_float(token_states[s : e + 1])
    return states[0].clone() if e == s else _averager(e + 1 - s) @ states
