"""Training, calibration and evaluation of an RBS-QA model (used by the CLI, the demo and the benchmark).

With a frozen encoder every segment input is encoded once (`segment_features`, cached by content hash
through `core.backbones.EmbeddingCache`), so training touches only the memory, the reasoning layers and
the QA head (and the learned re-scorer, when chosen, jointly: `RBSQAModel.training_loss`). After
training, temperature scaling is fitted on the validation split.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import re
import string
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch

from ..core.backbones import EmbeddingCache
from ..core.progress import track
from ..core.runs import Run
from ..core.training import fit, seed_everything
from .belief import expected_calibration_error, fit_temperature
from .config import RBSQAConfig
from .data import EncodedDocument, build_documents, encode_document
from .halting import halts
from .model import RBSQAModel
from .reading import Trajectory, answer_without_tracker, read_document

log = logging.getLogger("latentspace")


# ---- answers ---------------------------------------------------------------------------------------------


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def f1_score(prediction: str, truth: str) -> float:
    """SQuAD token F1 between two answers."""
    pred, gold = normalize_answer(prediction).split(), normalize_answer(truth).split()
    common = sum((Counter(pred) & Counter(gold)).values())
    if not pred or not gold:
        return float(pred == gold)
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(truth))


# ---- features and batches ----------------------------------------------------------------------------------


def encode_split(model: RBSQAModel, config: RBSQAConfig, split: str) -> list[EncodedDocument]:
    return [encode_document(doc, model.tokenizer, config) for doc in build_documents(config, split)]


def segment_features(model: RBSQAModel, docs: list[EncodedDocument], cache: EmbeddingCache | None = None,
                     quiet: bool = True, batch_size: int = 64) -> list[torch.Tensor] | None:
    """Frozen-encoder states per document, (S, L, D) in float16, each segment encoded once; None if trainable."""
    if not model.config.freeze_encoder:
        return None
    if cache is None:
        cache = EmbeddingCache(namespace=f"{model.config.encoder}:{model.config.encoder_layers}")
    pad = model.tokenizer.pad_token_id

    def encode_fn(keys: list[str]) -> torch.Tensor:
        ids = torch.tensor([[int(t) for t in k.split()] for k in keys])  # (N, L)
        return model.encode(ids, (ids != pad).long()).half()  # (N, L, D)

    keys = [k for d in docs for k in d.cache_keys()]
    chunks = [keys[i : i + batch_size] for i in range(0, len(keys), batch_size)]
    rows = [cache.encode(chunk, encode_fn, batch_size) for chunk in track(chunks, description="encoding segments",
                                                                            quiet=quiet, unit="batch")]
    flat = torch.cat(rows) if rows else torch.empty(0)
    out, at = [], 0
    for d in docs:
        out.append(flat[at : at + d.num_segments])
        at += d.num_segments
    return out


def collate(docs: list[EncodedDocument], features: list[torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """Pad documents to the longest one: (B, S, L) tensors, (B, S) golds, segment mask and answer ids (equal
    ids: the same answer after both segments; -1 before the first), (B, S, L, E) cached encoder states."""
    B, S, L = len(docs), max(d.num_segments for d in docs), docs[0].input_ids.shape[1]
    batch = {"input_ids": torch.zeros(B, S, L, dtype=torch.long),
             "attention_mask": torch.zeros(B, S, L, dtype=torch.long),
             "context_mask": torch.zeros(B, S, L, dtype=torch.bool),
             "gold_start": torch.zeros(B, S, dtype=torch.long), "gold_end": torch.zeros(B, S, dtype=torch.long),
             "segment_mask": torch.zeros(B, S, dtype=torch.bool),
             "answer_id": torch.full((B, S), -1, dtype=torch.long)}
    if features is not None:
        batch["hidden"] = torch.zeros(B, S, L, features[0].shape[-1])
    for b, d in enumerate(docs):
        n = d.num_segments
        batch["input_ids"][b, :n] = d.input_ids
        batch["attention_mask"][b, :n] = d.attention_mask
        batch["attention_mask"][b, n:, 0] = 1  # padding segments attend to [CLS] only (no empty softmax)
        batch["context_mask"][b, :n] = d.context_mask
        batch["gold_start"][b, :n] = d.gold_start
        batch["gold_end"][b, :n] = d.gold_end
        batch["segment_mask"][b, :n] = True
        ids: dict[str, int] = {}
        batch["answer_id"][b, :n] = torch.tensor([-1 if a is None else ids.setdefault(a, len(ids)) for a in d.states])
        if features is not None:
            batch["hidden"][b, :n] = features[b].float()
    return batch


# ---- training --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class TrainedModel:
    model: RBSQAModel
    val_docs: list[EncodedDocument]
    val_features: list[torch.Tensor] | None
    calibration: dict
    train_seconds: float


def train_model(config: RBSQAConfig, run: Run | None = None, quiet: bool = False,
                resume: bool = False) -> TrainedModel:
    """Build, train (memory + reasoning + QA head + learned re-scorer) and calibrate on validation."""
    import time

    t0 = time.perf_counter()
    seed_everything(config.seed)  # the new layers' initialisation too, so that a run is reproducible
    model = RBSQAModel(config)
    train_docs = encode_split(model, config, "train")
    val_docs = encode_split(model, config, "val")
    cache = EmbeddingCache(namespace=f"{config.encoder}:{config.encoder_layers}")
    train_features = segment_features(model, train_docs, cache, quiet)
    val_features = segment_features(model, val_docs, cache, quiet)

    def batch_at(step: int) -> dict[str, torch.Tensor]:
        rng = random.Random(config.seed * 100003 + step)
        idx = rng.sample(range(len(train_docs)), min(config.batch_size, len(train_docs)))
        return collate([train_docs[i] for i in idx], None if train_features is None else
                       [train_features[i] for i in idx])

    # the calibration parameters are fitted afterwards on validation; the learned re-scorer trains jointly
    params = [p for n, p in model.named_parameters()
              if p.requires_grad and (not n.startswith("tracker.") or n.startswith("tracker.re_score_network."))]
    fit(model, lambda m, batch: m.training_loss(batch), batch_at, config.train, run=run, resume=resume, quiet=quiet,
        parameters=params, description="training rbsqa")
    model.eval()
    calibration = {}
    if model.tracker is not None:
        halt_docs = halt_features = None
        if config.halting_f1_tolerance is not None and config.halting_val_docs:
            halt_docs = encode_split(model, config, "halt")  # long validation documents for the halting bound
            halt_features = segment_features(model, halt_docs, cache, quiet)
        calibration = calibrate(model, val_docs, val_features, halt_docs, halt_features)
    return TrainedModel(model, val_docs, val_features, calibration, time.perf_counter() - t0)


def candidate_scores(model: RBSQAModel, docs: list[EncodedDocument],
                     features: list[torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(z, correct): each segment's best span-vs-null logit and whether the span is the answer at that point."""
    zs, correct = [], []
    for i, doc in enumerate(docs):
        traj = read_document(model, doc, None if features is None else features[i])
        for step in traj.steps:
            zs.append(step.candidate_score)
            correct.append(exact_match(step.candidate_text, doc.states[step.segment] or "\x00"))
    return torch.tensor(zs), torch.tensor(correct)


