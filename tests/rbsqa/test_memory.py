import torch

from latentspace.rbsqa.memory import GatedMemory


def test_read_write_shapes_and_gate():
    memory = GatedMemory(16, num_slots=3, num_heads=2)
    m0 = memory.init_memory(2)
    tokens = torch.randn(2, 5, 16)
    padding = torch.tensor([[False] * 5, [False, False, True, True, True]])
    assert m0.shape == (2, 3, 16) and memory.read(tokens, m0).shape == (2, 5, 16)
    m1 = memory.write(m0, tokens, padding)
    assert m1.shape == (2, 3, 16) and not torch.allclose(m1, m0)
    # padded tokens are not written: changing them leaves the memory alone
    tokens2 = tokens.clone()
    tokens2[1, 2:] = 100.0
    assert torch.allclose(memory.write(m0, tokens2, padding)[1], m1[1], atol=1e-6)
    # a gate closed to zero keeps the old memory exactly
    memory.gate.weight.data.zero_()
    memory.gate.bias.data.fill_(-1e4)
    assert torch.allclose(memory.write(m0, tokens, padding), m0)
    assert memory.summary(m1).shape == (2, 16)


def test_memory_carries_gradient_across_segments():
    memory = GatedMemory(8, num_slots=2, num_heads=2)
    first = torch.randn(1, 4, 8, requires_grad=True)
    m = memory.write(memory.init_memory(1), first, torch.zeros(1, 4, dtype=torch.bool))
    out = memory.read(torch.randn(1, 4, 8), m)
    out.sum().backward()
    assert first.grad.abs().sum() > 0
