import pytest
import torch

from latentspace.crsm.scan import pscan, selective_scan, selective_scan_pscan, selective_scan_ref, triton_available


def _inputs(batch=2, length=19, ed=6, n=4, dtype=torch.float64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, ed, generator=g, dtype=dtype)
    delta = torch.rand(batch, length, ed, generator=g, dtype=dtype) * 0.5 + 0.01
    A = -torch.rand(ed, n, generator=g, dtype=dtype) * 2
    B = torch.randn(batch, length, n, generator=g, dtype=dtype)
    C = torch.randn(batch, length, n, generator=g, dtype=dtype)
    D = torch.randn(ed, generator=g, dtype=dtype)
    return [t.to(device).requires_grad_() for t in (x, delta, A, B, C, D)]


def test_pscan_matches_sequential_recurrence():
    a, b = torch.rand(3, 13, 5, dtype=torch.float64), torch.randn(3, 13, 5, dtype=torch.float64)
    h, expected = torch.zeros(3, 5, dtype=torch.float64), []
    for t in range(13):
        h = a[:, t] * h + b[:, t]
        expected.append(h)
    torch.testing.assert_close(pscan(a, b), torch.stack(expected, 1))


@pytest.mark.parametrize("length", [2, 8, 19])
def test_parallel_scan_equals_reference_values_and_gradients(length):
    inputs = _inputs(length=length)
    y_ref, h_ref = selective_scan_ref(*inputs)
    y_par, h_par = selective_scan_pscan(*inputs)
    torch.testing.assert_close(y_par, y_ref)
    torch.testing.assert_close(h_par, h_ref)
    g = torch.randn_like(y_ref)
    grads_ref = torch.autograd.grad((y_ref * g).sum(), inputs)
    grads_par = torch.autograd.grad((y_par * g).sum(), inputs)
    for a, b in zip(grads_par, grads_ref, strict=True):
        torch.testing.assert_close(a, b)


def test_initial_state_continues_a_split_sequence():
    x, delta, A, B, C, D = _inputs(length=12)
    y_full, h_full = selective_scan_ref(x, delta, A, B, C, D)
    _, h_half = selective_scan_ref(x[:, :5], delta[:, :5], A, B[:, :5], C[:, :5], D)
    for fn in (selective_scan_ref, selective_scan_pscan):
        y2, h2 = fn(x[:, 5:], delta[:, 5:], A, B[:, 5:], C[:, 5:], D, h0=h_half)
        torch.testing.assert_close(y2, y_full[:, 5:])
        torch.testing.assert_close(h2, h_full)


def test_unknown_mode_is_an_error():
    with pytest.raises(ValueError, match="unknown scan mode"):
        selective_scan(*_inputs(length=3), mode="fast")


@pytest.mark.skipif(not triton_available(), reason="the Triton fast path needs CUDA and triton")
@pytest.mark.parametrize("length", [7, 64, 150])
def test_triton_scan_matches_reference_on_gpu(length):
    inputs64 = _inputs(batch=2, length=length, ed=80, n=16, seed=length)
    y_ref, h_ref = selective_scan_ref(*inputs64)
    g = torch.randn_like(y_ref)
    grads_ref = torch.autograd.grad((y_ref * g).sum(), inputs64)
    inputs = [t.detach().float().cuda().requires_grad_() for t in inputs64]
    y, h = selective_scan(*inputs, mode="triton")
    grads = torch.autograd.grad((y * g.float().cuda()).sum(), inputs)

    def rel(a, b):
        return float((a.double().cpu() - b).norm() / b.norm())

    assert rel(y, y_ref) < 1e-4 and rel(h, h_ref) < 1e-4
    for a, b in zip(grads, grads_ref, strict=True):
        assert rel(a, b) < 1e-4


_INTERPRETER_CHECK = r"""
import torch
from latentspace.crsm import scan_triton
from latentspace.crsm.scan import selective_scan

def rel(a, b):
    return float((a.detach().double() - b.detach().double()).norm() / b.detach().double().norm())

worst = 0.0
for block_t, fwd, bwd, length, ed, fused in [(4, (4, 4), (8, 4), 13, 12, True), (8, (8, 4), (4, 4), 21, 8, False)]:
    scan_triton.configure(block_t, fwd, bwd)
    g = torch.Generator().manual_seed(length)
    x, dt, z = (torch.randn(2, length, ed, generator=g, dtype=torch.float64) for _ in range(3))
    if not fused:
        dt = dt.abs() * 0.3
    A = -torch.rand(ed, 4, generator=g, dtype=torch.float64) * 3
    B, C = (torch.randn(2, length, 4, generator=g, dtype=torch.float64) for _ in range(2))
    D, bias = torch.randn(ed, generator=g, dtype=torch.float64), torch.randn(ed, generator=g, dtype=torch.float64)
    ref = [t.clone().requires_grad_() for t in (x, dt, A, B, C, D, z, bias)][: 8 if fused else 6]
    kw = (lambda i: {"z": i[6], "delta_bias": i[7], "delta_softplus": True}) if fused else (lambda i: {})
    y_ref, h_ref = selective_scan(*ref[:6], mode="reference", **kw(ref))
    gy = torch.randn_like(y_ref)
    g_ref = torch.autograd.grad((y_ref * gy).sum(), ref)
    ins = [t.detach().float().requires_grad_() for t in ref]
    ins[0] = ins[0].detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()  # strided, as in Mamba
    y, h = selective_scan(*ins[:6], mode="triton", **kw(ins))
    grads = torch.autograd.grad((y * gy.float()).sum(), ins)
    worst = max([worst, rel(y, y_ref), rel(h, h_ref)] + [rel(a, b) for a, b in zip(grads, g_ref)])
print("WORST", worst)
"""


def test_triton_kernels_match_reference_in_the_interpreter(tmp_path):
    """The Triton kernels themselves (chunk carry, masked tails, reverse adjoint scan, fused gate and softplus),
    run on the CPU by Triton's interpreter against the float64 reference: values, final state, every gradient."""
    pytest.importorskip("triton")
    import os
    import subprocess
    import sys

    env = dict(os.environ, TRITON_INTERPRET="1")
    done = subprocess.run([sys.executable, "-c", _INTERPRETER_CHECK], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    worst = float(done.stdout.split("WORST")[-1])
    assert worst < 1e-5, worst