def calibrate(model: RBSQAModel, docs: list[EncodedDocument], features: list[torch.Tensor] | None,
              halting_docs: list[EncodedDocument] | None = None,
              halting_features: list[torch.Tensor] | None = None) -> dict:
    """Temperature scaling on a validation split, ECE before and after (on that split), then the halting
    threshold (`fit_halting_threshold`, on `halting_docs`, default `docs`) when the config asks for one."""
    z, correct = candidate_scores(model, docs, features)
    before = expected_calibration_error(torch.sigmoid(z), correct)
    info = fit_temperature(model.tracker, z, correct) if model.config.confidence_calibration else {}
    with torch.no_grad():
        after = expected_calibration_error(model.tracker.calibrate(z), correct)
    info = {**info, "val_ece_uncalibrated": before, "val_ece_calibrated": after, "val_candidates": len(z)}
    if model.config.halting_f1_tolerance is not None:
        if halting_docs is None:
            halting_docs, halting_features = docs, features
        info.update(fit_halting_threshold(model, halting_docs, halting_features, model.config.halting_f1_tolerance,
                                          model.config.halting_delta))
    return info


def hoeffding_bentkus_p_value(mean_loss: float, n: int, alpha: float) -> float:
    """p-value of "the expected loss exceeds `alpha`" after `n` losses in [0, 1] with mean `mean_loss`.

    The Hoeffding-Bentkus bound of Learn-then-Test (Angelopoulos et al. 2021, eq. 9; Bates et al. 2021):
    min(exp(-n h(min(mean, alpha), alpha)), e P(Binomial(n, alpha) <= ceil(n mean))), h the Bernoulli KL
    divergence. Small p: the risk is at most `alpha` with confidence 1 - p.
    """
    if n <= 0:
        return 1.0
    if mean_loss >= alpha:
        return 1.0
    a = min(mean_loss, alpha)
    kl = (a * math.log(a / alpha) if a > 0 else 0.0) + (1 - a) * math.log((1 - a) / (1 - alpha))
    k = math.ceil(n * mean_loss - 1e-9)
    cdf = sum(math.comb(n, i) * alpha ** i * (1 - alpha) ** (n - i) for i in range(k + 1))
    return min(1.0, math.exp(-n * kl), math.e * cdf)


