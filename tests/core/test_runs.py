"""core/runs.py's `set_threads`: the one place that sets torch's CPU threads."""

import torch

from latentspace.core.runs import set_threads


def test_set_threads_exact_and_at_most():
    before = torch.get_num_threads()
    try:
        assert set_threads(1) == 1 and torch.get_num_threads() == 1
        assert set_threads(3, at_most=True) == 1  # never raised above the current count
        assert set_threads(0) == 1  # at least one
        assert set_threads(2) == 2 and set_threads(1, at_most=True) == 1
        assert set_threads(1, blas=True) == 1
    finally:
        torch.set_num_threads(before)
