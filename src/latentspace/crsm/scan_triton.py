"""GPU fast path of the selective scan: fused Triton kernels (forward and backward), no (B, T, ED, N) tensor.

One program owns (batch b, BLOCK_D channels) and walks the sequence keeping its (BLOCK_D, N) state in
registers, as Mamba's CUDA kernel does. The forward pass writes y and the state at every CHUNK-th step;
the backward pass walks the chunks in reverse, recomputes each chunk's states from its saved start into a
small per-program scratch buffer, then runs the adjoint recurrence dh_{t-1} = exp(delta_t A) dh_t + C_{t-1} dy_{t-1}.
Memory is O(B T ED) like the inputs, instead of O(B T ED N). `scan.selective_scan_ref` is the reference.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

CHUNK = 64


@triton.jit
def _scan_fwd(x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, y_ptr, hck_ptr, hlast_ptr, L, ED,
              NCHUNK: tl.constexpr, N: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr):
    pid_b = tl.program_id(0)
    pid_d = tl.program_id(1)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)  # (BD,)
    n = tl.arange(0, N)  # (N,)
    dmask = d < ED
    A = tl.load(A_ptr + d[:, None] * N + n[None, :], mask=dmask[:, None], other=0.0)  # (BD, N)
    Dv = tl.load(D_ptr + d, mask=dmask, other=0.0)  # (BD,)
    h = tl.zeros((BLOCK_D, N), dtype=tl.float32)
    for c in range(0, NCHUNK):
        ck = ((pid_b * NCHUNK + c) * ED + d[:, None]) * N + n[None, :]
        tl.store(hck_ptr + ck, h, mask=dmask[:, None])
        for i in range(0, CHUNK):
            t = c * CHUNK + i
            tm = t < L
            row = pid_b * L + t
            xt = tl.load(x_ptr + row * ED + d, mask=dmask & tm, other=0.0)  # (BD,)
            dtt = tl.load(dt_ptr + row * ED + d, mask=dmask & tm, other=0.0)  # (BD,)
            Bt = tl.load(B_ptr + row * N + n, mask=(n < N) & tm, other=0.0)  # (N,)
            Ct = tl.load(C_ptr + row * N + n, mask=(n < N) & tm, other=0.0)  # (N,)
            h = tl.exp(dtt[:, None] * A) * h + (dtt * xt)[:, None] * Bt[None, :]  # (BD, N)
            y = tl.sum(h * Ct[None, :], axis=1) + Dv * xt  # (BD,)
            tl.store(y_ptr + row * ED + d, y, mask=dmask & tm)
    tl.store(hlast_ptr + (pid_b * ED + d[:, None]) * N + n[None, :], h, mask=dmask[:, None])


@triton.jit
def _scan_bwd(x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, dy_ptr, hck_ptr, hbuf_ptr,
              dx_ptr, ddt_ptr, dA_ptr, dD_ptr, dB_ptr, dC_ptr, L, ED, NDBLK,
              NCHUNK: tl.constexpr, N: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr):
    pid_b = tl.program_id(0)
    pid_d = tl.program_id(1)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    n = tl.arange(0, N)
    dmask = d < ED
    A = tl.load(A_ptr + d[:, None] * N + n[None, :], mask=dmask[:, None], other=0.0)  # (BD, N)
    Dv = tl.load(D_ptr + d, mask=dmask, other=0.0)
    dh = tl.zeros((BLOCK_D, N), dtype=tl.float32)
    dA_acc = tl.zeros((BLOCK_D, N), dtype=tl.float32)
    dD_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    local = tl.arange(0, BLOCK_D)[:, None] * N + n[None, :]  # (BD, N) offsets inside one scratch slot
    buf = hbuf_ptr + (pid_b * NDBLK + pid_d) * CHUNK * BLOCK_D * N
    for cc in range(0, NCHUNK):
        c = NCHUNK - 1 - cc
        ck = ((pid_b * NCHUNK + c) * ED + d[:, None]) * N + n[None, :]
        h0 = tl.load(hck_ptr + ck, mask=dmask[:, None], other=0.0)
        h = h0
        for i in range(0, CHUNK):  # recompute this chunk's states
            t = c * CHUNK + i
            tm = t < L
            row = pid_b * L + t
            xt = tl.load(x_ptr + row * ED + d, mask=dmask & tm, other=0.0)
            dtt = tl.load(dt_ptr + row * ED + d, mask=dmask & tm, other=0.0)
            Bt = tl.load(B_ptr + row * N + n, mask=(n < N) & tm, other=0.0)
            h = tl.exp(dtt[:, None] * A) * h + (dtt * xt)[:, None] * Bt[None, :]
            tl.store(buf + i * BLOCK_D * N + local, h)
        tl.debug_barrier()
        for ii in range(0, CHUNK):  # adjoint, newest step first
            i = CHUNK - 1 - ii
            t = c * CHUNK + i
            tm = t < L
            row = pid_b * L + t
            h_t = tl.load(buf + i * BLOCK_D * N + local)
            prev = tl.load(buf + tl.maximum(i - 1, 0) * BLOCK_D * N + local)
            h_prev = tl.where(i > 0, prev, h0)  # (BD, N)
            xt = tl.load(x_ptr + row * ED + d, mask=dmask & tm, other=0.0)
            dtt = tl.load(dt_ptr + row * ED + d, mask=dmask & tm, other=0.0)
            dyt = tl.load(dy_ptr + row * ED + d, mask=dmask & tm, other=0.0)
            Bt = tl.load(B_ptr + row * N + n, mask=(n < N) & tm, other=0.0)
            Ct = tl.load(C_ptr + row * N + n, mask=(n < N) & tm, other=0.0)
            dh += dyt[:, None] * Ct[None, :]  # dL/dh_t
            part = (pid_b * NDBLK + pid_d) * L + t
            tl.store(dC_ptr + part * N + n, tl.sum(dyt[:, None] * h_t, axis=0), mask=(n < N) & tm)
            tl.store(dB_ptr + part * N + n, tl.sum(dh * (dtt * xt)[:, None], axis=0), mask=(n < N) & tm)
            dA_exp = tl.exp(dtt[:, None] * A)  # (BD, N)
            dhB = tl.sum(dh * Bt[None, :], axis=1)  # (BD,)
            g_decay = dh * h_prev * dA_exp  # d/d(delta A) of the decay term
            tl.store(dx_ptr + row * ED + d, dhB * dtt + Dv * dyt, mask=dmask & tm)
            tl.store(ddt_ptr + row * ED + d, dhB * xt + tl.sum(g_decay * A, axis=1), mask=dmask & tm)
            dA_acc += g_decay * dtt[:, None]
            dD_acc += dyt * xt
            dh = dh * dA_exp
        tl.debug_barrier()
    tl.store(dA_ptr + (pid_b * ED + d[:, None]) * N + n[None, :], dA_acc, mask=dmask[:, None])
    tl.store(dD_ptr + pid_b * ED + d, dD_acc, mask=dmask)


def _block_d(ed: int) -> int:
    return 32 if ed >= 32 else triton.next_power_of_2(ed)


class _SelectiveScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, delta, A, B, C, D):
        dtype = x.dtype
        x, delta, B, C = (t.float().contiguous() for t in (x, delta, B, C))
        A, D = A.float().contiguous(), D.float().contiguous()
        batch, length, ed = x.shape
        n = A.shape[1]
        block_d = _block_d(ed)
        nchunk = triton.cdiv(length, CHUNK)
        y = torch.empty_like(x)
        hck = torch.empty(batch, nchunk, ed, n, device=x.device, dtype=torch.float32)
        hlast = torch.empty(batch, ed, n, device=x.device, dtype=torch.float32)
        grid = (batch, triton.cdiv(ed, block_d))
        _scan_fwd[grid](x, delta, A, B, C, D, y, hck, hlast, length, ed, NCHUNK=nchunk, N=n, BLOCK_D=block_d,
                        CHUNK=CHUNK)
        ctx.save_for_backward(x, delta, A, B, C, D, hck)
        ctx.dtype = dtype
        ctx.mark_non_differentiable(hlast)
        return y.to(dtype), hlast

    @staticmethod
    def backward(ctx, dy, _dhlast):
        x, delta, A, B, C, D, hck = ctx.saved_tensors
        batch, length, ed = x.shape
        n = A.shape[1]
        block_d = _block_d(ed)
        nchunk = hck.shape[1]
        ndblk = triton.cdiv(ed, block_d)
        dy = dy.float().contiguous()
        dx, ddt = torch.empty_like(x), torch.empty_like(x)
        dA = torch.empty(batch, ed, n, device=x.device, dtype=torch.float32)
        dD = torch.empty(batch, ed, device=x.device, dtype=torch.float32)
        dB = torch.zeros(batch, ndblk, length, n, device=x.device, dtype=torch.float32)
        dC = torch.zeros(batch, ndblk, length, n, device=x.device, dtype=torch.float32)
        hbuf = torch.empty(batch, ndblk, CHUNK, block_d, n, device=x.device, dtype=torch.float32)
        _scan_bwd[(batch, ndblk)](x, delta, A, B, C, D, dy, hck, hbuf, dx, ddt, dA, dD, dB, dC, length, ed, ndblk,
                                  NCHUNK=nchunk, N=n, BLOCK_D=block_d, CHUNK=CHUNK)
        dt = ctx.dtype
        return dx.to(dt), ddt.to(dt), dA.sum(0), dB.sum(1).to(dt), dC.sum(1).to(dt), dD.sum(0)


def selective_scan_triton(x, delta, A, B, C, D):
    """Fused selective scan (same arguments and returns as `scan.selective_scan_ref`, h0 = 0).

    Args:
        x, delta: (B, T, ED); A: (ED, N), N a power of two; B, C: (B, T, N); D: (ED,).

    Returns:
        y (B, T, ED) in x's dtype, h_T (B, ED, N) float32.
    """
    return _SelectiveScan.apply(x, delta, A, B, C, D)
