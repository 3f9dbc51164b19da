"""CRSM benchmark: path-star accuracy (greedy vs planner), planner cost, perplexity vs a same-size transformer.

CPU figures are measured here in one run; GPU figures (Triton scan vs GPT-2 124M SDPA training throughput)
come from `benchmarks/crsm_gpu.py`, run on the device machine, whose JSON is merged in when present
(benchmarks/results/crsm_gpu.json). Usage: python benchmarks/crsm.py [--quick] [--only mcts] [--baseline-src DIR]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import statistics
import sys
import threading
import time
from pathlib import Path

import torch
from _common import cpu_name, machine

from latentspace.core.runs import markdown_table, set_threads
from latentspace.crsm.config import CRSMConfig, PipelineConfig
from latentspace.crsm.model import CRSM
from latentspace.crsm.pipeline import corpus_tokens, run_pipeline
from latentspace.crsm.planner import make_mcts  # module level: only names older copies have (--baseline-src)
from latentspace.crsm.tasks import PathStarTask, lm_batch, pathstar_accuracy, perplexity

RESULTS = Path(__file__).parent / "results"


def bench_pathstar(settings, steps, samples, sims, work: Path, on_row=None, **size):
    rows = []
    for degree, length in settings:
        config = PipelineConfig().override({
            "data": {"pathstar_degree": degree, "pathstar_length": length, "value_rollouts": 256},
            "backbone.steps": steps, "distill.steps": 150, "value.steps": 150, "model.mcts_simulations": sims,
            **size})
        start = time.time()
        model = run_pipeline(config, work / f"pathstar-{degree}-{length}", quiet=True)
        train_s = time.time() - start
        task = PathStarTask(degree, length)
        greedy = pathstar_accuracy(model, task, samples)
        start = time.time()
        planner = pathstar_accuracy(model, task, samples, planner="sync", num_simulations=sims)
        planner_dyn = pathstar_accuracy(model, task, samples, planner="sync", num_simulations=sims,
                                        transition="dynamics")
        rows.append({"degree": degree, "length": length, "greedy": greedy, "planner_backbone": planner,
                     "planner_dynamics": planner_dyn, "chance": 1 / degree, "train_s": train_s,
                     "eval_planner_s": time.time() - start, "backbone_steps": steps, "samples": samples,
                     "simulations": sims,
                     "model": {k: getattr(config.model, k) for k in ("d_model", "n_layers", "d_state")},
                     "batch_size": config.data.batch_size})
        print(rows[-1], flush=True)
        if on_row is not None:
            on_row(rows)
    return rows


def _spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


SEARCH_SETTINGS = ((256, 8, 8, 64), (256, 8, 32, 256), (512, 16, 8, 64))  # d_model, layers, batch, sims/search


def search_model(d_model: int, n_layers: int) -> CRSM:
    """The untrained CRSM the planner-cost rows time (seed 0: the same weights in every run)."""
    torch.manual_seed(0)
    return CRSM(CRSMConfig(d_model=d_model, n_layers=n_layers, mcts_max_depth=64)).eval()


def _search_root(model: CRSM):
    prompt = model.encode("import os\nimport sys\n\n\ndef main(argv):\n    ")
    latent, caches = model.prefill(torch.tensor([prompt]))
    return latent[0], caches


def search_rates(model: CRSM, batch: int, sims: int, repeats: int, seconds: float):
    """Simulations/s of both transitions on the same tree code, interleaved: `repeats` alternating windows each.

    Returns ({transition: [sims/s per window]}, {transition: [mean leaves per round per window]}, the searches).
    Uses only `make_mcts` and `MCTS.search`, so it also times an older copy of the package (`--baseline-src`).
    """
    latent, caches = _search_root(model)
    searches = {t: make_mcts(model, transition=t, batch=batch, max_depth=64) for t in ("dynamics", "backbone")}
    rates = {t: [] for t in searches}
    batches = {t: [] for t in searches}
    for mcts in searches.values():
        mcts.search(latent, caches, batch)  # warm-up
    for _ in range(repeats):
        for transition, mcts in searches.items():
            start, done, rounds, evaluated = time.perf_counter(), 0, 0, 0
            while time.perf_counter() - start < seconds:
                result = mcts.search(latent, caches, sims)
                done += result.simulations
                rounds, evaluated = rounds + result.rounds, evaluated + result.evaluated
            rates[transition].append(done / (time.perf_counter() - start))
            batches[transition].append(evaluated / max(rounds, 1))
    return rates, batches, searches


def _baseline_rates(src: str, d_model: int, n_layers: int, batch: int, sims: int, repeats: int,
                    seconds: float) -> dict:
    """`search_rates` of the package at `src` (an older copy, e.g. `git archive`), in a child process."""
    import subprocess

    env = dict(os.environ, PYTHONPATH=src)
    out = subprocess.run([sys.executable, __file__, "--rates", f"{d_model},{n_layers},{batch},{sims},{repeats},"
                          f"{seconds}"], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_search_speed(model: CRSM, batch: int, sims: int, repeats: int, seconds: float,
                       baseline_src: str | None = None):
    """Simulations/s of both transitions on the same tree code, interleaved; with `baseline_src`, the same
    windows of an older copy of the package just before and just after (child processes), for a before/after."""
    d_model, n_layers = model.config.d_model, model.config.n_layers
    before = (_baseline_rates(baseline_src, d_model, n_layers, batch, sims, (repeats + 1) // 2, seconds)
              if baseline_src else None)
    rates, batches, searches = search_rates(model, batch, sims, repeats, seconds)
    latent, caches = _search_root(model)
    out = {f"sims_per_s_{t}": _spread(r) for t, r in rates.items()}
    out["speedup_median"] = out["sims_per_s_dynamics"]["median"] / out["sims_per_s_backbone"]["median"]
    if baseline_src:
        after = _baseline_rates(baseline_src, d_model, n_layers, batch, sims, repeats // 2, seconds)
        base = {f"sims_per_s_{t}": _spread(before[t] + after[t]) for t in before}
        base["speedup_median"] = base["sims_per_s_dynamics"]["median"] / base["sims_per_s_backbone"]["median"]
        out["baseline"] = {"src": baseline_src, **base}
    out["evaluation_us_per_round"] = _evaluation_cost(model, batch, latent.unsqueeze(0), caches, repeats)
    out["in_search_us_per_sim"] = {t: _in_search_breakdown(model, mcts, latent, caches, sims, seconds)
                                   for t, mcts in searches.items()}
    out["mean_leaves_per_round"] = {t: statistics.mean(b) for t, b in batches.items()}
    out.update(batch=batch, simulations_per_search=sims, d_model=d_model, n_layers=n_layers,
               params_backbone=sum(p.numel() for p in model.backbone.parameters()),
               params_dynamics=sum(p.numel() for p in model.dynamics.parameters()))
    print(f"search d={d_model} L={n_layers} batch={batch}: "
          f"{out['sims_per_s_dynamics']['median']:.0f} vs {out['sims_per_s_backbone']['median']:.1f} sims/s "
          f"({out['speedup_median']:.1f}x)" + (f"; baseline {base['sims_per_s_dynamics']['median']:.0f} vs "
                                                f"{base['sims_per_s_backbone']['median']:.1f} "
                                                f"({base['speedup_median']:.1f}x)" if baseline_src else ""),
          flush=True)
    return out


def bench_search_part(repeats: int, baseline_src: str | None = None) -> list[dict]:
    """The planner-cost rows of `SEARCH_SETTINGS`."""
    return [bench_search_speed(search_model(d, layers), batch, sims, repeats, 1.0, baseline_src)
            for d, layers, batch, sims in SEARCH_SETTINGS]


def search_metrics(search: list[dict]) -> dict:
    return {"mcts_sims_per_s_dynamics": search[0]["sims_per_s_dynamics"]["median"],
            "mcts_sims_per_s_backbone": search[0]["sims_per_s_backbone"]["median"],
            "mcts_speedup_dynamics": search[0]["speedup_median"],
            "mcts_speedup_dynamics_batch32": search[1]["speedup_median"],
            "mcts_speedup_dynamics_d512_l16": search[2]["speedup_median"]}


def rerun_search(quick: bool, baseline_src: str | None) -> None:
    """`--only mcts`: rerun the planner-cost search rows alone and merge them into crsm.json / crsm.md."""
    path = RESULTS / "crsm.json"
    if not path.exists():
        sys.exit(f"{path} is missing: run the full benchmark first (--only mcts updates its search rows)")
    result = json.loads(path.read_text())
    set_threads(1, blas=True)  # as in the full run
    repeats = 3 if quick else 5
    load_before = os.getloadavg()
    started = time.time()
    search = bench_search_part(repeats, baseline_src)
    result["metrics"].update(search_metrics(search))
    result["planner_cost"]["search"] = search
    result["planner_cost"]["search_rerun"] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": "python " + " ".join(sys.argv), "seconds": time.time() - started,
        "load_before": load_before, "load_after": os.getloadavg(),
        "note": f"search rows rerun alone (--only mcts); everything else is from the full run of {result['date']}"}
    path.write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(result)


ASYNC_MODES = {  # name -> generate() settings of the async planner
    "process": {"planner_backend": "process", "planner_nice": 19},  # the default: a child process at nice 19
    "process_nice0": {"planner_backend": "process", "planner_nice": 0},  # the same at generation's priority
    "thread": {"planner_backend": "thread"},  # a thread of the generating process (the GIL is shared)
}


def _in_search_breakdown(model: CRSM, mcts, latent, caches, sims: int, seconds: float) -> dict:
    """Microseconds per simulation inside real searches: the transition call, the heads call, the rest (the tree)."""
    from latentspace.crsm.kernels import search_kernels

    kernels = search_kernels(model)
    spent = {"transition": 0.0, "heads": 0.0}

    def timed(name, fn):
        def call(*args, **kwargs):
            start = time.perf_counter()
            result = fn(*args, **kwargs)
            spent[name] += time.perf_counter() - start
            return result
        return call

    original = kernels.transition, kernels.heads
    kernels.transition, kernels.heads = timed("transition", kernels.transition), timed("heads", kernels.heads)
    model.step = timed("transition", CRSM.step.__get__(model))  # an instance attribute shadows the method
    try:
        start, done = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            done += mcts.search(latent, caches, sims).simulations
        total = time.perf_counter() - start
    finally:
        kernels.transition, kernels.heads = original
        del model.step
    out = {name: t / done * 1e6 for name, t in spent.items()}
    out["tree"] = total / done * 1e6 - out["transition"] - out["heads"]
    return out


def _evaluation_cost(model: CRSM, batch: int, latent, caches, repeats: int) -> dict:
    """Microseconds of one round's batched evaluation alone (no tree): the transition, then the heads (medians)."""
    from latentspace.crsm.kernels import search_kernels

    kernels = search_kernels(model)
    states = latent.expand(batch, -1).contiguous()  # (N, D)
    batch_caches = [(conv.expand(batch, -1, -1).contiguous(), ssm.expand(batch, -1, -1).contiguous())
                    for conv, ssm in caches]
    tokens = torch.arange(batch) % model.config.vocab_size
    k = min(model.config.mcts_top_k, model.config.vocab_size)
    calls = {"dynamics_transition": lambda: kernels.dynamics(states, tokens),
             "backbone_transition": lambda: model.step(tokens, batch_caches),
             "heads": lambda: kernels.heads(states, k)}
    times = {name: [] for name in calls}
    with torch.no_grad():
        for _ in range(repeats):
            for name, call in calls.items():
                n = 20 if name == "backbone_transition" else 200
                call()
                start = time.perf_counter()
                for _ in range(n):
                    call()
                times[name].append((time.perf_counter() - start) / n * 1e6)
    return {name: statistics.median(t) for name, t in times.items()}


