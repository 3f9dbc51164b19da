"""The LTT token encoder, the part of ltt that the apps (codesearch, logs) build on: tokens (B, T) -> path z (B, T, D).

Its sizes are an `EncoderConfig` (ltt/config.py, so that a config importing it stays free of torch), which an
app nests in its own config (`CodeEncoderConfig.encoder`, `LogsConfig.encoder`). The vocabulary and the
longest sequence are not in it: they belong to the tokenizer that feeds the encoder and are passed when it is
built. This file imports neither the priors (torchdiffeq, torchsde) nor the char task, so an app that only
encodes pulls in neither.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import ConfigError, DataError
from .config import EncoderConfig


class SelfAttention(nn.Module):
    """Multi-head self-attention with a boolean `allowed` mask (B or 1, 1, T, T): True where a query may look."""

    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, allowed: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=-1)  # 3 x (B, T, C)
        q, k, v = (u.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for u in (q, k, v))  # (B, H, T, C/H)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, is_causal=causal and allowed is None,
                                           dropout_p=self.dropout if self.training else 0.0)  # (B, H, T, C/H)
        return self.out(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, n_heads, dropout)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model),
                                 nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, allowed: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), allowed, causal)
        return x + self.mlp(self.ln2(x))


class DeterministicEncoder(nn.Module):
    """Bidirectional transformer: tokens (B, T) -> latent path z (B, T, latent_dim); no sampling (ltt.md).

    Padding positions (mask False) are removed from every attention, so the outputs at valid positions do
    not depend on what the padding holds; each position may always attend to itself, so a padded position
    gets a finite (meaningless) latent rather than NaN.

    Args:
        config: the sizes.
        vocab_size: token ids are in [0, vocab_size).
        max_len: the longest sequence the positional embedding covers.
    """

    def __init__(self, config: EncoderConfig, vocab_size: int, max_len: int):
        super().__init__()
        if vocab_size < 1 or max_len < 1:
            raise ConfigError(f"DeterministicEncoder: vocab_size and max_len must be >= 1, got {vocab_size}, "
                              f"{max_len}")
        self.config = config
        self.vocab_size = vocab_size
        self.max_len = max_len
        self.token_emb = nn.Embedding(vocab_size, config.d_model)
        self.pos_emb = nn.Embedding(max_len, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config.d_model, config.n_heads, config.dropout)
                                    for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.d_model)
        self.proj = nn.Linear(config.d_model, config.latent_dim)

    def check_tokens(self, tokens: torch.Tensor) -> None:
        """Raise a DataError for tokens that are not (B, T) ids in [0, vocab_size) with T <= max_len."""
        if tokens.dim() != 2:
            raise DataError(f"tokens must be (B, T), got shape {tuple(tokens.shape)}")
        if tokens.shape[1] > self.max_len:
            raise DataError(f"sequence length {tokens.shape[1]} exceeds max_len={self.max_len}")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab_size):
            raise DataError(f"token ids must be in [0, {self.vocab_size}), got [{int(tokens.min())}, "
                            f"{int(tokens.max())}]")

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Encode tokens (B, T) with an optional validity mask (B, T) (True = real token) -> z (B, T, D)."""
        self.check_tokens(tokens)
        B, T = tokens.shape
        positions = torch.arange(T, device=tokens.device)
        x = self.drop(self.token_emb(tokens) + self.pos_emb(positions))  # (B, T, C)
        allowed = None
        if mask is not None:
            if mask.shape != tokens.shape:
                raise DataError(f"mask shape {tuple(mask.shape)} differs from tokens shape {tuple(tokens.shape)}")
            eye = torch.eye(T, dtype=torch.bool, device=tokens.device)
            allowed = (mask.bool()[:, None, :] | eye).unsqueeze(1)  # (B, 1, T, T): keys that are real, or self
        for block in self.blocks:
            x = block(x, allowed)
        return self.proj(self.ln_f(x))  # (B, T, D)
