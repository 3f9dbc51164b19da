"""Dense encoders for code search: the LTT code encoder trained on the indexed corpus, and sentence encoders.

`CodeEncoder` embeds identifier-split words (`parseHTTPHeader` -> parse http header) in two paths that are
summed per token: a word embedding (what the word is) and the LTT family's bidirectional
`DeterministicEncoder` latent path z (B, T, L) projected to the same width (what it means in context).
Tokens are pooled by attention whose logits start from each word's log inverse document frequency, so
an untrained encoder is already a random projection of an IDF-weighted bag of words, and training
moves it from there; one head, shared by code and queries, projects and normalises. It is trained
self-supervised on the corpus being indexed: each docstring or leading comment is a query for the code
it documents, the other code in the batch the negatives (symmetric InfoNCE). `SentenceEncoder` wraps any
sentence-transformers model (default: the packaged all-MiniLM-L6-v2, offline).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.checkpoint import CheckpointMixin
from ..core.errors import CheckpointError, DataError
from ..ltt.config import nest_encoder_fields
from ..ltt.encoder import DeterministicEncoder
from .config import CodeEncoderConfig
from .tokens import Vocabulary

log = logging.getLogger("latentspace")


class CodeEncoder(CheckpointMixin, nn.Module):
    """Identifier words -> word embedding + projected LTT latent path -> IDF-seeded attention pooling -> head."""

    family = "codesearch"
    config_class = CodeEncoderConfig

    def __init__(self, config: CodeEncoderConfig, vocab: Vocabulary | None = None):
        super().__init__()
        self.vocab = vocab if vocab is not None else Vocabulary([], config.hash_buckets)
        if config.vocab_size != len(self.vocab):
            config = config.replace(vocab_size=len(self.vocab))
        self.config = config
        width = config.embed_dim
        self.word_emb = nn.Embedding(config.vocab_size, width)  # the word path
        nn.init.normal_(self.word_emb.weight, std=width ** -0.5)  # unit-norm words: near-orthogonal at random
        self.word_weight = nn.Embedding(config.vocab_size, 1)  # per-word pooling logit, set to log IDF by training
        nn.init.zeros_(self.word_weight.weight)
        max_len = max(config.max_code_tokens, config.max_query_tokens)
        self.encoder = (DeterministicEncoder(config.encoder, config.vocab_size, max_len) if config.context
                        else None)  # the context path
        self.latent_proj = nn.Linear(config.encoder.latent_dim, width)
        nn.init.zeros_(self.latent_proj.weight)  # the context path starts silent and is learned on top
        nn.init.zeros_(self.latent_proj.bias)
        self.attn_score = nn.Linear(width, 1)
        nn.init.zeros_(self.attn_score.weight)
        nn.init.zeros_(self.attn_score.bias)
        self.head = nn.Linear(width, width)
        nn.init.eye_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    # ---- checkpoint ----
    def checkpoint_files(self) -> dict[str, str]:
        return {"vocab.json": self.vocab.to_json()}

    @classmethod
    def _config_from_checkpoint(cls, data: dict):
        return cls.config_class.from_dict(nest_encoder_fields(data))  # indexes built before EncoderConfig

    @classmethod
    def _build_from_checkpoint(cls, config, directory: Path):
        vocab_path = directory / "vocab.json"
        if not vocab_path.is_file():
            raise CheckpointError(f"{directory} lacks vocab.json: not a codesearch encoder checkpoint")
        return cls(config, Vocabulary.from_json(vocab_path.read_text()))

    # ---- forward ----
    def set_idf(self, documents: Sequence[str]) -> None:
        """Seed the pooling logits with log IDF over `documents`: softmax then weighs words by IDF."""
        n_docs = len(documents)
        df = torch.zeros(len(self.vocab))
        for text in documents:
            df[torch.tensor(sorted(set(self.vocab.encode(text, self.config.max_code_tokens))))] += 1
        idf = torch.log((n_docs + 1) / (df + 1)).clamp_min(1e-3)  # (V,)
        with torch.no_grad():
            self.word_weight.weight.copy_(idf.log().unsqueeze(-1))
            self.word_weight.weight[Vocabulary.PAD] = 0.0

    def token_states(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per-token vectors (B, T, embed_dim): word embedding + projected LTT latent path."""
        h = self.word_emb(tokens)  # (B, T, E)
        if self.encoder is not None:
            z = self.encoder(tokens, mask)  # (B, T, L)
            h = h + self.latent_proj(z)  # (B, T, E)
        return h

    def pool(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Attention pooling of the token states: tokens, mask (B, T) -> (B, embed_dim)."""
        h = self.token_states(tokens, mask)  # (B, T, E)
        logits = self.word_weight(tokens) + self.attn_score(h)  # (B, T, 1)
        logits = logits.masked_fill(~mask.bool().unsqueeze(-1), float("-inf"))
        weights = torch.softmax(logits, dim=1)  # (B, T, 1)
        return (weights * h).sum(1)  # (B, E)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor, side: str = "code") -> torch.Tensor:
        """Unit-norm embeddings (B, embed_dim) of code or query token batches (B, T); one head for both sides."""
        return F.normalize(self.head(self.pool(tokens, mask)), dim=-1)

    def tokenize(self, texts: Sequence[str], side: str = "code") -> tuple[torch.Tensor, torch.Tensor]:
        """Padded word ids and mask, both (B, T), T = the longest text (at most the side's limit)."""
        max_len = self.config.max_code_tokens if side == "code" else self.config.max_query_tokens
        ids = [self.vocab.encode(t, max_len) for t in texts]
        width = max(len(i) for i in ids)
        tokens = torch.zeros(len(ids), width, dtype=torch.long)
        for row, seq in enumerate(ids):
            tokens[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        return tokens, tokens != Vocabulary.PAD

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], side: str = "code", batch_size: int = 256) -> np.ndarray:
        """Unit-norm embeddings (N, embed_dim) float32; texts are batched by length to keep padding low."""
        was_training = self.training
        self.eval()
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros((len(texts), self.config.embed_dim), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            tokens, mask = self.tokenize([texts[i] for i in rows], side)
            out[rows] = self(tokens, mask, side).float().numpy()
        self.train(was_training)
        return out

    def encode_code(self, texts: Sequence[str]) -> np.ndarray:
        return self.encode(texts, "code")

    def encode_query(self, texts: Sequence[str]) -> np.ndarray:
        return self.encode(texts, "query")


def contrastive_loss(query: torch.Tensor, code: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE with in-batch negatives: query, code (B, E) unit-norm; pair i matches pair i."""
    logits = query @ code.T / temperature  # (B, B)
    target = torch.arange(len(query), device=query.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def contrastive_loss_reference(query: torch.Tensor, code: torch.Tensor, temperature: float) -> torch.Tensor:
    """Slow reference of `contrastive_loss`: one softmax per row and per column."""
    total = 0.0
    n = len(query)
    for i in range(n):
        row = torch.stack([query[i] @ code[j] / temperature for j in range(n)])
        col = torch.stack([query[j] @ code[i] / temperature for j in range(n)])
        total = total - torch.log_softmax(row, 0)[i] - torch.log_softmax(col, 0)[i]
    return total / (2 * n)


def train_code_encoder(pairs: Sequence[tuple[str, str]], config: CodeEncoderConfig | None = None, run=None,
                       quiet: bool = True, vocab_texts: Sequence[str] | None = None,
                       resume: bool = False) -> CodeEncoder:
    """Train a CodeEncoder on (query text, code text) pairs, e.g. (docstring, function without it).

    Args:
        pairs: the self-supervised pairs; at least 2.
        config: sizes and training (`config.train`; default CodeEncoderConfig()).
        run: a `core.runs.Run` for metrics.jsonl and checkpoints (optional).
        resume: continue from `run`'s last checkpoint (the same pairs and config give the same model).
        vocab_texts: texts the vocabulary is built from (default: both sides of the pairs); they are also the
            documents of the IDF that seeds the pooling (default: the code side of the pairs).
    """
    from ..core.training import fit

    config = config or CodeEncoderConfig()
    if len(pairs) < 2:
        raise DataError(f"the LTT encoder needs at least 2 (docstring, code) pairs to train on, got {len(pairs)}")
    texts = vocab_texts if vocab_texts is not None else [t for pair in pairs for t in pair]
    vocab = Vocabulary.build(texts, config.max_words, hash_buckets=config.hash_buckets)
    torch.manual_seed(config.train.seed)
    model = CodeEncoder(config, vocab)
    model.set_idf(vocab_texts if vocab_texts is not None else [c for _, c in pairs])
    queries, q_mask = model.tokenize([q for q, _ in pairs], "query")  # (N, Tq)
    codes, c_mask = model.tokenize([c for _, c in pairs], "code")  # (N, Tc)
    batch_size = min(config.batch_size, len(pairs))
    generator = torch.Generator().manual_seed(config.train.seed)
    epochs = math.ceil(config.train.steps * batch_size / len(pairs)) + 1
    order = torch.cat([torch.randperm(len(pairs), generator=generator) for _ in range(epochs)])

    def batch(step: int):
        rows = order[step * batch_size : (step + 1) * batch_size]
        q, qm, c, cm = queries[rows], q_mask[rows], codes[rows], c_mask[rows]
        q_width, c_width = int(qm.sum(1).max()), int(cm.sum(1).max())  # trim padding columns
        return q[:, :q_width], qm[:, :q_width], c[:, :c_width], cm[:, :c_width]

    def loss_fn(module, data):
        q, qm, c, cm = data
        query = module(q, qm, "query")
        code = module(c, cm, "code")
        loss = contrastive_loss(query, code, config.temperature)
        with torch.no_grad():
            accuracy = ((query @ code.T).argmax(1) == torch.arange(len(q))).float().mean()
        return loss, {"in_batch_acc": float(accuracy)}

    fit(model, loss_fn, batch, config.train, run=run, quiet=quiet, resume=resume,
        description="training LTT code encoder")
    return model.eval()


class SentenceEncoder:
    """A sentence-transformers model as a code/query encoder (default: the packaged all-MiniLM-L6-v2)."""

    def __init__(self, name: str = "all-MiniLM-L6-v2", max_seq_length: int = 256, batch_size: int = 64):
        from ..core.backbones import load_sentence_encoder

        self.name = name
        self.model = load_sentence_encoder(name)
        self.model.max_seq_length = min(max_seq_length, self.model.max_seq_length or max_seq_length)
        self.batch_size = batch_size

    @property
    def dim(self) -> int:
        return int(self.model.get_sentence_embedding_dimension())

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-norm embeddings (N, dim) float32."""
        return self.model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                 convert_to_numpy=True, show_progress_bar=False).astype(np.float32)

    def encode_code(self, texts: Sequence[str]) -> np.ndarray:
        return self.encode(texts)

    def encode_query(self, texts: Sequence[str]) -> np.ndarray:
        return self.encode(texts)