def bench_async_cost(model: CRSM, tokens: int, repeats: int, budgets=(16, 64)):
    """Generation tokens/s with the async planner off vs on, interleaved repeats, per search budget (simulations).

    Every async mode (`ASYNC_MODES`) runs interleaved with "off" in each repeat. Controls run generation (planner
    off) beside a thread of pure Python (it holds the GIL, shares no tensors), beside a thread of matrix products
    (mostly without the GIL) and beside a process of pure Python (no GIL shared, one more busy CPU): the cost of
    sharing the interpreter vs the cost of sharing the CPU.
    """
    import multiprocessing

    from latentspace.crsm.generate import generate
    from latentspace.crsm.planner_process import planner_worker, shutdown_planners, warm_up

    prompt = model.encode("import os\nimport sys\n\n\ndef main(argv):\n    ")
    warm_up()
    start = time.perf_counter()
    workers = [planner_worker(model, nice=settings["planner_nice"])
               for settings in ASYNC_MODES.values() if "planner_nice" in settings]
    while not all(w.ready for w in workers) and time.perf_counter() - start < 120:
        time.sleep(0.05)
    out = {"planner_process_start_s": time.perf_counter() - start}
    for settings in ASYNC_MODES.values():  # warm-up
        generate(model, prompt, 8, planner="async", stop_at_eos=False, num_simulations=8, transition="dynamics",
                 **settings)
    for sims in budgets:
        runs = {mode: [] for mode in ("off", *ASYNC_MODES)}
        searches = {mode: [] for mode in ASYNC_MODES}
        applied = {mode: [] for mode in ASYNC_MODES}
        cpu = {mode: [] for mode in runs}  # CPU s per generation: (generating process, planner process)
        for _ in range(repeats):
            for mode in runs:
                settings = ASYNC_MODES.get(mode, {})
                worker = (planner_worker(model, nice=settings["planner_nice"])
                          if settings.get("planner_backend") == "process" else None)
                child = worker.cpu_seconds() if worker else None
                own = time.process_time()
                gen = generate(model, prompt, tokens, planner="off" if mode == "off" else "async", stop_at_eos=False,
                               num_simulations=sims, transition="dynamics", time_budget=0.05, **settings)
                own = time.process_time() - own
                child = worker.cpu_seconds() - child if worker and child is not None else 0.0
                runs[mode].append(gen.tokens_per_s)
                cpu[mode].append((own / gen.seconds, child / gen.seconds))  # cores busy during the generation
                if mode != "off":
                    searches[mode].append(gen.searches)
                    applied[mode].append(gen.deltas_applied)
        off = statistics.median(runs["off"])
        row = {"tokens_per_s_off": _spread(runs["off"]),
               "cores_busy_off": statistics.median(c[0] for c in cpu["off"])}
        for mode in ASYNC_MODES:
            on = statistics.median(runs[mode])
            cost = [1 - a / o for o, a in zip(runs["off"], runs[mode], strict=True)]  # per interleaved pair
            row[mode] = {"tokens_per_s": _spread(runs[mode]), "cost_frac_of_medians": 1 - on / off,
                         "cost_frac_pairs": _spread(cost), "searches_per_generation": statistics.mean(searches[mode]),
                         "deltas_applied_per_generation": statistics.mean(applied[mode]),
                         "cores_busy_generating_process": statistics.median(c[0] for c in cpu[mode]),
                         "cores_busy_planner_process": statistics.median(c[1] for c in cpu[mode])}
            print(f"async sims={sims} {mode}: off {off:.1f} tok/s, async {on:.1f} tok/s, cost {1 - on / off:.2f}, "
                  f"{statistics.mean(searches[mode]):.0f} searches", flush=True)
        out[f"sims_{sims}"] = row
    out["process_submit_poll_us"] = _submit_poll_cost(model, prompt)
    shutdown_planners()

    def pure_python(stop):
        while not stop.is_set():
            sum(i * i for i in range(1000))

    def matmul(stop):  # releases the GIL for most of its time: the CPU cost of a second busy thread alone
        a = torch.randn(512, 512)
        while not stop.is_set():
            a @ a

    for name, work in (("pure_python", pure_python), ("matmul", matmul)):
        stop = threading.Event()
        thread = threading.Thread(target=work, args=(stop,), daemon=True)
        thread.start()
        control = [generate(model, prompt, tokens, planner="off", stop_at_eos=False).tokens_per_s
                   for _ in range(repeats)]
        stop.set()
        thread.join()
        out[f"control_off_beside_{name}_thread"] = _spread(control)
    ctx = multiprocessing.get_context("forkserver")
    stop = ctx.Event()
    process = ctx.Process(target=_busy_python, args=(stop,), daemon=True)
    process.start()
    control = [generate(model, prompt, tokens, planner="off", stop_at_eos=False).tokens_per_s for _ in range(repeats)]
    stop.set()
    process.join(10)
    out["control_off_beside_pure_python_process"] = _spread(control)
    return out


