import random

import pytest
import torch

from latentspace.rbsqa.config import RBSQAConfig
from latentspace.rbsqa.data import encode_document, generate_fact_paragraphs, long_documents, parse_squad
from latentspace.rbsqa.model import RBSQAModel


@pytest.fixture(scope="module")
def model_and_doc():
    """A tiny untrained model and one long document of three generated paragraphs."""
    config = RBSQAConfig.preset("tiny")
    torch.manual_seed(0)
    model = RBSQAModel(config).eval()
    base = parse_squad(generate_fact_paragraphs(6, random.Random(0)))
    doc = encode_document(long_documents(base[:1], 3, random.Random(0), pool_docs=base)[0], model.tokenizer, config)
    return model, doc


def logits(length: int, spans: dict[tuple[int, int], float], null: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(start, end) of length L: index 0 scores `null` (split in two), each span (i, j) scores its value."""
    start, end = torch.full((length,), -10.0), torch.full((length,), -10.0)
    start[0] = end[0] = null / 2
    for (i, j), value in spans.items():
        start[i], end[j] = value / 2, value / 2
    return start, end


def context(direction: int, dim: int = 8) -> torch.Tensor:
    c = torch.zeros(2, dim)
    c[:, direction] = 1.0
    return c
