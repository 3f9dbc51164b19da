"""Embedding -> text inversion and the InvBO inversion step (latent z_inv with decoder(z_inv) ~ encoder(text)).

- `Vec2TextInverter`: the seed's inverter, used when the optional `vec2text` package and its GTR models are
  available (extra `[vec2text]`; needs the GTR-T5-base encoder).
- `NearestNeighbourInverter`: the offline default. It decodes an embedding to the closest instruction of
  the pool, optionally rewritten toward the target: "recombine" splices clauses of the nearest instructions
  into new candidates, "llm" asks an LLM to write variants of them; every candidate is re-encoded and the one
  closest (cosine) to the target embedding wins, so a rewrite is kept only when it moves toward the target.
- `invert_latent`: Adam on z minimising 1 - cos(decoder(z), target) (the seed's inversion loop body).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..core.errors import LatentspaceError
from ..core.llm import GenerationParams, LLMClient
from .encoder import GTRInstructionEncoder

REWRITE_PROMPT = """Here are instructions for solving grade-school math problems:
{examples}
Write {n} new instructions that combine the ideas of the ones above. Output a numbered list, one per line."""


def _clauses(text: str) -> list[str]:
    """Sentences of an instruction, and the two halves of a sentence joined by ' and '."""
    sentences = [s.strip() for s in re.split(r"(?<=[.!?:])\s+", text.strip()) if s.strip()]
    out = []
    for sentence in sentences:
        out.append(sentence)
        if " and " in sentence:
            head, tail = sentence.split(" and ", 1)
            out.extend([head.rstrip(".") + ".", tail[0].upper() + tail[1:]])
    return out


class NearestNeighbourInverter:
    """Offline decoding of embeddings (B, E) to text over a pool, with an optional rewrite toward the target.

    Args:
        pool: instruction texts.
        pool_embeddings: (N, E) their unit-norm embeddings.
        encoder: re-encodes rewritten candidates.
        rewrite: "none", "recombine" or "llm".
        neighbours: how many nearest pool instructions a rewrite starts from.
        client: the LLM client for rewrite="llm".
    """

    def __init__(self, pool: Sequence[str], pool_embeddings: torch.Tensor, encoder: GTRInstructionEncoder | None,
                 rewrite: str = "recombine", neighbours: int = 8, client: LLMClient | None = None,
                 max_candidates: int = 64):
        if rewrite not in ("none", "recombine", "llm"):
            raise LatentspaceError(f"unknown rewrite {rewrite!r}: expected none, recombine or llm")
        if rewrite == "llm" and client is None:
            raise LatentspaceError("rewrite='llm' needs an LLM client")
        if rewrite != "none" and encoder is None:
            raise LatentspaceError(f"rewrite={rewrite!r} needs an encoder to score candidates")
        self.pool = list(pool)
        self.pool_embeddings = F.normalize(torch.as_tensor(pool_embeddings, dtype=torch.float32), dim=-1)
        self.encoder = encoder
        self.rewrite = rewrite
        self.neighbours = neighbours
        self.client = client
        self.max_candidates = max_candidates

    def nearest(self, embeddings: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k pool indices and cosines for embeddings (B, E): both (B, k)."""
        sims = F.normalize(embeddings.float(), dim=-1) @ self.pool_embeddings.T  # (B, N)
        values, indices = sims.topk(min(k, sims.shape[1]), dim=-1)
        return indices, values

    def _candidates(self, neighbours: list[str]) -> list[str]:
        if self.rewrite == "recombine":
            clauses = list(dict.fromkeys(c for text in neighbours for c in _clauses(text)))
            pairs = (f"{a} {b}" for a, b in itertools.permutations(clauses, 2))
            return list(itertools.islice(pairs, self.max_candidates))
        examples = "\n".join(f"- {t}" for t in neighbours)
        prompt = REWRITE_PROMPT.format(examples=examples, n=8)
        from .ape import parse_numbered_list

        return parse_numbered_list(self.client.generate_one(prompt, GenerationParams(max_tokens=400, temperature=0.7)))

    def candidates(self, embedding: torch.Tensor, k: int | None = None) -> list[str]:
        """Candidate texts for one target embedding (E,), closest (cosine) first: the nearest pool instructions
        and, with a rewrite, their rewrites; at most k (default: all)."""
        target = F.normalize(embedding.reshape(-1).float(), dim=-1)
        indices, _ = self.nearest(target.unsqueeze(0), k=max(1, self.neighbours, k or 1))
        neighbours = [self.pool[i] for i in indices[0].tolist()]
        if self.rewrite == "none":
            return neighbours[:k]
        texts = list(dict.fromkeys(neighbours + [c for c in self._candidates(neighbours[: self.neighbours])
                                                 if c.strip()]))
        cand_emb = self.encoder.encode_batch_tensor(texts)  # (C, E)
        sims = F.normalize(cand_emb, dim=-1) @ target  # (C,)
        return [texts[i] for i in sims.argsort(descending=True).tolist()][:k]

    def invert(self, embeddings: torch.Tensor) -> list[str]:
        """One text per target embedding (B, E): the closest candidate."""
        embeddings = embeddings.reshape(-1, embeddings.shape[-1])
        return [self.candidates(target, k=1)[0] for target in embeddings]