def _submit_poll_cost(model: CRSM, prompt: list[int], n: int = 2000) -> float:
    """Microseconds the generating thread spends per token in the process planner's submit + poll (median of 5)."""
    from latentspace.crsm.planner_process import ProcessPlanner

    latent, caches = model.prefill(torch.tensor([prompt]))
    planner = ProcessPlanner(model, 16, 0.05, transition="dynamics").start()
    out = []
    for _ in range(5):
        start = time.perf_counter()
        for i in range(n):
            planner.poll()
            planner.submit(i, latent, caches, prompt)
        out.append((time.perf_counter() - start) / n * 1e6)
    planner.close()
    return statistics.median(out)


def _busy_python(stop):
    while not stop.is_set():
        sum(i * i for i in range(1000))


def bench_perplexity(steps: int, work: Path, d_model: int = 96, n_layers: int = 3, seq_len: int = 64,
                     corpus_bytes: int = 300_000):
    """Mamba backbone vs a same-size GPT-2 (SDPA) on Python stdlib source, same tokens seen."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = PipelineConfig().override({
        "model": {"d_model": d_model, "n_layers": n_layers},
        "data": {"task": "lm", "seq_len": seq_len, "batch_size": 16, "corpus_bytes": corpus_bytes,
                 "distill_sequences": 32, "value_rollouts": 16},
        "backbone": {"steps": steps, "lr": 2e-3}, "distill.steps": 60, "value.steps": 60})
    start = time.time()
    mamba = run_pipeline(config, work / "lm", quiet=True)
    mamba_s = time.time() - start
    train, val = corpus_tokens(mamba, config)
    ppl_mamba = perplexity(lambda t: mamba(t)[0], val, config.data.seq_len)
    n_mamba = sum(p.numel() for p in mamba.backbone.parameters())
    per_layer = 12 * config.model.d_model**2 + 13 * config.model.d_model
    layers = max(1, round((n_mamba - mamba.backbone.embedding.weight.numel()) / per_layer))
    torch.manual_seed(config.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gpt = GPT2LMHeadModel(GPT2Config(vocab_size=mamba.config.vocab_size, n_positions=config.data.seq_len,
                                     n_embd=config.model.d_model, n_layer=layers, n_head=4,
                                     attn_implementation="sdpa")).to(device)
    n_gpt = sum(p.numel() for p in gpt.parameters())
    opt = torch.optim.AdamW(gpt.parameters(), lr=1e-3, weight_decay=0.01)
    start = time.time()
    warmup = min(50, steps // 10)
    for step in range(steps):
        lr = 1e-3 * min(1.0, (step + 1) / max(1, warmup))
        lr = lr * (0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(step / steps * 3.14159)).item()))
        for group in opt.param_groups:
            group["lr"] = lr
        batch = lm_batch(train, config.data.batch_size, config.data.seq_len, seed=config.seed * 1_000_003 + step)
        batch = batch.to(device)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            logits = gpt(batch[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), batch[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(gpt.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
    gpt_s = time.time() - start
    gpt.eval().cpu()
    ppl_gpt = perplexity(lambda t: gpt(t).logits, val, config.data.seq_len)
    return mamba, {"ppl_mamba": ppl_mamba, "ppl_transformer": ppl_gpt, "params_mamba": n_mamba,
                   "params_transformer": n_gpt, "transformer_layers": layers,
                   "train_tokens": steps * config.data.batch_size * config.data.seq_len,
                   "train_s_mamba_pipeline": mamba_s, "train_s_transformer": gpt_s,
                   "corpus": f"Python standard library source (top-level *.py, sorted), {corpus_bytes} bytes, "
                             "byte tokens, "
                             "10% held out"}



def gpu_metrics(gpu: dict) -> dict:
    tp = gpu["throughput"]
    return {
        "gpu_train_tokens_per_s_mamba": tp["mamba_triton"].get("tokens_per_s"),
        "gpu_train_tokens_per_s_gpt2": tp["gpt2_sdpa"].get("tokens_per_s"),
        "gpu_peak_gib_mamba": tp["mamba_triton"].get("peak_gib"),
        "gpu_peak_gib_gpt2": tp["gpt2_sdpa"].get("peak_gib"),
        "gpu_train_tokens_per_s_mamba_pscan": tp["mamba_pscan"].get("tokens_per_s"),
        "gpu_peak_gib_mamba_pscan": tp["mamba_pscan"].get("peak_gib"),
    }


def gpu_lines(gpu: dict) -> list[str]:
    """The GPU section of crsm.md from results/crsm_gpu.json."""
    lines = ["## GPU training throughput (T=1024, bf16 autocast, fwd+bwd+AdamW)", "",
             f"Recorded in results/crsm_gpu.json (benchmarks/crsm_gpu.py on the device machine, one {gpu['gpu']}, "
             "all rows in one run), not rerun here.", "",
             markdown_table(["model", "params (M)", "batch", "tokens/s", "peak GiB"],
                            [[k, v.get("params_m", "-"), v.get("batch", "-"),
                              v.get("tokens_per_s", v.get("error", "")[:60]), v.get("peak_gib", "-")]
                             for k, v in gpu["throughput"].items()]), ""]
    if "scan_ms" in gpu:
        tile = gpu.get("tile", {})
        lines += [f"One layer's fused scan at the 130M model's size (B 8, T 1024, ED 1536, N 16, bf16 inputs), tile "
                  f"{tile}: forward {gpu['scan_ms']['fwd_ms']:.3f} ms, forward + backward "
                  f"{gpu['scan_ms']['fwd_bwd_ms']:.3f} ms.", ""]
    for name, prev in gpu.get("previous_kernels", {}).items():
        lines += [f"- earlier kernel `{name}`: {prev['note']}: Mamba {prev['mamba_tokens_per_s']:.0f} tok/s at "
                  f"{prev['mamba_peak_gib']:.2f} GiB vs GPT-2 {prev['gpt2_tokens_per_s']:.0f} tok/s at "
                  f"{prev['gpt2_peak_gib']:.2f} GiB."]
    if gpu.get("correctness"):
        worst = {k: max(v.values()) for k, v in gpu["correctness"].items()}
        lines += ["", "Largest relative error against the float64 reference (values, final state, every gradient): "
                  + ", ".join(f"{k} {v:.1e}" for k, v in worst.items()) + "."]
    return lines + [""]


def refresh_gpu_section() -> None:
    """Merge results/crsm_gpu.json into crsm.json/crsm.md without rerunning the CPU parts."""
    gpu = json.loads((RESULTS / "crsm_gpu.json").read_text())
    result = json.loads((RESULTS / "crsm.json").read_text())
    result["metrics"].update(gpu_metrics(gpu))
    result["gpu"], result["machine"]["gpu"] = gpu, gpu["gpu"]
    result["notes"] = result["notes"].replace("(one H100)", f"(one {gpu['gpu']})")
    (RESULTS / "crsm.json").write_text(json.dumps(result, indent=2) + "\n")
    md = (RESULTS / "crsm.md").read_text()
    head = md.split("## GPU training throughput")[0]
    for key in gpu_metrics(gpu):
        value = result["metrics"][key]
        head = re.sub(rf"^\| {key} \| .* \|$", f"| {key} | {'n/a' if value is None else value:.4g} |", head,
                      flags=re.M)
    head = re.sub(r"GPU figures: [^.]*\.", f"GPU figures: {gpu['gpu']}.", head, count=1)
    head = head.replace("(one H100)", f"(one {gpu['gpu']})")
    (RESULTS / "crsm.md").write_text(head + "\n".join(gpu_lines(gpu)))

def write_markdown(result: dict) -> None:
    """results/crsm.md from the result object (the same numbers as crsm.json, as tables)."""
    metrics, rows, gpu = result["metrics"], result["pathstar"], result["gpu"]
    search, async_cost = result["planner_cost"]["search"], result["planner_cost"]["async"]
    lines = [f"# CRSM benchmark ({result['date']})", "",
             f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores (shared), GPU figures: "
             f"{result['machine']['gpu']}. Command: `{result['command']}`.", "",
             markdown_table(["metric", "value"], [[k, "n/a" if v is None else v] for k, v in metrics.items()]), "",
             "## Path-star (fresh graphs; planner = synchronous MCTS, verifier reward at terminal nodes)", "",
             f"Source: {result['pathstar_source']}" + (" (recorded in results/crsm_pathstar.json, not rerun here)"
                                                       if isinstance(result["pathstar_source"], dict) else ""), "",
             markdown_table(["degree", "length", "greedy", "planner (backbone)", "planner (dynamics)", "chance",
                             "steps", "samples"],
                            [[r["degree"], r["length"], r["greedy"], r["planner_backbone"], r["planner_dynamics"],
                              r["chance"], r["backbone_steps"], r["samples"]] for r in rows]), ""]
    fmt = "{:.1f}".format
    c1, c2 = async_cost["control_off_beside_pure_python_thread"], async_cost["control_off_beside_matmul_thread"]
    c3 = async_cost["control_off_beside_pure_python_process"]
    rerun = result["planner_cost"].get("search_rerun")
    search_note = ([f"The search rows (table above) were rerun alone on {rerun['date']} (`{rerun['command']}`, "
                    f"1/5/15-min load average {rerun['load_before']} before, {rerun['load_after']} after); the "
                    "async rows (table below) are from the full run.", ""] if rerun else [])
    before = [r for r in search if "baseline" in r]
    if before:
        search_note += [f"Before/after: the same windows timed on the package at `{before[0]['baseline']['src']}` "
                        "(the code before this change), in child processes just before and just after each row's "
                        "own windows:", "",
                        markdown_table(["backbone", "batch", "before: dynamics sims/s", "before: backbone sims/s",
                                        "before: ratio", "after: dynamics sims/s", "after: backbone sims/s",
                                        "after: ratio"],
                                       [[f"d={r['d_model']}, {r['n_layers']} layers", r["batch"],
                                         *[fmt(r["baseline"][k]["median"]) for k in ("sims_per_s_dynamics",
                                                                                    "sims_per_s_backbone")],
                                         fmt(r["baseline"]["speedup_median"]),
                                         *[fmt(r[k]["median"]) for k in ("sims_per_s_dynamics", "sims_per_s_backbone")],
                                         fmt(r["speedup_median"])] for r in before]), ""]
    lines += ["## Planner cost (CPU, 1 torch thread; median [min, max] of interleaved repeats)", "",
              result["notes"], "",
              markdown_table(["backbone", "batch", "sims/search", "dynamics sims/s", "backbone sims/s", "ratio",
                              "leaves/round (dyn, backbone)", "µs/round: dyn transition, backbone transition, heads",
                              "in-search µs/sim, dyn: transition, heads, tree", "backbone: transition, heads, tree"],
                             [[f"d={r['d_model']}, {r['n_layers']} layers ({r['params_backbone'] / 1e6:.1f}M)",
                               r["batch"], r["simulations_per_search"],
                               *[f"{fmt(r[k]['median'])} [{fmt(r[k]['min'])}, {fmt(r[k]['max'])}]"
                                 for k in ("sims_per_s_dynamics", "sims_per_s_backbone")],
                               fmt(r["speedup_median"]),
                               ", ".join(fmt(v) for v in r["mean_leaves_per_round"].values()),
                               ", ".join(f"{v:.0f}" for v in r["evaluation_us_per_round"].values()),
                               *[", ".join(f"{v:.0f}" for v in r["in_search_us_per_sim"][t].values())
                                 for t in ("dynamics", "backbone")]]
                              for r in search]), "", *search_note,
              markdown_table(["sims per search", "planner", "off tok/s", "async tok/s", "cost (medians)",
                              "cost per pair", "searches / deltas per generation",
                              "cores busy: generating process, planner process (off: generating)"],
                             [[k.removeprefix("sims_"), mode,
                               f"{fmt(v['tokens_per_s_off']['median'])} [{fmt(v['tokens_per_s_off']['min'])}, "
                               f"{fmt(v['tokens_per_s_off']['max'])}]",
                               f"{fmt(m['tokens_per_s']['median'])} [{fmt(m['tokens_per_s']['min'])}, "
                               f"{fmt(m['tokens_per_s']['max'])}]",
                               f"{m['cost_frac_of_medians']:.2f}",
                               f"{m['cost_frac_pairs']['median']:.2f} [{m['cost_frac_pairs']['min']:.2f}, "
                               f"{m['cost_frac_pairs']['max']:.2f}]",
                               f"{m['searches_per_generation']:.0f} / {m['deltas_applied_per_generation']:.0f}",
                               f"{m['cores_busy_generating_process']:.2f}, {m['cores_busy_planner_process']:.2f} "
                               f"({v['cores_busy_off']:.2f})"]
                              for k, v in async_cost.items() if k.startswith("sims_")
                              for mode, m in v.items() if mode in ASYNC_MODES]), "",
              "Planners: `process` = the default `ProcessPlanner` (child process, nice 19); `process_nice0` = the "
              "same at generation's CPU priority; `thread` = `AsyncPlanner` on a thread of the generating process. "
              f"The planner processes took {async_cost['planner_process_start_s']:.1f} s to come up once "
              "(forkserver start included), before the timed generations; each generation opens a session on its "
              "running process. The generating thread's own work for the process planner (submit + poll per "
              f"token) is {async_cost['process_submit_poll_us']:.0f} µs per token. Cores busy = CPU seconds / "
              "wall seconds of the generation (the thread planner's CPU is inside the generating process's).", "",
              "Controls, planner off: beside a thread of pure Python (holds the GIL, shares no tensors) "
              f"{fmt(c1['median'])} tok/s [{fmt(c1['min'])}, {fmt(c1['max'])}]; beside a thread of 512x512 matrix "
              f"products (mostly without the GIL) {fmt(c2['median'])} tok/s [{fmt(c2['min'])}, {fmt(c2['max'])}]; "
              f"beside a process of pure Python (no GIL shared, one more busy CPU) {fmt(c3['median'])} tok/s "
              f"[{fmt(c3['min'])}, {fmt(c3['max'])}].",
              ""]
    if gpu:
        lines += gpu_lines(gpu)
    (RESULTS / "crsm.md").write_text("\n".join(lines))
    print("\n".join(lines))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--refresh-gpu", action="store_true",
                        help="Only merge results/crsm_gpu.json into crsm.json/crsm.md (after a device run).")
    parser.add_argument("--work", default="runs/crsm/benchmark")
    parser.add_argument("--pathstar-only", default=None, help="Run only path-star; write its JSON here.")
    parser.add_argument("--steps", type=int, default=None, help="Backbone steps for path-star.")
    parser.add_argument("--lm-only", default=None, help="Run only the perplexity comparison; write its JSON here.")
    parser.add_argument("--settings", default="2x4,3x4", help="Path-star (degree x length) settings.")
    parser.add_argument("--only", choices=["mcts"], default=None,
                        help="mcts: rerun only the planner-cost search rows (sims/s, both transitions) and merge them "
                             "into results/crsm.json and crsm.md.")
    parser.add_argument("--baseline-src", default=None,
                        help="Also time the search of the package at this src folder (an older copy, e.g. from "
                             "`git archive`), beside each search row: a before/after in the same run.")
    parser.add_argument("--rates", default=None, help=argparse.SUPPRESS)  # d,layers,batch,sims,repeats,seconds
    args = parser.parse_args()
    if args.rates:  # the child process of --baseline-src: print search_rates of the package on PYTHONPATH
        set_threads(1, blas=True)
        d, layers, batch, sims, repeats = (int(v) for v in args.rates.split(",")[:5])
        rates, _, _ = search_rates(search_model(d, layers), batch, sims, repeats, float(args.rates.split(",")[5]))
        print(json.dumps(rates))
        return
    if args.only == "mcts":
        rerun_search(args.quick, args.baseline_src)
        return
    if args.refresh_gpu:
        refresh_gpu_section()
        return
    set_threads(min(2, os.cpu_count() or 1))
    work = Path(args.work)
    quick = args.quick
    started = time.time()
    settings = [tuple(int(v) for v in item.split("x")) for item in args.settings.split(",")]
    if args.pathstar_only:
        set_threads(8)
        started = time.time()
        device = torch.cuda.get_device_name() if torch.cuda.is_available() else cpu_name()

        def save(rows):
            Path(args.pathstar_only).write_text(json.dumps({"rows": rows, "device": device,
                                                            "command": "python " + " ".join(sys.argv),
                                                            "seconds": time.time() - started}, indent=2))

        bench_pathstar(settings, args.steps or 3000, 100, 48, work, on_row=save, **{
            "model.d_model": 128, "model.n_layers": 4, "data.batch_size": 64, "backbone.lr": 2e-3})
        return
    if args.lm_only:
        set_threads(8)
        _, lm = bench_perplexity(args.steps or 1500, work, d_model=192, n_layers=4, seq_len=256,
                                 corpus_bytes=2_000_000)
        lm["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else cpu_name()
        lm["command"] = "python " + " ".join(sys.argv)
        Path(args.lm_only).write_text(json.dumps(lm, indent=2))
        return
    stored = RESULTS / "crsm_pathstar.json"
    if stored.exists():
        pathstar = json.loads(stored.read_text())
        rows = pathstar["rows"]
    else:
        pathstar = None
        rows = bench_pathstar(settings, 300 if quick else 900, 30 if quick else 100, 48, work)
    stored_lm = RESULTS / "crsm_lm.json"
    lm = json.loads(stored_lm.read_text()) if stored_lm.exists() else bench_perplexity(60 if quick else 250, work)[1]
    # planner cost: one intra-op thread for the whole process. The machine has 2 shared cores; during async
    # generation the generating thread and the planner thread each take one, so more intra-op threads would
    # oversubscribe them (OpenMP workers spin), and at batch <= 32 the ops are too small to split anyway.
    set_threads(1, blas=True)  # one BLAS thread too: the search's small products run there
    repeats = 3 if quick else 5
    cost_model = search_model(256, 8)
    load_before = os.getloadavg()
    search = bench_search_part(repeats, args.baseline_src)
    async_repeats = 3 if quick else 7  # generations are short and noisier than the 1 s search windows
    async_cost = bench_async_cost(cost_model, 64 if quick else 128, async_repeats)
    load_after = os.getloadavg()
    gpu_path = RESULTS / "crsm_gpu.json"
    gpu = json.loads(gpu_path.read_text()) if gpu_path.exists() else None
    best = max(rows, key=lambda r: r["planner_backbone"] - r["greedy"])
    metrics = {
        "pathstar_acc_greedy": best["greedy"], "pathstar_acc_planner": best["planner_backbone"],
        "pathstar_degree": best["degree"], "pathstar_length": best["length"],
        **search_metrics(search),
        "gen_tokens_per_s_planner_off": async_cost["sims_16"]["tokens_per_s_off"]["median"],
        "gen_tokens_per_s_planner_async": async_cost["sims_16"]["process"]["tokens_per_s"]["median"],
        "async_cost_frac": async_cost["sims_16"]["process"]["cost_frac_of_medians"],
        "async_cost_frac_64_sims": async_cost["sims_64"]["process"]["cost_frac_of_medians"],
        "async_searches_per_generation": async_cost["sims_16"]["process"]["searches_per_generation"],
        "async_cost_frac_nice0": async_cost["sims_16"]["process_nice0"]["cost_frac_of_medians"],
        "async_cost_frac_nice0_64_sims": async_cost["sims_64"]["process_nice0"]["cost_frac_of_medians"],
        "async_cost_frac_thread": async_cost["sims_16"]["thread"]["cost_frac_of_medians"],
        "async_cost_frac_thread_64_sims": async_cost["sims_64"]["thread"]["cost_frac_of_medians"],
        "ppl_mamba": lm["ppl_mamba"], "ppl_transformer": lm["ppl_transformer"],
        "gpu_train_tokens_per_s_mamba": None, "gpu_train_tokens_per_s_gpt2": None,
        "gpu_peak_gib_mamba": None, "gpu_peak_gib_gpt2": None,
    }
    if gpu is not None:
        metrics.update(gpu_metrics(gpu))
    result = {
        "family": "crsm", "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {**machine(), "gpu": gpu["gpu"] if gpu else None},
        "command": "python " + " ".join(sys.argv), "metrics": metrics,
        "pathstar": rows,
        "pathstar_source": ({"device": pathstar["device"], "command": pathstar["command"],
                             "note": "stage-1 training of the path-star backbones ran on this device (7000 steps "
                                     "each); distillation, value head and all accuracy evaluations ran on its CPU"}
                            if pathstar else "this run, CPU"),
        "planner_cost": {"search": search, "async": async_cost, "torch_threads": 1,
                         "model": "untrained CRSMs (timing only): d_model=256, 8 layers; d_model=512, 16 layers",
                         "method": f"{repeats} interleaved 1 s windows per transition (search) and {async_repeats} "
                                   "interleaved off/async generations per budget; medians, min and max"},
        "perplexity": lm, "gpu": gpu, "seconds": time.time() - started,
        "notes": (f"CPU figures on a 2-core machine shared with other jobs (1/5/15-min load average "
                  f"{load_before} before the planner-cost part, {load_after} after): absolute speeds are noisy, "
                  "hence interleaved repeats and medians. GPU figures from benchmarks/crsm_gpu.py on the device "
                  f"machine (one {gpu['gpu'] if gpu else 'GPU'})."),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "crsm.json").write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(result)


if __name__ == "__main__":
    main()
