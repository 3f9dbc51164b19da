"""GPU part of the CRSM benchmark (run on the device machine): Triton scan correctness + training throughput.

Writes a JSON object to the path given as argv[1]: the fast path's relative errors against the float64
reference, and tokens/s + peak GiB of one training step (fwd + bwd + AdamW, bf16 autocast, T=1024) of a
~130M Mamba (fused Triton scan, and the pure-PyTorch pscan) against GPT-2 124M with SDPA attention.
"""

from __future__ import annotations

import json
import sys
import time

import torch

from latentspace.crsm.config import CRSMConfig
from latentspace.crsm.mamba import MambaLM
from latentspace.crsm.scan import selective_scan, selective_scan_ref


def rel(a, b):
    return float((a.double().cpu() - b.double().cpu()).norm() / b.double().cpu().norm())


def correctness():
    out = {}
    for (batch, length, ed, n) in [(2, 7, 80, 16), (2, 150, 96, 16), (3, 1024, 64, 16)]:
        g = torch.Generator().manual_seed(length)
        x = torch.randn(batch, length, ed, generator=g, dtype=torch.float64)
        dt = torch.rand(batch, length, ed, generator=g, dtype=torch.float64) * 0.2 + 0.001
        A = -torch.rand(ed, n, generator=g, dtype=torch.float64) * 4
        B = torch.randn(batch, length, n, generator=g, dtype=torch.float64)
        C = torch.randn(batch, length, n, generator=g, dtype=torch.float64)
        D = torch.randn(ed, generator=g, dtype=torch.float64)
        ref_in = [t.cuda().requires_grad_() for t in (x, dt, A, B, C, D)]
        y_ref, h_ref = selective_scan_ref(*ref_in)
        gy = torch.randn_like(y_ref)
        grads_ref = torch.autograd.grad((y_ref * gy).sum(), ref_in)
        ins = [t.detach().float().requires_grad_() for t in ref_in]
        y, h = selective_scan(*ins, mode="triton")
        grads = torch.autograd.grad((y * gy.float()).sum(), ins)
        errs = {"y": rel(y, y_ref), "h_last": rel(h, h_ref)}
        errs.update({f"d{name}": rel(a, b) for name, a, b in zip(["x", "delta", "A", "B", "C", "D"], grads, grads_ref,
                                                                  strict=True)})
        out[f"B{batch}_T{length}_ED{ed}_N{n}"] = errs
    return out


def train_throughput(build, batch, length=1024, vocab=50280, steps=6, warmup=3):
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    model = build().cuda()
    params = sum(p.numel() for p in model.parameters())
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
    from transformers import GPT2Config, GPT2LMHeadModel

    def gpt2():
        return GPT2LMHeadModel(GPT2Config(vocab_size=50280, n_positions=1024, attn_implementation="sdpa"))

    def mamba(scan):
        return lambda: MambaLM(CRSMConfig.preset("mamba-130m").replace(scan=scan))

    runs = {}
    for name, build, batch in [("gpt2_sdpa", gpt2, 8), ("mamba_triton", mamba("triton"), 8),
                               ("mamba_pscan", mamba("pscan"), 2)]:
        try:
            runs[name] = train_throughput(build, batch)
        except torch.OutOfMemoryError as err:
            runs[name] = {"error": f"out of memory: {str(err)[:200]}"}
        print(name, runs[name], flush=True)
    result["throughput"] = runs
    with open(sys.argv[1], "w") as handle:
        json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
