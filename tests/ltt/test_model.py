"""Tests of the LTT model: decoder, loss and sampling (the encoder: test_encoder.py)."""

import pytest
import torch

from latentspace.ltt.config import LTTConfig
from latentspace.ltt.model import DiscreteObservation


def tiny_config(**changes) -> LTTConfig:
    return LTTConfig.preset("tiny").replace(**changes)


def test_decoder_is_causal_and_has_gradients():
    torch.manual_seed(0)
    config = tiny_config(vocab_size=11, latent_dim=5)
    decoder = DiscreteObservation(config).eval()
    z = torch.randn(2, 6, 5, requires_grad=True)
    tokens = torch.randint(0, 11, (2, 6))
    logits = decoder(z, tokens)
    assert logits.shape == (2, 6, 11)
    changed = tokens.clone()
    changed[:, 3] = (changed[:, 3] + 1) % 11
    z2 = z.detach().clone()
    z2[:, 5] += 1.0
    # position t is predicted from tokens < t and latents <= t only
    assert torch.allclose(decoder(z2, changed)[:, :4], logits[:, :4].detach(), atol=1e-5)
    logits.sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", ["ode", "sde", "flow"])
def test_full_loss_reaches_every_module(kind):
    from latentspace.ltt import tasks
    from latentspace.ltt.model import LatentTrajectoryTransformer

    torch.manual_seed(0)
    config = tiny_config(prior=kind, rollout_frac=0.5)
    model = LatentTrajectoryTransformer(config).train()
    tokens = tasks.generate(4, config.seq_len, config.block_len, generator=torch.Generator().manual_seed(0))
    loss, metrics = model.loss(tokens)
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert {"recon", "ep", "ep_z0", "prior", "ode"} <= set(metrics)
    loss.backward()
    for module in (model.encoder, model.decoder, model.prior.drift_net):
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert sum(float(g.abs().sum()) for g in grads) > 0
    if kind == "sde":
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.prior.diffusion_net.parameters())
    if kind == "flow":
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.prior.velocity_net.parameters())


def test_sampling_shapes_shared_and_random_z():
    from latentspace.ltt.model import LatentTrajectoryTransformer

    torch.manual_seed(0)
    model = LatentTrajectoryTransformer(tiny_config()).eval()
    tokens, path = model.sample(3, shared_z=True, generator=torch.Generator().manual_seed(0))
    assert tokens.shape == (3, model.seq_total) and path.shape == (3, model.seq_total, model.config.latent_dim)
    # one z0 and a deterministic drift: one path (up to the last bits of batched CPU kernels)
    torch.testing.assert_close(path[0], path[1], atol=1e-5, rtol=1e-5)
    _, random_path = model.sample(3, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(random_path[0], random_path[1])
    greedy_a = model.decode(path, temperature=0.0)
    assert torch.equal(greedy_a[0], greedy_a[1])  # greedy decoding of one path is deterministic


def test_token_dropout_hides_inputs_in_training_only():
    from latentspace.ltt import tasks
    from latentspace.ltt.model import LatentTrajectoryTransformer

    tokens = tasks.generate(8, 16, 4, generator=torch.Generator().manual_seed(0))
    losses = {}
    for dropout in (0.0, 1.0):
        torch.manual_seed(0)
        model = LatentTrajectoryTransformer(tiny_config(token_dropout=dropout, rollout_frac=0.0, latent_noise=0.0))
        torch.manual_seed(1)
        losses[dropout, "train"] = model.train().loss(tokens)[1]["recon"]
        losses[dropout, "eval"] = model.eval().loss(tokens)[1]["recon"]
    assert losses[0.0, "eval"] == losses[1.0, "eval"]  # same weights, no dropout at evaluation
    assert losses[0.0, "train"] != losses[1.0, "train"]  # every previous token hidden in training