def select_halting_threshold(losses_at: Callable[[float], list[float]], candidates: list[float], alpha: float,
                             delta: float) -> tuple[float | None, float]:
    """Learn-then-Test: the lowest threshold, tested from the highest candidate down (fixed-sequence testing),
    whose halting loss is certified <= `alpha` at level `delta`; stops at the first threshold that fails.

    Args:
        losses_at: per-document losses in [0, 1] of halting at a threshold (F1 reading everything minus F1
            halting, clipped at 0).
        candidates: thresholds to test, any order.
    Returns:
        (the selected threshold, None when even the highest one fails; its p-value)
    """
    chosen, p_chosen = None, 1.0
    for threshold in sorted(candidates, reverse=True):
        losses = losses_at(threshold)
        p = hoeffding_bentkus_p_value(sum(losses) / len(losses), len(losses), alpha) if losses else 1.0
        if p > delta:
            break
        chosen, p_chosen = threshold, p
    return chosen, p_chosen


def halting_reads(model: RBSQAModel, docs: list[EncodedDocument],
                  features: list[torch.Tensor] | None) -> list[tuple[list[float], list[int], list[float]]]:
    """(belief confidence history, segments in a row the belief span has been the same, F1 of the belief)
    after each segment of full reads of the long documents."""
    reads = []
    for i, doc in enumerate(docs):
        if doc.doc.kind not in ("long", "squad"):
            continue
        traj = read_document(model, doc, None if features is None else features[i])
        stable, run = [], 0
        for t, step in enumerate(traj.steps):
            run = run + 1 if t and step.belief_span == traj.steps[t - 1].belief_span else 1
            stable.append(run)
        reads.append(([s.confidence for s in traj.steps], stable,
                      [f1_score(s.belief_text, doc.doc.answer) for s in traj.steps]))
    return reads


