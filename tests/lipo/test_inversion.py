import pytest
import torch
import torch.nn.functional as F

from latentspace.core.errors import LatentspaceError
from latentspace.core.llm import CallableBackend, LLMClient
from latentspace.lipo.inversion import NearestNeighbourInverter, Vec2TextInverter, invert_latent, make_inverter


def test_nearest_neighbour_returns_the_pool_text_of_its_own_embedding(pool, pool_embeddings):
    inv = NearestNeighbourInverter(pool, pool_embeddings, encoder=None, rewrite="none")
    assert inv.invert(pool_embeddings[[3, 50, 100]]) == [pool[3], pool[50], pool[100]]


def test_recombination_moves_toward_the_target(pool, pool_embeddings, encoder):
    target = F.normalize(pool_embeddings[5] + pool_embeddings[77], dim=-1)  # between two instructions
    plain = NearestNeighbourInverter(pool, pool_embeddings, encoder, rewrite="none").invert(target)[0]
    rewritten = NearestNeighbourInverter(pool, pool_embeddings, encoder, rewrite="recombine").invert(target)[0]
    cos = lambda t: float(encoder.encode_batch_tensor([t])[0] @ target)  # noqa: E731
    assert cos(rewritten) >= cos(plain) - 1e-6


def test_llm_rewrite_uses_the_client(pool, pool_embeddings, encoder):
    client = LLMClient(CallableBackend(lambda p, s: "1. Let's think step by step and verify.\n2. Solve:", "w"))
    inv = NearestNeighbourInverter(pool, pool_embeddings, encoder, rewrite="llm", client=client, neighbours=4)
    assert isinstance(inv.invert(pool_embeddings[:1])[0], str) and client.calls == 1
    with pytest.raises(LatentspaceError, match="client"):
        NearestNeighbourInverter(pool, pool_embeddings, encoder, rewrite="llm")


def test_invert_latent_reduces_the_cosine_gap():
    torch.manual_seed(0)
    decoder = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 16))
    decode = lambda z: F.normalize(decoder(z), dim=-1)  # noqa: E731
    target = decode(torch.randn(1, 8)).detach()
    z0 = torch.zeros(1, 8)
    before = float(1 - F.cosine_similarity(decode(z0), target).detach())
    z, loss = invert_latent(decode, z0, target, n_steps=100, lr=0.1, convergence_threshold=1e-4)
    assert z.shape == z0.shape and loss < before / 5


def test_vec2text_absent_is_a_clear_error(pool, pool_embeddings, encoder):
    try:
        import vec2text  # noqa: F401
        return  # installed: nothing to check offline
    except ImportError:
        pass
    with pytest.raises(LatentspaceError, match="vec2text"):
        Vec2TextInverter()
    assert isinstance(make_inverter("auto", pool, pool_embeddings, encoder), NearestNeighbourInverter)
