"""Tests of the LTT model: encoder, decoder, loss and sampling."""

import pytest
import torch

from latentspace.core.errors import DataError
from latentspace.ltt.config import LTTConfig
from latentspace.ltt.model import DeterministicEncoder, DiscreteObservation


def tiny_config(**changes) -> LTTConfig:
    return LTTConfig.preset("tiny").replace(**changes)


def test_encoder_shapes_and_gradients():
    torch.manual_seed(0)
    config = tiny_config(vocab_size=11, latent_dim=5)
    encoder = DeterministicEncoder(config)
    tokens = torch.randint(0, 11, (3, 7))
    z = encoder(tokens)
    assert z.shape == (3, 7, 5)
    z.pow(2).sum().backward()
    for name, param in encoder.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    assert encoder.token_emb.weight.grad.abs().sum() > 0


def test_encoder_is_bidirectional():
    torch.manual_seed(0)
    encoder = DeterministicEncoder(tiny_config(vocab_size=11)).eval()
    tokens = torch.randint(0, 11, (1, 6))
    changed = tokens.clone()
    changed[0, -1] = (changed[0, -1] + 1) % 11
    # the first position sees the last token: a change at the end moves the latent at the start
    assert not torch.allclose(encoder(tokens)[0, 0], encoder(changed)[0, 0])


def test_encoder_padding_does_not_change_valid_outputs():
    torch.manual_seed(0)
    encoder = DeterministicEncoder(tiny_config(vocab_size=11)).eval()
    tokens = torch.randint(0, 11, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[0, 5:] = False
    other = tokens.clone()
    other[0, 5:] = torch.randint(0, 11, (3,))  # different padding contents
    z1, z2 = encoder(tokens, mask), encoder(other, mask)
    assert torch.allclose(z1[0, :5], z2[0, :5], atol=1e-5)
    assert torch.isfinite(z1).all()
    # and equal to encoding the unpadded sequence alone
    alone = encoder(tokens[:1, :5])
    assert torch.allclose(z1[0, :5], alone[0], atol=1e-5)


def test_encoder_rejects_bad_input():
    encoder = DeterministicEncoder(tiny_config(vocab_size=11))
    with pytest.raises(DataError):
        encoder(torch.full((1, 4), 11))
    with pytest.raises(DataError):
        encoder(torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 5, dtype=torch.bool))
    with pytest.raises(DataError):
        encoder(torch.zeros(4, dtype=torch.long))


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