def fit_halting_threshold(model: RBSQAModel, docs: list[EncodedDocument], features: list[torch.Tensor] | None,
                          tolerance: float = 0.01, delta: float = 0.05, method: str = "ltt") -> dict:
    """The halting threshold, chosen on validation long documents; sets the tracker's and the config's.

    Halting is simulated on full-read trajectories: the belief after the first segment at which
    `should_halt` would hold for a threshold is the answer halting would give. A document's loss is the F1
    reading everything minus the F1 halting, clipped at 0.

    method "ltt" (default): risk-controlled selection (`select_halting_threshold`): the lowest threshold whose
        mean loss is <= `tolerance` with confidence 1 - `delta` (Hoeffding-Bentkus bound, Learn-then-Test).
    method "empirical": the lowest threshold whose mean F1 on these documents is within `tolerance` of
        reading everything (the old rule: on 50 documents it picks thresholds that lose F1 on fresh ones).
    """
    tracker = model.tracker
    reads = halting_reads(model, docs, features)
    if not reads:
        return {}

    def stop_at(history: list[float], stable: list[int], threshold: float) -> int:
        return next((t for t in range(len(history))
                     if halts(history[: t + 1], threshold, tracker.enable_trend_analysis, stable[t],
                              tracker.stable_segments)), len(history) - 1)

    def losses_at(threshold: float) -> list[float]:
        return [max(0.0, scores[-1] - scores[stop_at(history, stable, threshold)])
                for history, stable, scores in reads]

    def halted(threshold: float) -> tuple[float, float]:
        """(mean F1, fraction of segments read) when halting at `threshold`."""
        stops = [stop_at(history, stable, threshold) for history, stable, _ in reads]
        return (sum(r[2][t] for t, r in zip(stops, reads, strict=True)) / len(reads),
                sum((t + 1) / len(r[0]) for t, r in zip(stops, reads, strict=True)) / len(reads))

    full = sum(scores[-1] for _, _, scores in reads) / len(reads)
    never = 1.0 + 1e-9  # above any confidence: read everything
    candidates = sorted({c for history, _, _ in reads for c in history if c > 0.5})
    info: dict = {}
    if method == "ltt":
        threshold, p = select_halting_threshold(losses_at, candidates, tolerance, delta)
        threshold = never if threshold is None else threshold
        losses = losses_at(threshold)
        info = {"halting_p_value": p, "halting_delta": delta, "val_halting_loss": sum(losses) / len(losses)}
    elif method == "empirical":
        threshold = next((c for c in candidates if halted(c)[0] >= full - tolerance), never)
    else:
        raise ValueError(f"halting selection method {method!r}: expected ltt or empirical")
    tracker.confidence_threshold = model.config.belief_state_threshold = min(threshold, 1.0)
    f1, read = halted(threshold)
    return {"halting_threshold": threshold, "halting_method": method, "halting_tolerance": tolerance,
            "halting_stable_segments": tracker.stable_segments,
            **info, "val_halting_docs": len(reads), "val_f1_full_read": full, "val_f1_halting": f1,
            "val_segments_read_frac_halting": read}


# ---- evaluation ------------------------------------------------------------------------------------------


