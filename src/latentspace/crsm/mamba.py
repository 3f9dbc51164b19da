"""The Mamba backbone: selective SSM blocks, a parallel forward for training and a recurrent `step` with a cache.

Reads top to bottom like alxndrTL/mamba.py: `MambaBlock` (in_proj -> causal depthwise conv -> selective scan
gated by SiLU(z) -> out_proj), `ResidualBlock` (RMSNorm + block + residual), `MambaLM` (embedding, blocks,
final norm, tied LM head). The cache of one layer is (conv_state (B, ED, d_conv-1), ssm_state (B, ED, N)).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import CRSMConfig
from .scan import selective_scan

LayerCache = tuple[torch.Tensor, torch.Tensor]  # (conv_state (B, ED, K-1), ssm_state (B, ED, N))


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class MambaBlock(nn.Module):
    """One selective-SSM mixer (Mamba-1)."""

    def __init__(self, config: CRSMConfig):
        super().__init__()
        self.config = config
        ed, n, r = config.d_inner, config.d_state, config.dt_rank_
        self.in_proj = nn.Linear(config.d_model, 2 * ed, bias=False)
        self.conv1d = nn.Conv1d(ed, ed, kernel_size=config.d_conv, groups=ed, padding=config.d_conv - 1)
        self.x_proj = nn.Linear(ed, r + 2 * n, bias=False)
        self.dt_proj = nn.Linear(r, ed, bias=True)
        # dt initialised log-uniformly in [1e-3, 1e-1] through the inverse softplus of the bias (Mamba's init)
        nn.init.uniform_(self.dt_proj.weight, -r**-0.5, r**-0.5)
        dt = torch.exp(torch.rand(ed) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)).clamp(min=1e-4)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.A_log = nn.Parameter(torch.log(torch.arange(1, n + 1, dtype=torch.float32).repeat(ed, 1)))  # (ED, N)
        self.D = nn.Parameter(torch.ones(ed))
        self.out_proj = nn.Linear(ed, config.d_model, bias=False)

    def _ssm_inputs(self, x, raw: bool = False):
        """delta (.., ED), B (.., N), C (.., N) from the conv output x (.., ED); with `raw`, delta before the
        dt bias and softplus (which the scan then applies, fused on the triton path)."""
        n, r = self.config.d_state, self.config.dt_rank_
        dbc = self.x_proj(x)  # (.., R + 2N)
        delta, B, C = torch.split(dbc, [r, n, n], dim=-1)
        if raw:
            return F.linear(delta, self.dt_proj.weight), B, C
        return F.softplus(self.dt_proj(delta)), B, C  # (.., ED)

    def forward(self, x, return_cache: bool = False):
        """x (B, T, D) -> y (B, T, D) [, cache after the last step]."""
        length = x.shape[1]
        xz = self.in_proj(x)  # (B, T, 2ED)
        x, z = xz.chunk(2, dim=-1)  # (B, T, ED) each
        x_t = x.transpose(1, 2)  # (B, ED, T)
        x = F.silu(self.conv1d(x_t)[:, :, :length]).transpose(1, 2)  # causal conv: (B, T, ED)
        delta, B, C = self._ssm_inputs(x, raw=True)  # (B, T, ED) before bias and softplus
        A = -torch.exp(self.A_log.float())  # (ED, N)
        # y * silu(z) and softplus(delta + bias) happen inside the scan (fused on the triton path)
        y, h = selective_scan(x, delta, A, B, C, self.D, mode=self.config.scan, z=z, delta_bias=self.dt_proj.bias,
                              delta_softplus=True)  # (B, T, ED), (B, ED, N)
        out = self.out_proj(y)  # (B, T, D)
        if not return_cache:
            return out
        k = self.config.d_conv - 1
        conv_state = F.pad(x_t, (max(0, k - length), 0))[:, :, -k:]  # last K-1 conv inputs: (B, ED, K-1)
        return out, (conv_state, h.to(x.dtype))

    def step(self, x, cache: LayerCache):
        """One recurrent step: x (B, D), cache -> y (B, D), new cache."""
        conv_state, h = cache  # (B, ED, K-1), (B, ED, N)
        xz = self.in_proj(x)  # (B, 2ED)
        x, z = xz.chunk(2, dim=-1)  # (B, ED)
        window = torch.cat([conv_state, x.unsqueeze(-1)], dim=-1)  # (B, ED, K)
        x = F.silu((window * self.conv1d.weight.squeeze(1)).sum(-1) + self.conv1d.bias)  # (B, ED)
        delta, B, C = self._ssm_inputs(x)  # (B, ED), (B, N), (B, N)
        A = -torch.exp(self.A_log.float())
        h = torch.exp(delta.unsqueeze(-1) * A) * h + (delta * x).unsqueeze(-1) * B.unsqueeze(1)  # (B, ED, N)
        y = (h * C.unsqueeze(1)).sum(-1) + self.D * x  # (B, ED)
        return self.out_proj(y * F.silu(z)), (window[:, :, 1:], h)

    def empty_cache(self, batch: int, device=None, dtype=torch.float32) -> LayerCache:
        ed = self.config.d_inner
        return (torch.zeros(batch, ed, self.config.d_conv - 1, device=device, dtype=dtype),
                torch.zeros(batch, ed, self.config.d_state, device=device, dtype=dtype))


class ResidualBlock(nn.Module):
    def __init__(self, config: CRSMConfig):
        super().__init__()
        self.norm = RMSNorm(config.d_model)
        self.mixer = MambaBlock(config)

    def forward(self, x, return_cache: bool = False):
        if return_cache:
            y, cache = self.mixer(self.norm(x), return_cache=True)
            return x + y, cache
        return x + self.mixer(self.norm(x))

    def step(self, x, cache: LayerCache):
        y, cache = self.mixer.step(self.norm(x), cache)
        return x + y, cache


class MambaLM(nn.Module):
    """Embedding -> residual Mamba blocks -> RMSNorm; `hidden` is the latent state, `logits` its LM head."""

    def __init__(self, config: CRSMConfig):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.d_model)
        nn.init.normal_(self.embedding.weight, std=0.02)
        self.layers = nn.ModuleList(ResidualBlock(config) for _ in range(config.n_layers))
        self.norm_f = RMSNorm(config.d_model)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embedding.weight

    def hidden(self, tokens, return_cache: bool = False):
        """tokens (B, T) -> latent states (B, T, D) [, caches after the last token]."""
        x = self.embedding(tokens)  # (B, T, D)
        caches = []
        for layer in self.layers:
            if return_cache:
                x, cache = layer(x, return_cache=True)
                caches.append(cache)
            else:
                x = layer(x)
        x = self.norm_f(x)
        return (x, caches) if return_cache else x

    def forward(self, tokens):
        """tokens (B, T) -> logits (B, T, V)."""
        return self.lm_head(self.hidden(tokens))

    def step(self, token, caches: list[LayerCache]):
        """token (B,) -> latent state (B, D), new caches (one recurrent step through every layer)."""
        x = self.embedding(token)  # (B, D)
        new = []
        for layer, cache in zip(self.layers, caches, strict=True):
            x, cache = layer.step(x, cache)
            new.append(cache)
        return self.norm_f(x), new

    def empty_caches(self, batch: int, device=None) -> list[LayerCache]:
        return [layer.mixer.empty_cache(batch, device) for layer in self.layers]
