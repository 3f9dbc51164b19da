import pytest
import torch
import torch.nn.functional as F

from latentspace.core.errors import DataError
from latentspace.lipo.config import LIPOConfig
from latentspace.lipo.vae import InstructionVAE, VAEWithAdapter, train_vae, vae_quality_metrics


def _config(**kw):
    base = dict(embedding_dim=384, vae_epochs=100, vae_annealing_epochs=100, vae_patience=40, vae_lr=0.01,
                vae_batch_size=32)
    return LIPOConfig().replace(**{**base, **kw})


def test_vae_learns_reconstruction_above_the_mean_direction_bound(pool_embeddings, tmp_path):
    x = pool_embeddings
    # bound: the best constant reconstruction, the mean direction of all embeddings
    mean_dir = F.normalize(x.mean(0), dim=0)
    bound = float((x @ mean_dir).mean())
    vae = InstructionVAE(_config())
    untrained = vae_quality_metrics(vae, x)["cosine_mean"]
    summary = train_vae(vae, x, vae.config, quiet=True)
    quality = vae_quality_metrics(vae, x)
    assert quality["cosine_mean"] > bound + 0.08, (quality, bound)
    assert quality["cosine_mean"] > untrained + 0.3
    assert 0 < quality["active_dims"] <= 64 and quality["total_dims"] == 64
    assert summary["epochs_trained"] >= 1 and summary["best_recon_loss"] < 1 - bound
    # checkpoint round trip
    vae.save(tmp_path / "vae")
    loaded = InstructionVAE.load(tmp_path / "vae")
    assert torch.allclose(loaded.decode(torch.zeros(2, 64)), vae.decode(torch.zeros(2, 64)))


def test_shapes_loss_and_kl_annealing():
    vae = InstructionVAE(_config())
    x = F.normalize(torch.randn(8, 384), dim=-1)
    recon, q = vae(x)
    assert recon.shape == (8, 384) and q.mu.shape == (8, 64)
    assert torch.allclose(recon.norm(dim=-1), torch.ones(8), atol=1e-5)
    loss0, parts0 = vae.loss(x, beta=0.0)
    assert parts0["loss"] == pytest.approx(parts0["recon_loss"], rel=1e-5)
    _, parts1 = vae.loss(x, beta=1.0)
    assert parts1["kl_loss"] > 0


def test_early_stopping_and_bad_input():
    x = F.normalize(torch.randn(32, 384), dim=-1)
    vae = InstructionVAE(_config(vae_epochs=500, vae_patience=3, vae_lr=1e-9))
    summary = train_vae(vae, x, vae.config, quiet=True)
    assert summary["early_stopped"] and summary["epochs_trained"] < 500
    with pytest.raises(DataError, match="embeddings"):
        train_vae(vae, torch.randn(4, 10), vae.config, quiet=True)
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        train_vae(vae, bad, vae.config, quiet=True)


def test_adapter_trains_with_the_vae_frozen():
    vae = InstructionVAE(_config())
    model = VAEWithAdapter(vae)
    x = F.normalize(torch.randn(5, 384), dim=-1)
    out = model(x)
    assert out.shape == (5, 10) and model.encode_vae(x).shape == (5, 64) and model.decode(torch.zeros(1, 64)).shape \
        == (1, 384)
    out.sum().backward()
    assert all(p.grad is None for p in vae.parameters())
    assert all(p.grad is not None for p in model.adapter.parameters())
