"""Build the real instruction-induction outcome tables that `benchmarks/lipo.py --task NAME` optimises over.

For each task: SmolLM2-135M-Instruct writes APE instructions from `raw/induce` demonstrations (sampled,
several per demonstration set); the human annotations and simple paraphrases join them; the same model
answers every instruction on the task's selection examples (seeded induce examples never used as APE
demonstrations) and credit examples (`raw/execute`), greedy and batched. Every answer goes to an
append-only cache first (`--cache`), so a crash costs at most the batch in flight.

The prompt format is chosen first, by measurement on the development tasks' selection examples only: the
mean accuracy of the human annotations under each format (the credit examples are not looked at). The
scoring rule is "contains" (lipo/induction.py says why), with "exact" reported beside it.

    python benchmarks/lipo_ii_tables.py --out benchmarks/tables/lipo_ii [--tasks antonyms,sum] [--device cuda]

A GPU makes this minutes instead of hours. Tables: `<out>/<task>.json`; the format decision and timings:
`<out>/build.json`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from latentspace.core.backbones import load_causal_lm
from latentspace.lipo.induction import (
    DEV_TASKS,
    PROMPT_FORMATS,
    AnswerCache,
    LLMTaskModel,
    answer_all,
    ape_instructions,
    instruction_pool,
    load_task,
    outcomes,
    write_table,
)

CONTROLS = ["Repeat the input.", "Say nothing useful."]  # negative controls of the scoring rule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/tables/lipo_ii"))
    parser.add_argument("--cache", type=Path, default=None, help="answer cache (default: <out>/answers.jsonl)")
    parser.add_argument("--tasks", default=",".join(DEV_TASKS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=0, help="0: 512 on CUDA, 32 on CPU")
    parser.add_argument("--ape-sets", type=int, default=60)
    parser.add_argument("--ape-per-set", type=int, default=4)
    parser.add_argument("--format", default="auto", choices=["auto", *PROMPT_FORMATS])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--selection", type=int, default=100, help="selection examples a task (from induce)")
    parser.add_argument("--credit", type=int, default=0, help="credit examples a task (0: all of execute)")
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    cache = AnswerCache(args.cache or args.out / "answers.jsonl")
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    model, tokenizer = load_causal_lm("smollm2-135m", dtype=dtype, device=args.device)
    model_id = f"smollm2-135m-instruct/{str(dtype).split('.')[-1]}"
    llm = LLMTaskModel(model, tokenizer, batch_size=args.batch_size or (512 if args.device.startswith("cuda") else 32),
                       model_id=model_id)
    tasks = [load_task(name, args.data_dir, n_selection=args.selection, seed=args.seed)
             for name in args.tasks.split(",")]
    for task in tasks:
        task.credit = task.credit[:args.credit or None]
    build: dict = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "device": args.device,
                   "gpu": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None,
                   "model": model_id, "tasks": {}}

    # 1. the prompt format, on the selection examples of the development tasks, human annotations only
    fmt_scores = {}
    for fmt in PROMPT_FORMATS:
        per_task = {}
        for task in tasks:
            if task.name not in DEV_TASKS:
                continue
            answers = answer_all(llm, fmt, task.annotations + CONTROLS, task.selection, cache)
            rows = {rule: [r.count("1") / len(r) for r in outcomes(answers, task.selection, rule)]
                    for rule in ("contains", "exact")}
            n = len(task.annotations)
            per_task[task.name] = {"human_mean_contains": sum(rows["contains"][:n]) / n,
                                   "human_best_contains": max(rows["contains"][:n]),
                                   "human_mean_exact": sum(rows["exact"][:n]) / n,
                                   "controls_contains": rows["contains"][n:],
                                   "examples": [(task.selection[i].input, task.selection[i].output, answers[0][i])
                                                for i in range(3)]}
        fmt_scores[fmt] = {"mean_human_contains": sum(t["human_mean_contains"] for t in per_task.values())
                           / max(1, len(per_task)), "tasks": per_task}
        print(f"format {fmt}: mean human accuracy (contains) {fmt_scores[fmt]['mean_human_contains']:.3f}",
              flush=True)
    fmt = max(PROMPT_FORMATS, key=lambda f: fmt_scores[f]["mean_human_contains"]) if args.format == "auto" \
        else args.format
    build["format_scores"], build["format"] = fmt_scores, fmt

    # 2. per task: APE pool, then the outcome table
    for task in tasks:
        start = time.time()
        ape = ape_instructions(llm, task, n_sets=args.ape_sets, per_set=args.ape_per_set, seed=args.seed)
        ape_s = time.time() - start
        pool = instruction_pool(task, ape)
        texts = [p[0] for p in pool]
        start = time.time()
        n_before = len(cache.answers)
        sel = answer_all(llm, fmt, texts, task.selection, cache)
        cred = answer_all(llm, fmt, texts, task.credit, cache)
        seconds = time.time() - start
        generated = len(cache.answers) - n_before
        write_table(args.out / f"{task.name}.json", task, pool, fmt, "contains", model_id,
                    outcomes(sel, task.selection, "contains"), outcomes(cred, task.credit, "contains"))
        build["tasks"][task.name] = {"pool": len(pool), "ape": len(ape), "ape_s": round(ape_s, 1),
                                     "table_s": round(seconds, 1), "generated": generated,
                                     "seqs_per_s": round(generated / max(seconds, 1e-9), 1)}
        print(f"{task.name}: {len(pool)} instructions ({len(ape)} APE, {ape_s:.0f} s), table {seconds:.0f} s, "
              f"{generated} answers", flush=True)
        (args.out / "build.json").write_text(json.dumps(build, indent=1) + "\n")

    # 3. batched scoring against the one-at-a-time loop, same prompts
    task = tasks[0]
    from latentspace.lipo.induction import make_prompt

    prompts = [make_prompt(tokenizer, fmt, task.annotations[0], ex.input) for ex in task.selection[:32]]
    start = time.time()
    llm.generate_one_by_one(prompts)
    loop_s = time.time() - start
    many = prompts * 16
    start = time.time()
    llm.generate(many)
    batched_s = time.time() - start
    build["scoring_seqs_per_s"] = len(many) / batched_s
    build["scoring_seqs_per_s_loop"] = len(prompts) / loop_s
    build["scoring_speedup_vs_generate_loop"] = build["scoring_seqs_per_s"] / build["scoring_seqs_per_s_loop"]
    (args.out / "build.json").write_text(json.dumps(build, indent=1) + "\n")
    print(json.dumps({k: v for k, v in build.items() if k.startswith("scoring")}), flush=True)


if __name__ == "__main__":
    main()
