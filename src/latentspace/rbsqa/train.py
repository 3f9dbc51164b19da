"""Training, calibration and evaluation of an RBS-QA model (used by the CLI, the demo and the benchmark).

With a frozen encoder every segment input is encoded once (`segment_features`, cached by content hash
through `core.backbones.EmbeddingCache`), so training touches only the memory, the reasoning layers and
the QA head. After training: the learned re-scorer (when chosen) is fitted, and temperature scaling is
fitted on the validation split.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import re
import string
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F

from ..core.backbones import EmbeddingCache
from ..core.progress import track
from ..core.runs import Run
from ..core.training import TrainConfig, fit
from .belief import expected_calibration_error, fit_temperature
from .config import RBSQAConfig
from .data import EncodedDocument, build_documents, encode_document
from .halting import answer_without_tracker, read_document
from .model import RBSQAModel

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
    cache = cache if cache is not None else EmbeddingCache(namespace=model.config.encoder)
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
    """Pad documents to the longest one: (B, S, L) tensors, (B, S) golds and segment mask, (B, S, L, D) states."""
    B, S, L = len(docs), max(d.num_segments for d in docs), docs[0].input_ids.shape[1]
    batch = {"input_ids": torch.zeros(B, S, L, dtype=torch.long),
             "attention_mask": torch.zeros(B, S, L, dtype=torch.long),
             "context_mask": torch.zeros(B, S, L, dtype=torch.bool),
             "gold_start": torch.zeros(B, S, dtype=torch.long), "gold_end": torch.zeros(B, S, dtype=torch.long),
             "segment_mask": torch.zeros(B, S, dtype=torch.bool)}
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
    """Build, train (memory + reasoning + QA head), fit the re-scorer and calibrate on validation."""
    import time

    t0 = time.perf_counter()
    model = RBSQAModel(config)
    train_docs = encode_split(model, config, "train")
    val_docs = encode_split(model, config, "val")
    cache = EmbeddingCache(namespace=config.encoder)
    train_features = segment_features(model, train_docs, cache, quiet)
    val_features = segment_features(model, val_docs, cache, quiet)

    def batch_at(step: int) -> dict[str, torch.Tensor]:
        rng = random.Random(config.seed * 100003 + step)
        idx = rng.sample(range(len(train_docs)), min(config.batch_size, len(train_docs)))
        return collate([train_docs[i] for i in idx], None if train_features is None else
                       [train_features[i] for i in idx])

    train_config = TrainConfig(steps=config.steps, lr=config.lr, warmup_steps=min(50, config.steps // 10),
                               log_every=max(1, config.steps // 50), seed=config.seed, cpu=True)
    params = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("tracker.")]
    fit(model, lambda m, batch: m.qa_loss(batch), batch_at, train_config, run=run, resume=resume, quiet=quiet,
        parameters=params, description="training rbsqa")
    model.eval()
    if model.tracker is not None and model.tracker.re_score_network is not None:
        fit_re_scorer(model, train_docs, train_features, config.re_scorer_steps)
    calibration = calibrate(model, val_docs, val_features) if model.tracker is not None else {}
    return TrainedModel(model, val_docs, val_features, calibration, time.perf_counter() - t0)


@torch.no_grad()
def _segment_states(model: RBSQAModel, doc: EncodedDocument, hidden: torch.Tensor | None):
    """Per segment: tracker-aligned token states (1 + segment_len, D) and the memory summary (D,) after it."""
    memory = model.init_memory(1)
    out_states, contexts = [], []
    for s in range(doc.num_segments):
        att = doc.attention_mask[s : s + 1]
        h = model.encode(doc.input_ids[s : s + 1], att) if hidden is None else hidden[s : s + 1].float()
        out = model.segment_forward(h, att, doc.context_mask[s : s + 1], memory)
        memory = out["memory"]
        out_states.append(out["states"][0][model.tracker_index])
        contexts.append(model.memory.summary(memory)[0])
    return out_states, contexts


def fit_re_scorer(model: RBSQAModel, docs: list[EncodedDocument], features: list[torch.Tensor] | None,
                  steps: int = 200, seed: int = 0) -> dict:
    """Train the tracker's learned re-scorer: is the span found at segment s still the answer after s' > s?

    Each pair is [mean state of the gold span at s, memory summary after s'] -> 1 if the answer after s'
    is still that span's text, else 0 (documents and their answer changes give both kinds).
    """
    net = model.tracker.re_score_network
    xs, ys = [], []
    for i, doc in enumerate(docs):
        states, contexts = _segment_states(model, doc, None if features is None else features[i])
        offset = model.config.context_start - 1
        for s in range(doc.num_segments):
            if int(doc.gold_start[s]) == 0:
                continue
            a, b = int(doc.gold_start[s]) - offset, int(doc.gold_end[s]) - offset
            emb = states[s][a : b + 1].mean(0)
            for later in range(s + 1, doc.num_segments):
                xs.append(torch.cat([emb, contexts[later]]))
                ys.append(float(doc.states[later] == doc.states[s]))
    if not xs:
        return {"pairs": 0}
    x, y = torch.stack(xs), torch.tensor(ys)
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    with torch.enable_grad():
        for _ in range(steps):
            idx = torch.randint(0, len(x), (min(256, len(x)),), generator=gen)
            loss = F.binary_cross_entropy(net(x[idx]).squeeze(-1).clamp(1e-6, 1 - 1e-6), y[idx])
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            optimizer.step()
    with torch.no_grad():
        acc = float(((net(x).squeeze(-1) > 0.5).float() == y).float().mean())
    return {"pairs": len(x), "accuracy": acc, "positive_frac": float(y.mean())}


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


def calibrate(model: RBSQAModel, docs: list[EncodedDocument], features: list[torch.Tensor] | None) -> dict:
    """Temperature scaling on a validation split; ECE before and after (on that split)."""
    z, correct = candidate_scores(model, docs, features)
    before = expected_calibration_error(torch.sigmoid(z), correct)
    info = fit_temperature(model.tracker, z, correct) if model.config.confidence_calibration else {}
    with torch.no_grad():
        after = expected_calibration_error(model.tracker.calibrate(z), correct)
    return {**info, "val_ece_uncalibrated": before, "val_ece_calibrated": after, "val_candidates": len(z)}


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
        detected = [p for p in doc.revision_points
                    if full.steps[p].revised and exact_match(full.steps[p].belief_text, doc.states[p] or "")]
        false_revisions = [s for s in full.revisions if s not in doc.revision_points]
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
            "ece_uncalibrated": expected_calibration_error(torch.sigmoid(z), ok),
            "ece_calibrated": expected_calibration_error(model.tracker.calibrate(z), ok),
            "f1_full_read_long": mean("f1_tracker", long_docs),
            "f1_halting": mean("f1_halting", long_docs),
            "segments_read_frac_halting": frac("segments_read_halting", "segments", long_docs),
            "tracker_bytes_per_doc": mean("tracker_bytes"),
            "documents": len(rows),
        }
    return metrics, rows


def load_or_train(checkpoint: Path | None, config: RBSQAConfig, run: Run, quiet: bool) -> RBSQAModel:
    """A trained model from a checkpoint folder, or train one now into `run`."""
    if checkpoint is not None:
        return RBSQAModel.load(checkpoint)
    trained = train_model(config, run, quiet)
    trained.model.save(run.path / "model")
    return trained.model
