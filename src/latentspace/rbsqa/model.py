"""`RBSQAModel`: an HF encoder read segment by segment, gated memory between segments, a QA head.

Per segment (time-step-major over a batch of documents):
    hidden (B, L, E)  = encoder([CLS] question [SEP] segment [SEP])        frozen encodings may be cached
    tokens (B, L, D)  = memory.read(project(hidden) + position, memory)    what earlier segments left
    states (B, L, D)  = reasoning layers(tokens)                           trainable
    start, end (B, L) = qa_head(states)                                    -inf outside the segment, [CLS]=null
    memory (B, K, D)  = memory.write(memory, states)                       gated, carried to the next segment
The optional `BeliefStateTracker` (model.tracker) turns the per-segment logits into a revising belief.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.backbones import load_encoder, load_tokenizer
from ..core.checkpoint import CheckpointMixin, load_checkpoint, save_checkpoint
from ..core.errors import CheckpointError
from .belief import BeliefState, BeliefStateTracker
from .config import RBSQAConfig
from .memory import GatedMemory

TINY_ENCODER = "tiny-bert"


def build_encoder(config: RBSQAConfig):
    """(encoder, tokenizer): the named HF encoder, or a random tiny BERT with the packaged MiniLM vocabulary."""
    if config.encoder == TINY_ENCODER:
        from transformers import BertConfig, BertModel

        tokenizer = load_tokenizer("all-MiniLM-L6-v2")
        bert = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=config.tiny_hidden, num_hidden_layers=2,
                          num_attention_heads=2, intermediate_size=2 * config.tiny_hidden,
                          max_position_embeddings=config.seq_len + 8)
        torch.manual_seed(config.seed)
        return BertModel(bert, add_pooling_layer=False), tokenizer
    encoder, tokenizer = load_encoder(config.encoder)
    layers = getattr(getattr(encoder, "encoder", None), "layer", None)
    if config.encoder_layers and layers is not None and config.encoder_layers < len(layers):
        encoder.encoder.layer = layers[: config.encoder_layers]
        encoder.config.num_hidden_layers = config.encoder_layers
    return encoder, tokenizer


class RBSQAModel(nn.Module, CheckpointMixin):
    """Segment-recurrent extractive QA with gated memory and an optional belief-state tracker."""

    family = "rbsqa"
    config_class = RBSQAConfig

    def __init__(self, config: RBSQAConfig, encoder: nn.Module | None = None, tokenizer=None):
        super().__init__()
        self.config = config
        if encoder is None:
            encoder, tokenizer = build_encoder(config)
        self.encoder = encoder
        self.tokenizer = tokenizer
        width = encoder.config.hidden_size
        dim = config.model_dim or width
        self.dim = dim
        if config.freeze_encoder:
            self.encoder.requires_grad_(False)
        # a narrower width D for the trainable layers: they, not the cached encoder, are what training pays for
        self.project = nn.Sequential(nn.Linear(width, dim), nn.LayerNorm(dim)) if dim != width else nn.Identity()
        # (L, D) learned positions of the segment input, added after the projection (None: off)
        self.position = nn.Parameter(torch.randn(config.seq_len, dim) * 0.02) if config.position_embedding else None
        self.memory = GatedMemory(dim, config.num_memory_slots, config.num_heads)
        layer = nn.TransformerEncoderLayer(dim, config.num_heads, 2 * dim, dropout=0.1, batch_first=True)
        self.reasoning = nn.TransformerEncoder(layer, config.reasoning_layers, enable_nested_tensor=False)
        self.qa_head = nn.Linear(dim, 2)
        self.tracker = BeliefStateTracker(
            max_segments=config.max_segments, confidence_threshold=config.belief_state_threshold,
            re_scoring_method=config.re_scoring_method, enable_trend_analysis=config.enable_trend_analysis,
            context_dim=dim, max_answer_len=config.max_answer_len, enable_re_scoring=config.enable_re_scoring,
            confidence_calibration=config.confidence_calibration, stable_segments=config.halting_stable_segments,
        ) if config.use_belief_state else None
        positions = torch.arange(config.context_start, config.context_start + config.segment_len)
        self.register_buffer("tracker_index", torch.cat([torch.zeros(1, dtype=torch.long), positions]),
                             persistent=False)

    # ---- per segment -----------------------------------------------------------------------------------

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Encoder states of segment inputs: (N, L) -> (N, L, D); without grad when the encoder is frozen."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_encoder):
            return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def init_memory(self, batch_size: int) -> torch.Tensor:
        return self.memory.init_memory(batch_size)

    def segment_forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor, context_mask: torch.Tensor,
                        memory: torch.Tensor) -> dict[str, torch.Tensor]:
        """One segment step.

        Args:
            hidden: (B, L, E) encoder states. attention_mask: (B, L). context_mask: (B, L) True on segment
                tokens. memory: (B, K, D).

        Returns:
            start, end: (B, L) logits, -inf except the segment tokens and the [CLS] null at 0;
            states: (B, L, D); memory: (B, K, D) after the write.
        """
        padding = attention_mask == 0  # (B, L)
        tokens = self.project(hidden)  # (B, L, D)
        if self.position is not None:
            tokens = tokens + self.position[: tokens.shape[1]]
        tokens = self.memory.read(tokens, memory)  # (B, L, D)
        states = self.reasoning(tokens, src_key_padding_mask=padding)  # (B, L, D)
        logits = self.qa_head(states)  # (B, L, 2)
        allowed = context_mask.clone()
        allowed[:, 0] = True
        logits = logits.masked_fill(~allowed[..., None], float("-inf"))
        new_memory = self.memory.write(memory, states, padding)  # (B, K, D)
        return {"start": logits[..., 0], "end": logits[..., 1], "states": states, "memory": new_memory}

    def forward_document(self, hidden: torch.Tensor, attention_mask: torch.Tensor, context_mask: torch.Tensor,
                         segment_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """All segments of a batch of documents, time-step-major (the fast, batched path).

        Args:
            hidden: (B, S, L, E). attention_mask, context_mask: (B, S, L). segment_mask: (B, S) False on
                padding segments (they are skipped: -inf logits, zero states, memory carried unchanged).

        Returns:
            start, end: (B, S, L); states: (B, S, L, D); memory: (B, S, K, D) after each segment.
        """
        B, S = segment_mask.shape
        memory = self.init_memory(B)  # (B, K, D)
        starts, ends, states, memories = [], [], [], []
        for s in range(S):
            active = segment_mask[:, s]  # (B,) documents that still have a segment s
            if bool(active.all()):
                out = self.segment_forward(hidden[:, s], attention_mask[:, s], context_mask[:, s], memory)
                memory = out["memory"]
            else:  # only the documents still being read pay for this step; the others keep their memory
                index = active.nonzero().squeeze(1)  # (A,)
                part = self.segment_forward(hidden[index, s], attention_mask[index, s], context_mask[index, s],
                                            memory[index])
                L = hidden.shape[2]
                out = {"start": part["start"].new_full((B, L), float("-inf")).index_copy(0, index, part["start"]),
                       "end": part["end"].new_full((B, L), float("-inf")).index_copy(0, index, part["end"]),
                       "states": part["states"].new_zeros(B, L, self.dim).index_copy(0, index, part["states"])}
                memory = memory.index_copy(0, index, part["memory"])
            starts.append(out["start"])
            ends.append(out["end"])
            states.append(out["states"])
            memories.append(memory)
        return {"start": torch.stack(starts, 1), "end": torch.stack(ends, 1), "states": torch.stack(states, 1),
                "memory": torch.stack(memories, 1)}

    def qa_loss(self, batch: dict[str, torch.Tensor], out: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Cross-entropy of gold start/end positions (0 = null) over every real segment of the batch."""
        out = out if out is not None else self._forward_batch(batch)
        mask = batch["segment_mask"]  # (B, S)
        start = F.cross_entropy(out["start"][mask], batch["gold_start"][mask])
        end = F.cross_entropy(out["end"][mask], batch["gold_end"][mask])
        return (start + end) / 2

    def re_score_loss(self, batch: dict[str, torch.Tensor], out: dict[str, torch.Tensor]) -> torch.Tensor:
        """Loss of the tracker's learned re-scorer: is the gold span of segment s still the answer after s' > s?

        For every pair s < s' of a document whose segment s holds the gold span: the re-scorer sees the
        span's mean token state at s and the memory summary after s', and is trained (binary cross-entropy)
        to say whether the answer after s' is still that span's answer (`answer_id` equal). Its gradient
        reaches the memory, which so learns to carry what later segments say about earlier answers.
        """
        states, memory = out["states"], out["memory"]  # (B, S, L, D), (B, S, K, D)
        B, S, L, D = states.shape
        gold_start, gold_end = batch["gold_start"], batch["gold_end"]  # (B, S)
        position = torch.arange(L, device=states.device)
        in_span = ((position >= gold_start[..., None]) & (position <= gold_end[..., None])
                   & (gold_start[..., None] > 0))  # (B, S, L)
        span = (states * in_span[..., None]).sum(2) / in_span.sum(2, keepdim=True).clamp(min=1)  # (B, S, D)
        context = self.memory.summary(memory.reshape(B * S, -1, D)).reshape(B, S, D)  # (B, S, D)
        features = torch.cat([span[:, :, None].expand(B, S, S, D), context[:, None].expand(B, S, S, D)], -1)
        prob = self.tracker.re_score_network(features).squeeze(-1)  # (B, s, s')
        answer = batch["answer_id"]  # (B, S), -1 before the first answer
        target = (answer[:, :, None] == answer[:, None, :]).float()  # (B, s, s')
        later = torch.ones(S, S, dtype=torch.bool, device=states.device).triu(1)  # s' > s
        valid = (gold_start > 0)[:, :, None] & batch["segment_mask"][:, None, :] & later  # (B, s, s')
        if not valid.any():
            return prob.sum() * 0.0
        return F.binary_cross_entropy(prob[valid].clamp(1e-6, 1 - 1e-6), target[valid])

    def training_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """QA loss, plus the learned re-scorer's loss when the tracker has one (trained jointly)."""
        out = self._forward_batch(batch)
        qa = self.qa_loss(batch, out)
        if self.tracker is None or self.tracker.re_score_network is None:
            return qa, {}
        re_score = self.re_score_loss(batch, out)
        return qa + re_score, {"qa_loss": float(qa.detach()), "re_score_loss": float(re_score.detach())}

    def _forward_batch(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        hidden = batch["hidden"] if "hidden" in batch else self._encode_batch(batch)
        return self.forward_document(hidden, batch["attention_mask"], batch["context_mask"], batch["segment_mask"])

    def _encode_batch(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Encoder states of a padded batch of documents: (B, S, L) ids -> (B, S, L, D)."""
        B, S, L = batch["input_ids"].shape
        hidden = self.encode(batch["input_ids"].reshape(B * S, L), batch["attention_mask"].reshape(B * S, L))
        return hidden.reshape(B, S, L, -1)

    def tracker_logits(self, start: torch.Tensor, end: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The tracker's view of one segment's logits: (L,) -> (1 + segment_len,) = [null, segment tokens]."""
        return start[self.tracker_index], end[self.tracker_index]

    # ---- checkpoints -----------------------------------------------------------------------------------

    def _saves_encoder(self) -> bool:
        """A frozen pretrained encoder is reloaded by name, so checkpoints leave its weights out."""
        return not (self.config.freeze_encoder and self.config.encoder != TINY_ENCODER)

    def save(self, directory: str | Path, metadata: dict[str, Any] | None = None) -> Path:
        """config.json + model.safetensors; the tracker's parameters and its current belief state included."""
        state = {k: v for k, v in self.state_dict().items() if self._saves_encoder() or not k.startswith("encoder.")}
        meta = dict(metadata or {})
        if self.tracker is not None:
            meta["belief_state"] = self.tracker.belief.to_dict()
        return save_checkpoint(directory, state, self.config.to_dict(), self.family, metadata=meta)

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> RBSQAModel:
        header, state = load_checkpoint(directory, family=cls.family, device=device)
        config = dict(header["config"])
        config.setdefault("position_embedding", False)  # checkpoints from before the option had none
        model = cls(RBSQAConfig.from_dict(config))
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if model._saves_encoder() or not k.startswith("encoder.")]
        if missing or unexpected:
            raise CheckpointError(f"{directory}: weights do not match the RBSQAModel built from its config "
                                  f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
        belief = header.get("metadata", {}).get("belief_state")
        if belief is not None and model.tracker is not None:
            model.tracker.belief = BeliefState.from_dict(belief)
        return model.to(device).eval()