def evaluate_documents(model: RBSQAModel, docs: list[EncodedDocument], features: list[torch.Tensor] | None,
                       quiet: bool = True) -> tuple[dict[str, float], list[dict]]:
    """EM/F1 with and without the tracker, revision detection, halting and ECE on a set of documents.

    Returns:
        (metrics, per-document records with both trajectories)
    """
    rows = []
    zs, correct = [], []
    for i, doc in enumerate(track(docs, description="evaluating", quiet=quiet, unit="doc")):
        hidden = None if features is None else features[i]
        full = read_document(model, doc, hidden, halt=False)
        halted = read_document(model, doc, hidden, halt=True)
        _, base_text, _ = answer_without_tracker(model, doc, hidden)
        truth = doc.doc.answer
        detected, false_revisions, span_only = _revisions(full, doc)
        for step in full.steps:
            zs.append(step.candidate_score)
            correct.append(exact_match(step.candidate_text, doc.states[step.segment] or "\x00"))
        rows.append({"doc_id": doc.doc.doc_id, "kind": doc.doc.kind, "question": doc.doc.question, "answer": truth,
                     "f1_tracker": f1_score(full.answer_text, truth),
                     "em_tracker": exact_match(full.answer_text, truth),
                     "f1_baseline": f1_score(base_text, truth), "em_baseline": exact_match(base_text, truth),
                     "f1_halting": f1_score(halted.answer_text, truth), "segments": doc.num_segments,
                     "segments_read_halting": halted.segments_read, "revision_points": len(doc.revision_points),
                     "revisions_detected": len(detected), "false_revisions": len(false_revisions),
                     "span_only_revisions": len(span_only),
                     "tracker_bytes": full.bytes, "prediction": full.answer_text, "baseline_prediction": base_text,
                     "trajectory": full.to_dict()})
    z, ok = torch.tensor(zs), torch.tensor(correct)

    def mean(key: str, kinds: tuple[str, ...] | None = None) -> float:
        sel = [r[key] for r in rows if kinds is None or r["kind"] in kinds]
        return sum(sel) / len(sel) if sel else float("nan")

    def frac(num: str, den: str, kinds: tuple[str, ...] | None = None) -> float:
        sel = [r for r in rows if kinds is None or r["kind"] in kinds]
        total = sum(r[den] for r in sel)
        return sum(r[num] for r in sel) / total if total else float("nan")

    stories, long_docs = ("story", "babi"), ("long", "squad")
    with torch.no_grad():
        metrics = {
            "f1_with_tracker": mean("f1_tracker"), "f1_without_tracker": mean("f1_baseline"),
            "em_with_tracker": mean("em_tracker"), "em_without_tracker": mean("em_baseline"),
            "f1_with_tracker_stories": mean("f1_tracker", stories),
            "f1_without_tracker_stories": mean("f1_baseline", stories),
            "f1_with_tracker_long": mean("f1_tracker", long_docs),
            "f1_without_tracker_long": mean("f1_baseline", long_docs),
            "revision_detection_rate": frac("revisions_detected", "revision_points", stories),
            "false_revisions_per_doc": mean("false_revisions", stories),
            "span_only_revisions_per_doc": mean("span_only_revisions", stories),
            "ece_uncalibrated": expected_calibration_error(torch.sigmoid(z), ok),
            "ece_calibrated": expected_calibration_error(model.tracker.calibrate(z), ok),
            "f1_full_read_long": mean("f1_tracker", long_docs),
            "f1_halting": mean("f1_halting", long_docs),
            "segments_read_frac_halting": frac("segments_read_halting", "segments", long_docs),
            "tracker_bytes_per_doc": mean("tracker_bytes"),
            "documents": len(rows),
        }
    return metrics, rows


def _revisions(traj: Trajectory, doc: EncodedDocument) -> tuple[list[int], list[int], list[int]]:
    """(detected, false, span-only) revisions of a full read, on the answer as the ground truth is.

    The ground-truth revision points are where the *answer* (text) changes, so the tracker is measured on
    its answer too: a true change at segment p is detected when the belief changes at p to the new answer;
    a false revision is a change of the believed answer at a segment where the true answer does not change.
    A belief that moves to a newer occurrence of the same answer (the person left and came back within one
    segment: "kitchen" -> "kitchen") follows the evidence without revising the answer, so it is not a false
    revision; those span-only changes are returned third, so that they can still be reported.
    """
    detected = [p for p in doc.revision_points
                if traj.steps[p].revised and exact_match(traj.steps[p].belief_text, doc.states[p] or "")]
    false, span_only = [], []
    for prev, step in zip(traj.steps, traj.steps[1:], strict=False):
        if step.revised and step.segment not in doc.revision_points:
            same = normalize_answer(step.belief_text) == normalize_answer(prev.belief_text)
            (span_only if same else false).append(step.segment)
    return detected, false, span_only


def revision_detection(model: RBSQAModel, docs: list[EncodedDocument],
                       features: list[torch.Tensor] | None) -> dict[str, float]:
    """Revision detection rate and false revisions per document of the tracker as it is set now (stories only)."""
    points = detected = false = stories = 0
    for i, doc in enumerate(docs):
        if doc.doc.kind not in ("story", "babi"):
            continue
        good, bad, _ = _revisions(read_document(model, doc, None if features is None else features[i]), doc)
        points += len(doc.revision_points)
        detected += len(good)
        false += len(bad)
        stories += 1
    return {"revision_detection_rate": detected / points if points else float("nan"),
            "false_revisions_per_doc": false / stories if stories else float("nan")}


def load_or_train(checkpoint: Path | None, config: RBSQAConfig, run: Run, quiet: bool) -> RBSQAModel:
    """A trained model from a checkpoint folder, or train one now into `run`."""
    if checkpoint is not None:
        return RBSQAModel.load(checkpoint)
    trained = train_model(config, run, quiet)
    trained.model.save(run.path / "model")
    return trained.model
