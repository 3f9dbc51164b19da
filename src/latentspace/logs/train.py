"""Supervised training of a `LogClassifier` (core fit loop), calibration, and evaluation metrics."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, f1_score

from ..core.errors import DataError
from ..core.runs import Run
from ..core.training import fit
from .classify import LogClassifier
from .config import LogsConfig
from .data import Examples
from .parse import LogTemplates, prepare
from .raccoon import RaccoonLearner


def tensorise(model: LogClassifier, examples: Examples) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token ids (N, T), mask (N, T) and label indices (N,) of labelled examples."""
    ids, _ = model.encode_lines(examples.lines)
    unknown = sorted(set(examples.labels) - set(model.labels))
    if unknown:
        raise DataError(f"labels {unknown} are not labels of task {model.config.task} ({list(model.labels)})")
    tokens, mask = model.tokenizer.pad(ids)
    labels = torch.tensor([model.labels.index(label) for label in examples.labels], dtype=torch.long)
    return tokens, mask, labels


def train_classifier(config: LogsConfig, train: Examples, run: Run | None = None, quiet: bool = True,
                     resume: bool = False) -> LogClassifier:
    """Train on labelled lines with class-balanced batches, mine Drain3 templates, calibrate the scorer."""
    if len(train) == 0:
        raise DataError("no training lines")
    torch.manual_seed(config.train.seed)
    model = LogClassifier(config)
    tokens, mask, labels = tensorise(model, train)
    counts = torch.bincount(labels, minlength=len(model.labels)).float()
    weights = (counts[labels].rsqrt())  # softened class balance: p(label) ~ sqrt(count)

    def data(step: int):
        gen = torch.Generator().manual_seed(config.train.seed * 100_003 + step)
        index = torch.multinomial(weights, config.batch_size, replacement=True, generator=gen)
        keep = mask[index].any(0)
        return tokens[index][:, keep], mask[index][:, keep], labels[index]

    def loss_fn(net, batch):
        x, m, y = batch
        logits = net.logits(x, m, stochastic=True)
        return F.cross_entropy(logits, y), {"acc": float((logits.argmax(-1) == y).float().mean())}

    fit(model, loss_fn, data, config.train, run=run, quiet=quiet, resume=resume, description="logs train")
    model.templates = LogTemplates()
    for line in train.lines:
        model.templates.add(prepare(line, config.task)[1])
    model.calibrate(tokens, mask, labels)
    return model


def fill_memory(learner: RaccoonLearner, examples: Examples, seed: int = 0) -> None:
    """Seed the replay memory with up to its cap of training lines (qualities from the trained model)."""
    tokens, mask, labels = tensorise(learner.model, examples)
    gen = torch.Generator().manual_seed(seed)
    index = torch.randperm(len(labels), generator=gen)[: learner.memory.max_size]
    quality, logits = learner.quality_of(tokens[index], mask[index], labels[index])
    learner.memory.add(tokens[index], labels[index], quality, logits)


def scores(true: list[str], predicted: list[str], task: str) -> dict[str, float]:
    """Accuracy, macro F1 and (bgl_alert) the F1 of the alert class."""
    out = {"acc": float(accuracy_score(true, predicted)),
           "macro_f1": float(f1_score(true, predicted, average="macro", zero_division=0))}
    if task == "bgl_alert":
        out["f1_alert"] = float(f1_score(true, predicted, pos_label="alert", average="binary", zero_division=0))
    return out


def evaluate_model(model: LogClassifier, examples: Examples) -> dict[str, float]:
    """Scores of the model's predictions on labelled lines."""
    predictions = model.classify_lines(examples.lines)
    return scores(examples.labels, [p.label for p in predictions], model.config.task)
