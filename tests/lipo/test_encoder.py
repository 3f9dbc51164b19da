import pytest
import torch

from latentspace.core.errors import DataError


def test_embeddings_are_unit_norm_batched_and_cached(encoder):
    texts = ["Let's think step by step.", "Solve:", "You are a patient tutor."]
    batch = encoder.encode_batch_tensor(texts)
    assert batch.shape == (3, 384)
    assert torch.allclose(batch.norm(dim=-1), torch.ones(3), atol=1e-5)
    # the batched path agrees with one-at-a-time encoding (the slow reference)
    single = torch.stack([encoder.encode_tensor(t) for t in texts])
    assert torch.allclose(batch, single, atol=1e-5)
    assert encoder.encode(texts[0]).shape == (384,)
    assert len(encoder.cache) >= 3


def test_empty_input_is_an_error(encoder):
    with pytest.raises(DataError):
        encoder.encode_batch_tensor([])
    with pytest.raises(DataError, match="empty"):
        encoder.encode_batch_tensor(["ok", "  "])
