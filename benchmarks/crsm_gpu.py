"""GPU part of the CRSM benchmark (run on the device machine): Triton scan correctness + training throughput.

Writes a JSON object to the path given as argv[1]: the fast path's relative errors against the float64
reference (float32 and bf16 inputs, strided views as in the model), a sweep of the kernel's tile shape
(forward + backward time of one 130M-model layer's scan), the top CUDA kernels of one Mamba training step,
and tokens/s + peak GiB of one training step (fwd + bwd + AdamW, bf16 autocast, T=1024) of a ~130M Mamba
(chunked Triton scan, and the pure-PyTorch pscan) against GPT-2 124M with SDPA attention, same run.
"""

from __future__ import annotations

import json
import sys
import time

import torch
import triton.testing

from latentspace.crsm import scan_triton
from latentspace.crsm.config import CRSMConfig
from latentspace.crsm.mamba import MambaLM
from latentspace.crsm.scan import selective_scan


def rel(a, b):
    return float((a.double().cpu() - b.double().cpu()).norm() / b.double().cpu().norm())


def correctness():
    """Relative errors of the triton path (values, final state, every gradient) against the float64 reference;
    `fused` cases hand in Mamba's gate z and dt bias + softplus, as MambaBlock does."""
    out = {}
    cases = [(2, 7, 80, 16, torch.float32, False), (2, 150, 96, 16, torch.float32, False),
             (3, 1024, 64, 16, torch.float32, False), (2, 1000, 72, 16, torch.bfloat16, False),
             (2, 150, 96, 16, torch.float32, True), (2, 1000, 72, 16, torch.bfloat16, True)]
    for (batch, length, ed, n, dtype, fused) in cases:
        g = torch.Generator().manual_seed(length)
        x = torch.randn(batch, length, ed, generator=g, dtype=torch.float64)
        if fused:  # raw dt before bias and softplus
            dt = torch.randn(batch, length, ed, generator=g, dtype=torch.float64) - 2
        else:
            dt = torch.rand(batch, length, ed, generator=g, dtype=torch.float64) * 0.2 + 0.001
        A = -torch.rand(ed, n, generator=g, dtype=torch.float64) * 4
        B = torch.randn(batch, length, n, generator=g, dtype=torch.float64)
        C = torch.randn(batch, length, n, generator=g, dtype=torch.float64)
        D = torch.randn(ed, generator=g, dtype=torch.float64)
        z = torch.randn(batch, length, ed, generator=g, dtype=torch.float64)
        bias = torch.randn(ed, generator=g, dtype=torch.float64) * 0.5
        if dtype == torch.bfloat16:  # the reference sees the same rounded inputs
            x, B, C, z = (t.to(dtype).double() for t in (x, B, C, z))
        ref_in = [t.cuda().requires_grad_() for t in (x, dt, A, B, C, D, z, bias)]
        names = ["x", "delta", "A", "B", "C", "D", "z", "delta_bias"]
        if not fused:
            ref_in, names = ref_in[:6], names[:6]

        def extra(ins, fused=fused):
            return {"z": ins[6], "delta_bias": ins[7], "delta_softplus": True} if fused else {}

        y_ref, h_ref = selective_scan(*ref_in[:6], mode="reference", **extra(ref_in))
        gy = torch.randn_like(y_ref)
        grads_ref = torch.autograd.grad((y_ref * gy).sum(), ref_in)
        # x and z as transposed views (as the conv gives), B and C as slices of one projection, as in MambaBlock
        ins = [t.detach().float().requires_grad_() for t in ref_in]
        ins[0] = ref_in[0].detach().to(dtype).transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()
        bc = torch.cat([ref_in[3].detach(), ref_in[4].detach()], dim=-1).to(dtype)
        ins[3], ins[4] = (t.detach().requires_grad_() for t in bc.split(n, dim=-1))
        if fused:
            ins[6] = ref_in[6].detach().to(dtype).requires_grad_()
        y, h = selective_scan(*ins[:6], mode="triton", **extra(ins))
        grads = torch.autograd.grad((y.float() * gy.float()).sum(), ins)
        errs = {"y": rel(y.detach(), y_ref.detach()), "h_last": rel(h, h_ref.detach())}
        errs.update({f"d{name}": rel(a, b) for name, a, b in zip(names, grads, grads_ref, strict=True)})
        out[f"B{batch}_T{length}_ED{ed}_N{n}_{str(dtype).split('.')[-1]}{'_fused' if fused else ''}"] = errs
    return out


def layer_scan(batch=8, length=1024, ed=1536, n=16, seed=0, device="cuda"):
    """(forward, forward + backward) closures of one 130M-model layer's fused scan on bf16 inputs laid out as
    MambaBlock passes them (x a transposed view, z half of in_proj's output, B and C slices of x_proj's)."""
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(batch, ed, length, device=device, generator=g).to(torch.bfloat16).transpose(1, 2)
    z = torch.randn(batch, length, 2 * ed, device=device, generator=g).to(torch.bfloat16)[..., ed:]
    dt = (torch.randn(batch, length, ed, device=device, generator=g) - 3).to(torch.bfloat16)
    A = -torch.exp(torch.log(torch.arange(1, n + 1, device=device, dtype=torch.float32)).repeat(ed, 1))
    _, B, C = torch.randn(batch, length, 48 + 2 * n, device=device, generator=g).to(torch.bfloat16).split(
        [48, n, n], dim=-1)
    ins = [t.detach().requires_grad_() for t in (x, dt, A, B, C, torch.ones(ed, device=device), z,
                                                 torch.zeros(ed, device=device))]
    gy = torch.randn(batch, length, ed, device=device, generator=g).to(torch.bfloat16)

    def fwd():
        with torch.no_grad():
            return selective_scan(*ins[:6], mode="triton", z=ins[6], delta_bias=ins[7], delta_softplus=True)

    def run():
        y, _ = selective_scan(*ins[:6], mode="triton", z=ins[6], delta_bias=ins[7], delta_softplus=True)
        return torch.autograd.grad(y, ins, gy)

    return fwd, run


