"""Shared LIPO fixtures: the packaged MiniLM encoder and an offline APE pool, built once per session."""

import pytest

from latentspace.core.llm import CallableBackend, LLMClient
from latentspace.lipo.ape import APEGenerator, OfflineInstructionWriter


@pytest.fixture(scope="session")
def encoder():
    from latentspace.lipo.encoder import GTRInstructionEncoder

    return GTRInstructionEncoder("all-MiniLM-L6-v2")


@pytest.fixture(scope="session")
def pool():
    client = LLMClient(CallableBackend(OfflineInstructionWriter(seed=1), "offline"))
    return [item["text"] for item in APEGenerator(client, num_instructions=160).generate()]


@pytest.fixture(scope="session")
def pool_embeddings(encoder, pool):
    return encoder.encode_batch_tensor(pool)


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread in this folder: tiny models run faster without thread hand-offs on a shared CPU."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