class Vec2TextInverter:
    """Vec2Text inversion of GTR embeddings (optional dependency `vec2text`; models from the hub or cache).

    Args:
        model_type: "512_tokens" or "32_tokens" (both use vec2text's pretrained GTR-base corrector here).
        beam_width: sequence beam width.
        num_steps: correction steps.
    """

    def __init__(self, model_type: str = "512_tokens", beam_width: int = 8, num_steps: int = 20):
        try:
            import vec2text
        except ImportError:
            raise LatentspaceError("inverter 'vec2text' needs the optional package: pip install "
                                   "'latentspace[vec2text]' (and the GTR-T5-base encoder)") from None
        self.vec2text = vec2text
        self.model_type = model_type
        self.beam_width = beam_width
        self.num_steps = num_steps
        try:
            self.corrector = vec2text.load_pretrained_corrector("gtr-base")
        except Exception as err:  # hub unreachable, missing weights
            raise LatentspaceError(f"cannot load the Vec2Text GTR corrector ({type(err).__name__}: {err}); "
                                   "use --inverter nearest offline") from None

    def invert(self, embeddings: torch.Tensor) -> list[str]:
        embeddings = embeddings.reshape(-1, embeddings.shape[-1]).float()
        return self.vec2text.invert_embeddings(embeddings=embeddings, corrector=self.corrector,
                                               num_steps=self.num_steps, sequence_beam_width=self.beam_width)


def invert_latent(decode, z_init: torch.Tensor, target: torch.Tensor, n_steps: int = 100, lr: float = 0.1,
                  convergence_threshold: float = 0.01) -> tuple[torch.Tensor, float]:
    """Find z_inv with decode(z_inv) ~ target by Adam on 1 - cos (seed: InvBO inversion).

    Args:
        decode: latents (B, D) -> embeddings (B, E).
        z_init: (D,) or (B, D) start.
        target: (E,) or (B, E) embeddings of the decoded text.

    Returns:
        (z_inv with z_init's shape, final mean cosine loss)
    """
    shape = z_init.shape
    z = z_init.detach().reshape(-1, shape[-1]).clone().float().requires_grad_(True)
    target = target.detach().reshape(-1, target.shape[-1]).float()
    optimizer = torch.optim.Adam([z], lr=lr)
    loss_value = float("inf")
    for _ in range(n_steps):
        optimizer.zero_grad(set_to_none=True)
        loss = (1.0 - F.cosine_similarity(decode(z), target, dim=-1)).mean()
        loss_value = float(loss.detach())
        if loss_value < convergence_threshold:
            break
        loss.backward()
        optimizer.step()
    return z.detach().reshape(shape), loss_value


def make_inverter(kind: str, pool: Sequence[str], pool_embeddings: torch.Tensor, encoder, rewrite: str = "recombine",
                  neighbours: int = 8, client: LLMClient | None = None, model_type: str = "512_tokens",
                  beam_width: int = 8):
    """'vec2text', 'nearest', or 'auto' (vec2text when installed and the encoder is GTR, else nearest)."""
    if kind == "vec2text" or (kind == "auto" and "gtr" in getattr(encoder, "model_name", "").lower()):
        try:
            return Vec2TextInverter(model_type, beam_width)
        except LatentspaceError:
            if kind == "vec2text":
                raise
    return NearestNeighbourInverter(pool, pool_embeddings, encoder, rewrite=rewrite, neighbours=neighbours,
                                    client=client)
