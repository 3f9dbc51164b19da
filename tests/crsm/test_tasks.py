import random

import pytest
import torch

from latentspace.core.errors import DataError
from latentspace.crsm.config import CRSMConfig
from latentspace.crsm.model import CRSM
from latentspace.crsm.tasks import PathStarTask, lm_batch, perplexity, split_tokens, stdlib_corpus


def test_pathstar_graph_has_degree_arms_and_a_unique_answer():
    task = PathStarTask(degree=3, length=4)
    prompt, answer = task.sample(random.Random(0))
    edges = prompt.split("|")[0].split(",")
    assert len(edges) == 3 * 4
    start, goal = prompt.split("|")[1][:2]
    assert answer[0] == start and answer[-1] == goal and len(answer) == 5
    assert sum(e[0] == start for e in edges) == 3
    assert task.solve(prompt) == answer and task.verify(prompt, answer)
    assert not task.verify(prompt, answer[:-1])


def test_pathstar_reward_and_batch_mask():
    torch.manual_seed(0)
    model = CRSM(CRSMConfig.preset("tiny"))
    task = PathStarTask(2, 3)
    prompt, answer = task.sample(random.Random(1))
    reward = task.reward_fn(model, prompt)
    assert reward(model.encode(answer) + [model.eos_id]) == 1.0
    assert reward(model.encode(answer[:-1] + "?")) == 0.0
    tokens, mask = task.batch(model, 4, seed=0)
    assert tokens.shape[0] == 4 and mask.shape == (4, tokens.shape[1] - 1)
    assert int(mask[0].sum()) == len(answer) + 1


def test_too_many_nodes_is_a_data_error():
    with pytest.raises(DataError):
        PathStarTask(degree=10, length=10)


def test_corpus_batches_and_perplexity_of_uniform_model():
    text = stdlib_corpus(20_000)
    assert len(text) == 20_000 and "def " in text
    train, val = split_tokens(list(text.encode()))
    batch = lm_batch(train, 3, 16, seed=0)
    assert batch.shape == (3, 17)
    torch.testing.assert_close(batch, lm_batch(train, 3, 16, seed=0))
    ppl = perplexity(lambda t: torch.zeros(*t.shape, 256), val, 32, max_windows=4)
    assert abs(ppl - 256) < 1e-2
