import torch

from latentspace.crsm.config import CRSMConfig
from latentspace.crsm.mamba import MambaLM


def _model(**changes):
    torch.manual_seed(0)
    return MambaLM(CRSMConfig.preset("tiny").replace(vocab_size=40, **changes)).double()


def test_recurrent_step_equals_parallel_forward():
    model = _model()
    tokens = torch.randint(0, 40, (3, 11))
    hidden = model.hidden(tokens)  # (B, T, D)
    caches = [(c.double(), h.double()) for c, h in model.empty_caches(3)]
    steps = []
    for t in range(11):
        out, caches = model.step(tokens[:, t], caches)
        steps.append(out)
    torch.testing.assert_close(torch.stack(steps, 1), hidden)


def test_prefill_cache_continues_with_steps():
    model = _model(d_conv=4)
    tokens = torch.randint(0, 40, (2, 9))
    hidden = model.hidden(tokens)
    for cut in (1, 2, 6):  # shorter and longer than the conv window
        _, caches = model.hidden(tokens[:, :cut], return_cache=True)
        for t in range(cut, 9):
            out, caches = model.step(tokens[:, t], caches)
            torch.testing.assert_close(out, hidden[:, t])


def test_pscan_and_reference_backbones_agree_and_get_gradients():
    ref = _model(scan="reference")
    par = _model(scan="pscan")
    tokens = torch.randint(0, 40, (2, 10))
    torch.testing.assert_close(par(tokens), ref(tokens))
    par(tokens).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in par.parameters())
