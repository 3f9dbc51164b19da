"""Tests of the char task generator and the validity checker."""

import torch

from latentspace.ltt import tasks


def test_generated_sequences_are_valid_and_checkers_agree():
    tokens = tasks.generate(200, generator=torch.Generator().manual_seed(0))
    assert tokens.shape == (200, 67)
    assert tasks.valid_mask(tokens).all()
    broken = tokens.clone()
    broken[:50, 3:] = tasks.BLANK  # no block
    broken[50:100, 1] = tasks.FIRST_LETTER + (broken[50:100, 1] - tasks.FIRST_LETTER + 1) % 26  # wrong prompt
    fast = tasks.valid_mask(broken)
    slow = torch.tensor([tasks.is_valid(tasks.decode(t)) for t in broken])
    assert torch.equal(fast, slow)
    assert not fast[:100].any() and fast[100:].all()


def test_validity_rules():
    body = "_" * 10 + "B" * 8 + "!" + "_" * 45
    assert tasks.is_valid("?B>" + body)
    assert not tasks.is_valid("?C>" + body)
    assert not tasks.is_valid("?B>" + body.replace("BBBBBBBB", "BBBB_BBB", 1) + "B")
    assert not tasks.is_valid("?B>" + body[:-1])
