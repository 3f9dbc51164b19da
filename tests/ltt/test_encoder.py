"""Tests of the LTT token encoder: shapes, bidirectionality, padding, bad input, its config, a light import."""

import subprocess
import sys

import pytest
import torch

from latentspace.core.errors import ConfigError, DataError
from latentspace.ltt.config import EncoderConfig, LTTConfig, nest_encoder_fields
from latentspace.ltt.encoder import DeterministicEncoder

TINY = EncoderConfig(d_model=32, n_layers=1, n_heads=2, latent_dim=8)


def test_encoder_shapes_and_gradients():
    torch.manual_seed(0)
    encoder = DeterministicEncoder(TINY.replace(latent_dim=5), vocab_size=11, max_len=24)
    tokens = torch.randint(0, 11, (3, 7))
    z = encoder(tokens)
    assert z.shape == (3, 7, 5)
    z.pow(2).sum().backward()
    for name, param in encoder.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    assert encoder.token_emb.weight.grad.abs().sum() > 0


def test_encoder_is_bidirectional():
    torch.manual_seed(0)
    encoder = DeterministicEncoder(TINY, 11, 24).eval()
    tokens = torch.randint(0, 11, (1, 6))
    changed = tokens.clone()
    changed[0, -1] = (changed[0, -1] + 1) % 11
    # the first position sees the last token: a change at the end moves the latent at the start
    assert not torch.allclose(encoder(tokens)[0, 0], encoder(changed)[0, 0])


def test_encoder_padding_does_not_change_valid_outputs():
    torch.manual_seed(0)
    encoder = DeterministicEncoder(TINY, 11, 24).eval()
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
    encoder = DeterministicEncoder(TINY, 11, 6)
    with pytest.raises(DataError, match="token ids"):
        encoder(torch.full((1, 4), 11))
    with pytest.raises(DataError, match="mask shape"):
        encoder(torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 5, dtype=torch.bool))
    with pytest.raises(DataError, match=r"\(B, T\)"):
        encoder(torch.zeros(4, dtype=torch.long))
    with pytest.raises(DataError, match="max_len=6"):
        encoder(torch.zeros(1, 7, dtype=torch.long))


def test_config_is_checked():
    with pytest.raises(ConfigError, match="divisible"):
        EncoderConfig(d_model=30, n_heads=4)
    with pytest.raises(ConfigError, match="n_layers"):
        EncoderConfig(n_layers=0)
    with pytest.raises(ConfigError, match="dropout"):
        EncoderConfig(dropout=1.0)


def test_the_ltt_model_builds_its_encoder_from_its_own_sizes():
    from latentspace.ltt.model import LatentTrajectoryTransformer

    config = LTTConfig.preset("tiny")
    encoder = LatentTrajectoryTransformer(config).encoder
    assert encoder.config == EncoderConfig(d_model=config.d_model, n_layers=config.n_layers, n_heads=config.n_heads,
                                           latent_dim=config.latent_dim, dropout=config.dropout)
    assert (encoder.vocab_size, encoder.max_len) == (config.vocab_size, config.max_len)


def test_old_flat_app_configs_are_nested():
    flat = {"task": "severity", "d_model": 32, "n_layers": 1, "n_heads": 2, "latent_dim": 16, "dropout": 0.0}
    assert nest_encoder_fields(flat) == {"task": "severity", "encoder": {"d_model": 32, "n_layers": 1,
                                                                         "n_heads": 2, "latent_dim": 16,
                                                                         "dropout": 0.0}}
    nested = {"task": "severity", "encoder": {"d_model": 32}}
    assert nest_encoder_fields(nested) is nested


def test_importing_the_encoder_pulls_in_neither_the_priors_nor_the_char_task():
    code = ("import sys, latentspace.ltt.encoder; "
            "print(sorted(m for m in ('torchdiffeq', 'torchsde', 'latentspace.ltt.priors', 'latentspace.ltt.tasks', "
            "'latentspace.ltt.model') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