def sweep(batch=8, length=1024, ed=1536, n=16):
    """Forward and forward + backward ms of one 130M-model layer's fused scan for several tile shapes.

    For each chunk length, the forward's (channels per program, warps) is picked on forward time, then the
    backward's on forward + backward time; the best overall is kept (`scan_triton.configure`).
    """
    fwd, run = layer_scan(batch, length, ed, n, seed=0)

    def bench(fn, fwd_tile, bwd_tile, block_t):
        scan_triton.configure(block_t, fwd_tile, bwd_tile)
        try:
            return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
        except Exception as err:  # a tile that does not compile (registers, shared memory) is skipped
            print("tile", block_t, fwd_tile, bwd_tile, "failed:", str(err)[:120], flush=True)
            return float("inf")

    results = []
    pass_tiles = [(1, 1), (2, 1), (4, 1), (2, 2), (4, 2), (8, 2), (4, 4), (8, 4), (16, 4)]
    for block_t in (32, 64, 128):
        fwd_ms = {tile: bench(fwd, tile, (4, 4), block_t) for tile in pass_tiles}
        best_fwd = min(fwd_ms, key=fwd_ms.get)
        for tile in pass_tiles:
            ms = bench(run, best_fwd, tile, block_t)
            results.append({"block_t": block_t, "fwd_tile": best_fwd, "bwd_tile": tile,
                            "fwd_ms": fwd_ms[best_fwd], "fwd_bwd_ms": ms})
            print(results[-1], flush=True)
    best = min(results, key=lambda r: r["fwd_bwd_ms"])
    scan_triton.configure(best["block_t"], best["fwd_tile"], best["bwd_tile"])
    print("best", best, flush=True)
    return {"shape": [batch, length, ed, n], "results": results, "best": best}


def scan_ms(batch=8, length=1024, ed=1536, n=16):
    """Median ms of one 130M-model layer's fused scan (forward; forward + backward) at the current tile."""
    fwd, run = layer_scan(batch, length, ed, n, seed=1)
    return {"fwd_ms": triton.testing.do_bench(fwd, warmup=25, rep=200, return_mode="median"),
            "fwd_bwd_ms": triton.testing.do_bench(run, warmup=25, rep=200, return_mode="median")}


def profile_step(batch=8, length=1024, vocab=50280):
    """The CUDA kernels that take the most time in one Mamba training step (after warm-up)."""
    model = MambaLM(CRSMConfig.preset("mamba-130m").replace(scan="triton")).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    tokens = torch.randint(0, vocab, (batch, length + 1), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(tokens[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.float().view(-1, logits.shape[-1]),
                                                     tokens[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=25)
    print(table, flush=True)
    return table


def train_throughput(build, batch, length=1024, vocab=50280, steps=6, warmup=3, compile=False):
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    model = build().cuda()
    params = sum(p.numel() for p in model.parameters())
    if compile:  # the same module through torch.compile (inductor); the warm-up steps include the compilation
        model = torch.compile(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    tokens = torch.randint(0, vocab, (batch, length + 1), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(tokens[:, :-1])
            logits = logits.logits if hasattr(logits, "logits") else logits
            loss = torch.nn.functional.cross_entropy(logits.float().view(-1, logits.shape[-1]),
                                                     tokens[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    times.sort()
    median = times[len(times) // 2]
    peak = torch.cuda.max_memory_allocated() / 2**30
    return {"params_m": params / 1e6, "batch": batch, "seq_len": length, "step_s": median,
            "tokens_per_s": batch * length / median, "peak_gib": peak}


def main():
    result = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    result["correctness"] = correctness()
    print(json.dumps(result["correctness"], indent=1), flush=True)
    if "--sweep" in sys.argv:  # otherwise the defaults in scan_triton.py (chosen by an earlier sweep)
        result["tile_sweep"] = sweep()
    result["tile"] = {"block_t": scan_triton.BLOCK_T, "fwd": scan_triton.FWD_TILE, "bwd": scan_triton.BWD_TILE}
    result["scan_ms"] = scan_ms()
    result["profile_mamba_step"] = profile_step()
    from transformers import GPT2Config, GPT2LMHeadModel

    def gpt2():
        return GPT2LMHeadModel(GPT2Config(vocab_size=50280, n_positions=1024, attn_implementation="sdpa"))

    def mamba(scan):
        return lambda: MambaLM(CRSMConfig.preset("mamba-130m").replace(scan=scan))

    runs = {}
    plan = [("gpt2_sdpa", gpt2, 8, False), ("mamba_triton", mamba("triton"), 8, False),
            ("mamba_pscan", mamba("pscan"), 2, False)]
    if "--compile" in sys.argv:  # both models through torch.compile, side by side with the eager runs
        plan += [("gpt2_sdpa_compiled", gpt2, 8, True), ("mamba_triton_compiled", mamba("triton"), 8, True)]
    for name, build, batch, compiled in plan:
        try:
            runs[name] = train_throughput(build, batch, compile=compiled)
        except torch.OutOfMemoryError as err:
            runs[name] = {"error": f"out of memory: {str(err)[:200]}"}
        except Exception as err:  # a compile failure is recorded, the other runs go on
            runs[name] = {"error": f"{type(err).__name__}: {str(err)[:300]}"}
        print(name, runs[name], flush=True)
    result["throughput"] = runs
    with open(sys.argv[1], "w") as handle:
        json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
