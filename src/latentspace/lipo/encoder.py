"""Instruction embeddings: a sentence encoder (GTR-T5-base as in the seed, MiniLM offline), L2-normalised.

`GTRInstructionEncoder` keeps the seed's name and methods (`encode`, `encode_tensor`,
`encode_batch_tensor`) but accepts any sentence-transformers model; embeddings of a text are computed
once (core.backbones.EmbeddingCache, keyed by model and content hash).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..core.backbones import EmbeddingCache, load_sentence_encoder
from ..core.errors import DataError


class GTRInstructionEncoder:
    """Batched, cached, L2-normalised sentence embeddings of instructions.

    Args:
        model_name: a sentence-transformers hub id or local path ("sentence-transformers/gtr-t5-base" in the
            seed; "all-MiniLM-L6-v2" is packaged and works offline).
        normalize: L2-normalise every embedding (Vec2Text expects unit vectors).
        batch_size: texts per forward pass.
        model: an already built encoder with `encode(list[str]) -> array`, instead of loading one.
    """

    def __init__(self, model_name: str = "all-MiniLM-L6-v2", normalize: bool = True, batch_size: int = 64,
                 device: str | None = None, model=None):
        self.model_name = model_name
        self.normalize = normalize
        self.batch_size = batch_size
        self.model = model if model is not None else load_sentence_encoder(model_name, device=device)
        self.cache = EmbeddingCache(namespace=model_name)

    @property
    def embedding_dim(self) -> int:
        return int(self.encode_batch_tensor(["dimension probe"]).shape[-1])

    def _encode_uncached(self, texts: list[str]) -> torch.Tensor:
        out = self.model.encode(texts, batch_size=self.batch_size, convert_to_numpy=True, show_progress_bar=False)
        emb = torch.as_tensor(np.asarray(out), dtype=torch.float32)  # (B, E)
        return F.normalize(emb, dim=-1) if self.normalize else emb

    def encode_batch_tensor(self, texts: Sequence[str]) -> torch.Tensor:
        """Embeddings of many texts: (N, E) float32."""
        texts = list(texts)
        if not texts:
            raise DataError("no instructions to encode")
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
        if bad:
            raise DataError(f"instruction(s) at position {bad[:5]} are empty or not text")
        return self.cache.encode(texts, self._encode_uncached, batch_size=self.batch_size)

    def encode_tensor(self, text: str) -> torch.Tensor:
        """One embedding: (E,)."""
        return self.encode_batch_tensor([text])[0]

    def encode(self, text: str) -> np.ndarray:
        """One embedding as NumPy: (E,)."""
        return self.encode_tensor(text).numpy()
