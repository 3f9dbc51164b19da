"""Log classifier and anomaly scorer on the LTT encoder's latent, with batched, cached inference.

`LogClassifier`: tokens (B, T) -> LTT `DeterministicEncoder` latents (B, T, D) -> masked mean (B, D) ->
Raccoon's `LatentSDE` to z1 (B, D) -> classification head (B, C). The anomaly score of a line is its
distance to the nearest class centroid of z1, divided by the `anomaly_quantile` of training distances
(a score > 1 is rarer than that quantile of the training lines).

`classify_lines` is the fast path: lines are tokenised once, identical token sequences (the same
template with the same masked variables) share one forward pass through an LRU cache, and the rest go
through the network in length-sorted batches. `classify_lines_reference` runs one line at a time.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..core.checkpoint import CheckpointMixin
from ..ltt.config import nest_encoder_fields
from ..ltt.encoder import DeterministicEncoder
from .config import LogsConfig
from .parse import SEVERITIES, LogTemplates, LogTokenizer, prepare
from .raccoon import LatentSDE

LABELS = {"bgl_alert": ("normal", "alert"), "severity": SEVERITIES}
ALERT_LABELS = {"bgl_alert": ("alert",), "severity": ("ERROR",)}


@dataclass
class Prediction:
    """One classified line."""

    label: str
    confidence: float
    anomaly_score: float
    alert: bool
    template_id: int = -1
    template: str = ""
    true_label: str | None = None


class LogClassifier(CheckpointMixin, nn.Module):
    """Classification head and centroid anomaly scorer on LTT latents evolved by Raccoon's SDE."""

    family = "logs"
    config_class = LogsConfig

    def __init__(self, config: LogsConfig):
        super().__init__()
        self.config = config
        self.labels = LABELS[config.task]
        self.tokenizer = LogTokenizer(config.hash_buckets, config.max_len)
        self.encoder = DeterministicEncoder(config.encoder, self.tokenizer.vocab_size, config.max_len)
        latent_dim = config.encoder.latent_dim
        self.dynamics = LatentSDE(latent_dim, hidden=2 * latent_dim, sigma=config.sde_sigma, steps=config.sde_steps)
        self.head = nn.Linear(latent_dim, len(self.labels))
        self.register_buffer("centroids", torch.zeros(len(self.labels), latent_dim))  # (C, D)
        self.register_buffer("anomaly_scale", torch.ones(()))
        self._cache: OrderedDict[tuple[int, ...], tuple[int, float, float]] = OrderedDict()
        self.cache_size = 100_000
        self.templates: LogTemplates | None = None

    # ---- network ---------------------------------------------------------------------------------------

    def embed(self, tokens: torch.Tensor, mask: torch.Tensor, stochastic: bool = False) -> torch.Tensor:
        """Line latents z1 (B, D) from tokens (B, T) and mask (B, T)."""
        z = self.encoder(tokens, mask)  # (B, T, D)
        weights = mask.unsqueeze(-1).to(z.dtype)  # (B, T, 1)
        z0 = (z * weights).sum(1) / weights.sum(1).clamp_min(1.0)  # (B, D)
        return self.dynamics(z0, stochastic=stochastic)  # (B, D)

    def logits(self, tokens: torch.Tensor, mask: torch.Tensor, stochastic: bool = False) -> torch.Tensor:
        """Class logits (B, C)."""
        return self.head(self.embed(tokens, mask, stochastic))

    def anomaly(self, z: torch.Tensor) -> torch.Tensor:
        """Distance of z (B, D) to the nearest centroid over the calibrated scale; (B,)."""
        return torch.cdist(z, self.centroids).min(1).values / self.anomaly_scale

    @torch.no_grad()
    def calibrate(self, tokens: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, batch: int = 512) -> None:
        """Set class centroids (C, D) and the anomaly scale from training lines tokens (N, T), labels (N,)."""
        self.eval()
        z = torch.cat([self.embed(tokens[i:i + batch], mask[i:i + batch]) for i in range(0, len(tokens), batch)])
        for c in range(len(self.labels)):
            chosen = z[labels == c]
            if len(chosen):
                self.centroids[c] = chosen.mean(0)
            else:
                self.centroids[c] = z.mean(0)
        distances = torch.cdist(z, self.centroids).min(1).values  # (N,)
        self.anomaly_scale.fill_(float(torch.quantile(distances, self.config.anomaly_quantile).clamp_min(1e-6)))
        self.invalidate_cache()

    def invalidate_cache(self) -> None:
        self._cache.clear()

    # ---- checkpoint extras: the Drain templates ------------------------------------------------------

    def checkpoint_files(self) -> dict[str, str | bytes]:
        import json

        return {"templates.json": json.dumps(self.templates.to_dict())} if self.templates is not None else {}

    @classmethod
    def _config_from_checkpoint(cls, data: dict):
        return cls.config_class.from_dict(nest_encoder_fields(data))  # models trained before EncoderConfig

    @classmethod
    def _build_from_checkpoint(cls, config, directory: Path):
        model = cls(config)
        if (directory / "templates.json").is_file():
            model.templates = LogTemplates.load(directory / "templates.json")
        return model

    # ---- inference -------------------------------------------------------------------------------------

    def encode_lines(self, lines: list[str]) -> tuple[list[tuple[int, ...]], list[str | None]]:
        """Prepare (task's label field removed) and tokenise lines; returns ids and the labels they carried."""
        ids, carried = [], []
        for line in lines:
            label, text = prepare(line, self.config.task)
            carried.append(label)
            ids.append(self.tokenizer.encode(text))
        return ids, carried

    @torch.no_grad()
    def _forward_unique(self, sequences: list[tuple[int, ...]], batch_size: int) -> None:
        """Run uncached sequences through the network in length-sorted batches and cache the results."""
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
        for start in range(0, len(order), batch_size):
            chunk = [sequences[i] for i in order[start:start + batch_size]]
            tokens, mask = self.tokenizer.pad(chunk)  # (B, T)
            z = self.embed(tokens, mask)  # (B, D)
            probs = self.head(z).softmax(-1)  # (B, C)
            confidence, label = probs.max(-1)
            scores = self.anomaly(z)
            for seq, c, p, s in zip(chunk, label.tolist(), confidence.tolist(), scores.tolist(), strict=True):
                self._cache[seq] = (c, p, s)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def classify_ids(self, ids: list[tuple[int, ...]], batch_size: int = 256) -> list[tuple[int, float, float]]:
        """(label index, confidence, anomaly score) per token sequence, batched and cached."""
        self.eval()
        missing = list({seq: None for seq in ids if seq not in self._cache})
        if missing:
            self._forward_unique(missing, batch_size)
        cache = self._cache
        return [cache[seq] for seq in ids]

    def classify_lines(self, lines: list[str], batch_size: int = 256, templates: bool = False,
                       anomaly_threshold: float = 1.0) -> list[Prediction]:
        """Classify raw lines (fast path); `templates` adds each line's Drain3 template (slower)."""
        ids, carried = self.encode_lines(lines)
        results = self.classify_ids(ids, batch_size)
        alert_labels = ALERT_LABELS[self.config.task]
        out = []
        for line, (c, p, s), true in zip(lines, results, carried, strict=True):
            label = self.labels[c]
            pred = Prediction(label, p, s, label in alert_labels or s > anomaly_threshold, true_label=true)
            if templates and self.templates is not None:
                pred.template_id, pred.template = self.templates.match(prepare(line, self.config.task)[1])
            out.append(pred)
        return out

    @torch.no_grad()
    def classify_lines_reference(self, lines: list[str]) -> list[Prediction]:
        """One line at a time, no cache, no batching: the reference for `classify_lines`."""
        self.eval()
        alert_labels = ALERT_LABELS[self.config.task]
        out = []
        for line in lines:
            true, text = prepare(line, self.config.task)
            tokens = torch.tensor([self.tokenizer.encode(text)])  # (1, T)
            z = self.embed(tokens, torch.ones_like(tokens, dtype=torch.bool))  # (1, D)
            probs = self.head(z).softmax(-1)[0]
            c = int(probs.argmax())
            s = float(self.anomaly(z)[0])
            out.append(Prediction(self.labels[c], float(probs[c]), s, self.labels[c] in alert_labels or s > 1.0,
                                  true_label=true))
        return out
