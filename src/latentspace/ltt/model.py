"""The Latent Trajectory Transformer (ltt.md "Understanding the Architecture"), read top to bottom.

`DeterministicEncoder` (encoder.py: bidirectional transformer, tokens (B, T) -> latent path z (B, T, D)), then
`DiscreteObservation` (causal transformer on right-shifted tokens plus the projected path: logits (B, T, V)),
then `LatentTrajectoryTransformer`, which joins them with a prior (priors.py) and holds the loss
w_recon * CE + w_latent * Epps-Pulley + w_ode * prior matching, and sampling from the prior.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..core.checkpoint import CheckpointMixin
from ..core.regularizers import epps_pulley
from . import tasks
from .config import EncoderConfig, LTTConfig
from .encoder import Block, DeterministicEncoder
from .priors import Prior, build_prior, euler_rollout


def encoder_config(config: LTTConfig) -> EncoderConfig:
    """The encoder's sizes: the fields of `LTTConfig` that `EncoderConfig` also has (the decoder shares them)."""
    return EncoderConfig(**{field.name: getattr(config, field.name) for field in dataclasses.fields(EncoderConfig)})


class DiscreteObservation(nn.Module):
    """Autoregressive decoder p(x_t | x_<t, z_<=t): causal transformer on right-shifted tokens + projected latents.

    h_t = latent_proj(z_t) + token_emb(x_{t-1}) + pos_emb(t), with x_{-1} = START (ltt.md "Decoder").
    """

    def __init__(self, config: LTTConfig, start_token: int = 0):
        super().__init__()
        self.config = config
        self.start_token = start_token
        self.token_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = nn.Embedding(config.max_len, config.d_model)
        self.latent_proj = nn.Linear(config.latent_dim, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config.d_model, config.n_heads, config.dropout)
                                    for _ in range(config.decoder_layers))
        self.ln_f = nn.LayerNorm(config.d_model)
        self.proj_out = nn.Linear(config.d_model, config.vocab_size)

    def shift_right(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, T) -> decoder inputs (B, T): START, x_0, ..., x_{T-2}."""
        start = torch.full_like(tokens[:, :1], self.start_token)
        return torch.cat([start, tokens[:, :-1]], dim=1)

    def forward(self, z_path: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits: z_path (B, T, D), tokens (B, T) -> logits (B, T, V) for predicting tokens."""
        return self.logits_from_inputs(z_path, self.shift_right(tokens))

    def logits_from_inputs(self, z_path: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """Logits for already-shifted inputs (B, t) and the first t latents of z_path (B, >=t, D) -> (B, t, V)."""
        T = inputs.shape[1]
        positions = torch.arange(T, device=inputs.device)
        h = self.latent_proj(z_path[:, :T]) + self.token_emb(inputs) + self.pos_emb(positions)  # (B, T, C)
        h = self.drop(h)
        for block in self.blocks:
            h = block(h, causal=True)
        return self.proj_out(self.ln_f(h))  # (B, T, V)


class LatentTrajectoryTransformer(CheckpointMixin, nn.Module):
    """Encoder + prior + decoder: the loss of ltt.md and sampling from the prior (shared Z / random Z)."""

    family = "ltt"
    config_class = LTTConfig

    def __init__(self, config: LTTConfig):
        super().__init__()
        self.config = config
        self.encoder = DeterministicEncoder(encoder_config(config), config.vocab_size, config.max_len)
        self.decoder = DiscreteObservation(config, start_token=tasks.START)
        self.prior: Prior = build_prior(config)

    @property
    def seq_total(self) -> int:
        """Tokens per char-task sequence: the `?X>` prompt plus seq_len characters."""
        return tasks.PROMPT_LEN + self.config.seq_len

    def loss(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """w_recon * CE + w_latent * EP + w_ode * prior matching for tokens (B, T) (mask (B, T): True = real)."""
        c = self.config
        z = self.encoder(tokens, mask)  # (B, T, D)
        inputs = self.decoder.shift_right(tokens)  # (B, T)
        if self.training and c.token_dropout > 0:
            dropped = torch.rand(inputs.shape, device=inputs.device) < c.token_dropout
            dropped[:, 0] = False  # START stays
            inputs = inputs.masked_fill(dropped, tasks.PAD)
        logits = self.decoder.logits_from_inputs(self.decoder_path(z), inputs)  # (B, T, V)
        targets = tokens if mask is None else tokens.masked_fill(~mask.bool(), -100)
        recon = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
        valid_z = z.reshape(-1, z.shape[-1]) if mask is None else z[mask.bool()]  # (N, D)
        ep_path = epps_pulley(valid_z, num_slices=c.ep_slices)
        ep_z0 = epps_pulley(z[:, 0], num_slices=c.ep_slices)
        prior_loss, prior_metrics = self.prior.matching_loss(z)
        loss = c.w_recon * recon + c.w_latent * ep_path + c.w_latent_z0 * ep_z0 + c.w_ode * prior_loss
        return loss, {"recon": float(recon.detach()), "ep": float((ep_path + ep_z0).detach()),
                      "ep_z0": float(ep_z0.detach()), "prior": float(prior_loss.detach()), **prior_metrics}

    def decoder_path(self, z: torch.Tensor) -> torch.Tensor:
        """The latent path (B, T, D) the decoder is trained on: the encoder's path, or for the first
        rollout_frac of the batch the prior drift's Euler rollout from the encoder's z0, with latent_noise.

        Sampling decodes a rolled-out path, never an encoder path; decoding rollouts in training removes
        that mismatch, so the decoder learns to read what the prior will give it (and the drift learns to
        carry z0's information to every step). The noise makes it robust to z0's that the encoder never made.
        """
        c = self.config
        if not self.training:
            return z
        n_roll = int(round(c.rollout_frac * z.shape[0]))
        noisy = z + c.latent_noise * torch.randn_like(z) if c.latent_noise > 0 else z
        if n_roll == 0:
            return noisy
        z0 = noisy[:n_roll, 0]  # (R, D)
        rolled = euler_rollout(self.prior.drift_net, z0, z.shape[1])  # (R, T, D)
        return torch.cat([rolled, noisy[n_roll:]], dim=0)

    @torch.no_grad()
    def decode(self, z_path: torch.Tensor, temperature: float | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Autoregressive sampling of tokens (B, T) from a latent path (B, T, D); temperature 0 is greedy."""
        temperature = self.config.temperature if temperature is None else temperature
        B, T, _ = z_path.shape
        inputs = torch.full((B, 1), tasks.START, dtype=torch.long, device=z_path.device)  # (B, 1)
        out = []
        for _ in range(T):
            logits = self.decoder.logits_from_inputs(z_path, inputs)[:, -1]  # (B, V)
            logits[:, tasks.START] = -math.inf  # START and PAD are never emitted
            logits[:, tasks.PAD] = -math.inf
            if temperature <= 0:
                token = logits.argmax(-1, keepdim=True)
            else:
                probs = F.softmax(logits / temperature, dim=-1)
                token = torch.multinomial(probs, 1, generator=generator)  # (B, 1)
            out.append(token)
            inputs = torch.cat([inputs, token], dim=1)
        return torch.cat(out, dim=1)

    @torch.no_grad()
    def sample(self, n: int, shared_z: bool = False, generator: torch.Generator | None = None,
               temperature: float | None = None, method: str | None = None, prior: Prior | None = None,
               z0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample n sequences from the prior: z0 -> integrate -> decode.

        Args:
            shared_z: one z0 (and so one path for an ODE prior) for all n samples ("Samples that share a Z");
                otherwise an independent z0 per sample ("Samples with a random Z").
            prior: another prior to use (default self.prior).
            z0: explicit initial states (n, D) instead of the prior's.

        Returns:
            tokens (n, T) and the latent path (n, T, D).
        """
        prior = prior or self.prior
        T = self.seq_total
        if z0 is None:
            z0 = prior.sample_z0(1 if shared_z else n, generator=generator).expand(n, -1)  # (n, D)
        path = prior.rollout(z0.contiguous(), T, method=method, generator=generator)  # (n, T, D)
        return self.decode(path, temperature, generator), path
