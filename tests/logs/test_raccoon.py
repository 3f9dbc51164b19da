import copy
import os

import pytest
import torch

from latentspace.core.errors import CheckpointError
from latentspace.logs.classify import LogClassifier
from latentspace.logs.raccoon import LatentSDE, RaccoonLearner, RaccoonMemory
from latentspace.logs.train import tensorise

from .conftest import synthetic_severity


def test_latent_sde_matches_reference_and_has_gradients():
    torch.manual_seed(0)
    sde = LatentSDE(8, hidden=16, sigma=0.2, steps=4)
    z0 = torch.randn(5, 8, requires_grad=True)
    z1 = sde(z0)
    assert z1.shape == (5, 8)
    torch.testing.assert_close(z1, sde.forward_reference(z0), rtol=1e-5, atol=1e-6)
    noisy = sde(z0, stochastic=True)
    assert noisy.shape == (5, 8) and not torch.allclose(noisy, z1)
    noisy.sum().backward()
    assert z0.grad is not None and torch.isfinite(z0.grad).all()
    assert sde.diffusion_net[0].weight.grad is not None  # the diffusion is trained through the noise path


def _add(memory, n, label, quality):
    memory.add(torch.randint(2, 50, (n, 6)), torch.full((n,), label), torch.full((n,), quality), torch.randn(n, 3))


def test_memory_cap_eviction_and_priority():
    memory = RaccoonMemory(max_size=20, max_len=8, alpha=1.0)
    _add(memory, 30, 0, 0.1)
    assert len(memory) == 20
    _add(memory, 10, 1, 1.0)
    assert len(memory) == 20
    assert torch.bincount(memory.labels).tolist() == [10, 10]  # the frequent label gave way
    gen = torch.Generator().manual_seed(0)
    _, labels, logits = memory.sample(2000, gen)
    assert logits.shape == (2000, 3)
    assert (labels == 1).float().mean() > 0.8  # quality 1.0 vs 0.1: sampled ~10x more
    assert memory.nbytes == 20 * 8 * 4 + 20 * 8 + 20 * 4 + 20 * 3 * 4


def test_memory_save_is_atomic_and_round_trips(tmp_path):
    memory = RaccoonMemory(max_size=10, max_len=4)
    _add(memory, 7, 2, 0.5)
    path = memory.save(tmp_path / "memory.safetensors")
    loaded = RaccoonMemory.load(path)
    assert torch.equal(loaded.tokens, memory.tokens) and torch.equal(loaded.logits, memory.logits)
    assert loaded.added == 7 and loaded.max_size == 10
    assert os.listdir(tmp_path) == ["memory.safetensors"]  # no temporary file left behind
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="truncated"):
        RaccoonMemory.load(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        RaccoonMemory.load(tmp_path / "nope.safetensors")


def test_continuous_update_rules(tiny_severity_model, tmp_path):
    model, _ = tiny_severity_model
    new = synthetic_severity(16, seed=5)
    tokens, _, labels = tensorise(model, new)
    before = copy.deepcopy(model.state_dict())

    frozen = RaccoonLearner(copy.deepcopy(model), frozen=True)
    assert frozen.continuous_update(tokens, labels) == 0.0
    assert all(torch.equal(v, frozen.model.state_dict()[k]) for k, v in before.items())

    naive = RaccoonLearner(copy.deepcopy(model), replay_ratio=0.0)
    naive.continuous_update(tokens, labels)
    assert len(naive.memory) == 0
    assert not torch.equal(naive.model.head.weight, model.head.weight)

    raccoon = RaccoonLearner(copy.deepcopy(model), replay_ratio=0.5)
    for _ in range(3):
        loss = raccoon.continuous_update(tokens, labels)
    assert loss > 0 and len(raccoon.memory) == 48 and raccoon.updates == 3
    raccoon.save(tmp_path / "state")
    restarted = RaccoonLearner.load(tmp_path / "state", LogClassifier)
    assert restarted.updates == 3 and len(restarted.memory) == 48
    lines = new.lines
    assert [p.label for p in restarted.model.classify_lines(lines)] == [
        p.label for p in raccoon.model.classify_lines(lines)]


def test_update_steps_below_one_is_refused():
    from latentspace.core.errors import ConfigError
    from latentspace.logs.config import LogsConfig

    with pytest.raises(ConfigError, match="update_steps"):
        LogsConfig(update_steps=0)
