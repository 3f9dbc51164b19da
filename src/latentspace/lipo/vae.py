"""`InstructionVAE`: a smooth 64-D latent space over instruction embeddings, and `VAEWithAdapter` for the GP.

Encoder E -> 64 -> LN -> 32 -> LN -> 2 x latent (mu, log_var); decoder latent -> 32 -> LN -> 64 -> LN ->
hidden -> LN -> E, L2-normalised (the seed's shapes). Loss: mean(1 - cos(x, x_recon)) + beta(epoch) * KL,
beta linearly annealed from 0 (core.gaussian.beta_schedule). Trained with AdamW, CosineAnnealingLR
(T_max = 2 x epochs, eta_min) and early stopping on the reconstruction loss, keeping the best weights.
"""

from __future__ import annotations

import copy
import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..core.checkpoint import CheckpointMixin
from ..core.errors import DataError
from ..core.gaussian import DiagGaussian, beta_schedule
from ..core.progress import progress_bar
from ..core.runs import Run
from .config import LIPOConfig

log = logging.getLogger("latentspace")


class InstructionVAE(nn.Module, CheckpointMixin):
    """VAE over L2-normalised sentence embeddings (E -> latent_dim -> E)."""

    family = "lipo"
    config_class = LIPOConfig

    def __init__(self, config: LIPOConfig):
        super().__init__()
        self.config = config
        e, d, h = config.embedding_dim, config.latent_dim, config.vae_hidden_dim
        self.encoder = nn.Sequential(
            nn.Linear(e, 64), nn.GELU(), nn.LayerNorm(64),
            nn.Linear(64, 32), nn.GELU(), nn.LayerNorm(32),
            nn.Linear(32, 2 * d),
        )
        self.decoder = nn.Sequential(
            nn.Linear(d, 32), nn.GELU(), nn.LayerNorm(32),
            nn.Linear(32, 64), nn.GELU(), nn.LayerNorm(64),
            nn.Linear(64, h), nn.GELU(), nn.LayerNorm(h),
            nn.Linear(h, e),
        )

    def posterior(self, x: torch.Tensor) -> DiagGaussian:
        """q(z | x) for embeddings x (B, E): a DiagGaussian with (B, latent) parameters."""
        return DiagGaussian.from_params(self.encoder(x))

    def encode_mu(self, x: torch.Tensor) -> torch.Tensor:
        """The posterior mean (B, E) -> (B, latent): the deterministic code the GP sees."""
        return self.posterior(x).mu

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (..., latent) -> unit-norm embeddings (..., E)."""
        return F.normalize(self.decoder(z), dim=-1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, DiagGaussian]:
        """Reconstruction (B, E) from a reparameterised sample, and the posterior."""
        q = self.posterior(x)
        return self.decode(q.rsample()), q

    def loss(self, x: torch.Tensor, beta: float) -> tuple[torch.Tensor, dict[str, float]]:
        """recon = mean(1 - cos(x, x_recon)); kl = mean_B sum_D KL(q || N(0, I)); total = recon + beta * kl."""
        x_recon, q = self(x)
        recon = (1.0 - F.cosine_similarity(x, x_recon, dim=-1)).mean()
        kl = q.kl_to(DiagGaussian.standard(q.mu.shape, dtype=x.dtype)).mean()
        total = recon + beta * kl
        parts = {"loss": total, "recon_loss": recon, "kl_loss": kl}
        return total, {**{k: float(v.detach()) for k, v in parts.items()}, "beta": beta}


def train_vae(vae: InstructionVAE, embeddings: torch.Tensor, config: LIPOConfig, run: Run | None = None,
              quiet: bool = False) -> dict[str, float | int | bool]:
    """Train on embeddings (N, E) with the seed's recipe; restores the best weights; returns the summary.

    Returns:
        {"epochs_trained", "final_recon_loss", "final_kl_loss", "early_stopped", "best_recon_loss"}
    """
    if embeddings.ndim != 2 or embeddings.shape[1] != config.embedding_dim:
        raise DataError(f"VAE expects embeddings (N, {config.embedding_dim}), got {tuple(embeddings.shape)}")
    if not torch.isfinite(embeddings).all():
        raise DataError("instruction embeddings hold NaN or inf values")
    torch.manual_seed(config.seed)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=2 * config.vae_epochs,
                                                           eta_min=config.vae_eta_min)
    n = embeddings.shape[0]
    best, best_state, since_best = math.inf, copy.deepcopy(vae.state_dict()), 0
    epoch, metrics, early = 0, {}, False
    vae.train()
    with progress_bar(quiet, unit="epoch") as bar:
        task = bar.add_task("VAE", total=config.vae_epochs, info="")
        for epoch in range(config.vae_epochs):
            beta = beta_schedule(epoch, config.vae_beta, config.vae_annealing_epochs, kind="linear")
            order = torch.randperm(n)
            sums = {"recon_loss": 0.0, "kl_loss": 0.0}
            for start in range(0, n, config.vae_batch_size):
                batch = embeddings[order[start:start + config.vae_batch_size]]  # (b, E)
                loss, parts = vae.loss(batch, beta)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.vae_grad_clip > 0:
                    nn.utils.clip_grad_norm_(vae.parameters(), config.vae_grad_clip)
                optimizer.step()
                for key in sums:
                    sums[key] += parts[key] * batch.shape[0]
            scheduler.step()
            metrics = {k: v / n for k, v in sums.items()}
            if run is not None and (epoch % 10 == 0 or epoch == config.vae_epochs - 1):
                run.log(epoch, vae_recon_loss=metrics["recon_loss"], vae_kl_loss=metrics["kl_loss"], vae_beta=beta)
            if metrics["recon_loss"] < best - 1e-6:
                best, best_state, since_best = metrics["recon_loss"], copy.deepcopy(vae.state_dict()), 0
            else:
                since_best += 1
            bar.update(task, advance=1, info=f"recon {metrics['recon_loss']:.4f}")
            if since_best >= config.vae_patience:
                early = True
                break
    vae.load_state_dict(best_state)
    vae.eval()
    return {"epochs_trained": epoch + 1, "final_recon_loss": metrics.get("recon_loss", math.nan),
            "final_kl_loss": metrics.get("kl_loss", math.nan), "early_stopped": early, "best_recon_loss": best}


@torch.no_grad()
def vae_quality_metrics(vae: InstructionVAE, embeddings: torch.Tensor, active_threshold: float = 0.01) -> dict:
    """Reconstruction cosine mean/std (from posterior means), mean KL, active dims (Var_x[mu_d] > threshold)."""
    vae.eval()
    q = vae.posterior(embeddings)  # (N, latent)
    cos = F.cosine_similarity(embeddings, vae.decode(q.mu), dim=-1)  # (N,)
    kld = q.kl_to(DiagGaussian.standard(q.mu.shape)).mean()
    active = int((q.mu.var(dim=0) > active_threshold).sum()) if embeddings.shape[0] > 1 else 0
    return {"cosine_mean": float(cos.mean()), "cosine_std": float(cos.std()) if cos.numel() > 1 else 0.0,
            "kld_mean": float(kld), "active_dims": active, "total_dims": int(q.mu.shape[-1])}


class VAEWithAdapter(nn.Module):
    """A frozen VAE plus a trainable adapter latent (64) -> 32 -> ReLU -> LN -> gp_latent (10) for the GP kernel.

    x (B, E) -> encode_vae -> z_vae (B, 64) -> adapt -> z_gp (B, 10); decode: (B, 64) -> (B, E).
    """

    def __init__(self, vae: InstructionVAE, gp_latent_dim: int | None = None, input_dim: int | None = None):
        super().__init__()
        self.vae = vae
        for p in self.vae.parameters():
            p.requires_grad_(False)
        d_in = input_dim or vae.config.latent_dim
        self.adapter = nn.Sequential(
            nn.Linear(d_in, 32), nn.ReLU(), nn.LayerNorm(32), nn.Linear(32, gp_latent_dim or vae.config.gp_latent_dim)
        )

    def encode_vae(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.vae.encode_mu(x)

    def adapt(self, z: torch.Tensor) -> torch.Tensor:
        return self.adapter(z)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapt(self.encode_vae(x))
