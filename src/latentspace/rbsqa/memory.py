"""Gated memory slots carried from segment to segment (the "GMM" memory of the seed).

Each segment first *reads* the memory (its tokens attend to the K slots) and, after the QA layers,
*writes* it back: the slots attend to the segment's tokens to propose an update, and a learned gate
per slot and channel decides how much of the old content to keep: m' = g * update + (1 - g) * m.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class GatedMemory(nn.Module):
    """K memory slots of width D, read by cross-attention and written through a sigmoid gate.

    Args:
        dim: slot and token width D.
        num_slots: K.
        num_heads: attention heads of the read and the write.
    """

    def __init__(self, dim: int, num_slots: int = 4, num_heads: int = 4):
        super().__init__()
        self.num_slots = num_slots
        self.initial = nn.Parameter(torch.randn(num_slots, dim) * 0.02)
        self.read_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.read_norm = nn.LayerNorm(dim)
        self.write_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.gate = nn.Linear(2 * dim, dim)
        nn.init.constant_(self.gate.bias, -1.0)  # start by keeping most of the old memory
        self.write_norm = nn.LayerNorm(dim)

    def init_memory(self, batch_size: int) -> torch.Tensor:
        """The memory before the first segment: (B, K, D)."""
        return self.initial.unsqueeze(0).expand(batch_size, -1, -1)

    def read(self, tokens: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """Tokens enriched with what the memory holds.

        Args:
            tokens: (B, L, D). memory: (B, K, D).

        Returns:
            (B, L, D)
        """
        context, _ = self.read_attn(tokens, memory, memory, need_weights=False)  # (B, L, D)
        return self.read_norm(tokens + context)

    def write(self, memory: torch.Tensor, tokens: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        """The memory after a segment.

        Args:
            memory: (B, K, D). tokens: (B, L, D). padding_mask: (B, L) True where a token is padding.

        Returns:
            (B, K, D)
        """
        update, _ = self.write_attn(memory, tokens, tokens, key_padding_mask=padding_mask, need_weights=False)
        update = self.write_norm(memory + update)  # (B, K, D)
        gate = torch.sigmoid(self.gate(torch.cat([memory, update], dim=-1)))  # (B, K, D)
        return gate * update + (1 - gate) * memory

    def summary(self, memory: torch.Tensor) -> torch.Tensor:
        """One context vector per document: the mean slot, (B, K, D) -> (B, D)."""
        return memory.mean(dim=1)
