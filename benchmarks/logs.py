"""Benchmark of the logs app: BGL alert F1 and severity accuracy beside Drain3+LR and TF-IDF+LR, the drift
stream (Raccoon vs naive fine-tuning vs frozen), classification speed on one core, replay memory size.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/logs.py [--quick]

Writes benchmarks/results/logs.json, benchmarks/results/logs.md and docs/img/logs_drift.png.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

import torch
from _common import machine as machine_info

from latentspace.core.data import find_dataset
from latentspace.core.runs import markdown_table, set_threads
from latentspace.logs.baselines import drain_lr, tfidf_lr
from latentspace.logs.config import LogsConfig, train_schedule
from latentspace.logs.data import load_examples, split
from latentspace.logs.drift import plot_drift, run_drift
from latentspace.logs.parse import prepare, read_log_file
from latentspace.logs.train import evaluate_model, scores, train_classifier

ROOT = Path(__file__).resolve().parents[1]


def task_scores(config: LogsConfig) -> dict:
    """Model, Drain3+LR and TF-IDF+LR on the task's held-out split (the same split for all three)."""
    train, test = split(load_examples(config.task, config.system_list()), config.test_frac, config.train.seed)
    start = time.perf_counter()
    model = train_classifier(config, train)
    train_s = time.perf_counter() - start
    out = {"model": evaluate_model(model, test),
           "drain_lr": scores(test.labels, drain_lr(train, test, config.task), config.task),
           "tfidf_lr": scores(test.labels, tfidf_lr(train, test, config.task), config.task),
           "train_lines": len(train), "test_lines": len(test), "train_s": train_s}
    return out, model


def speed(model, repeats: int = 1) -> dict:
    """Lines/s on one thread over every loghub system's raw lines (cold cache, then warm), and the reference."""
    set_threads(1)
    root = find_dataset("loghub", sample=False)
    lines = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        lines += read_log_file(folder / f"{folder.name}_2k.log")[0]
    model.invalidate_cache()
    model.tokenizer.clear_cache()  # cold: no cached predictions, chunks or word ids
    start = time.perf_counter()
    model.classify_lines(lines)
    cold = len(lines) / (time.perf_counter() - start)
    start = time.perf_counter()
    model.classify_lines(lines)
    warm = len(lines) / (time.perf_counter() - start)
    # the tokenizer alone: cached whitespace chunks vs masking each whole line (the previous path)
    texts = [prepare(line, model.config.task)[1] for line in lines]
    model.tokenizer.clear_cache()
    start = time.perf_counter()
    for text in texts:
        model.tokenizer.encode(text)
    tokenizer_cold = len(texts) / (time.perf_counter() - start)
    start = time.perf_counter()
    for text in texts:
        model.tokenizer.words_reference(text)
    tokenizer_reference = len(texts) / (time.perf_counter() - start)
    model.invalidate_cache()
    start = time.perf_counter()
    model.classify_lines(lines[:2000], templates=True)
    with_templates = 2000 / (time.perf_counter() - start)
    sample = lines[::60][:500]
    start = time.perf_counter()
    model.classify_lines_reference(sample)
    reference = len(sample) / (time.perf_counter() - start)
    return {"lines": len(lines), "lines_per_s_cold": cold, "lines_per_s_warm": warm,
            "tokenizer_lines_per_s_cold": tokenizer_cold,
            "tokenizer_lines_per_s_whole_line_masking": tokenizer_reference,
            "lines_per_s_with_templates_cold": with_templates, "lines_per_s_reference_one_by_one": reference}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and a shorter stream (~3 min)")
    args = parser.parse_args()
    set_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    started = time.perf_counter()
    steps = 120 if args.quick else 400
    per_stream, per_test = (150, 100) if args.quick else (600, 300)

    schedule = {"train": train_schedule(steps)}  # warm-up min(20, steps // 10), as always
    bgl, bgl_model = task_scores(LogsConfig(task="bgl_alert").override(schedule))
    print("bgl", json.dumps(bgl), flush=True)
    severity = None
    if not args.quick:
        severity, _ = task_scores(LogsConfig(task="severity").override(schedule))
        print("severity", json.dumps(severity), flush=True)
    drift = run_drift(LogsConfig(task="severity").override(schedule), per_system_stream=per_stream,
                      per_system_test=per_test, eval_every=300 if not args.quick else 150)
    for method, result in drift.items():
        print("drift", method, json.dumps(result.metrics), flush=True)
    plot_drift(drift, ROOT / "docs" / "img" / "logs_drift.png")
    speeds = speed(bgl_model)
    print("speed", json.dumps(speeds), flush=True)

    metrics = {
        "f1_bgl_model": bgl["model"]["f1_alert"],
        "f1_bgl_drain_lr": bgl["drain_lr"]["f1_alert"],
        "f1_bgl_tfidf_lr": bgl["tfidf_lr"]["f1_alert"],
        "drift_final_acc_raccoon": drift["raccoon"].metrics["final_acc"],
        "drift_final_acc_naive": drift["naive"].metrics["final_acc"],
        "drift_final_acc_frozen": drift["frozen"].metrics["final_acc"],
        "drift_final_acc_new_raccoon": drift["raccoon"].metrics["final_acc_new"],
        "drift_final_acc_new_naive": drift["naive"].metrics["final_acc_new"],
        "drift_final_acc_new_frozen": drift["frozen"].metrics["final_acc_new"],
        "drift_forgetting_raccoon": drift["raccoon"].metrics["forgetting_base"],
        "drift_forgetting_naive": drift["naive"].metrics["forgetting_base"],
        "drift_forgetting_frozen": drift["frozen"].metrics["forgetting_base"],
        "drift_bwt_raccoon": drift["raccoon"].metrics["bwt"],
        "drift_bwt_naive": drift["naive"].metrics["bwt"],
        "drift_adapt_acc_first100_raccoon": drift["raccoon"].metrics["adapt_acc_first"],
        "drift_adapt_acc_first100_naive": drift["naive"].metrics["adapt_acc_first"],
        "drift_adapt_acc_first100_frozen": drift["frozen"].metrics["adapt_acc_first"],
        "drift_adapt_lines_to_90_raccoon": drift["raccoon"].metrics["adapt_lines_to_target"],
        "drift_adapt_lines_to_90_naive": drift["naive"].metrics["adapt_lines_to_target"],
        "lines_per_s_one_core": speeds["lines_per_s_cold"],
        "lines_per_s_one_core_warm": speeds["lines_per_s_warm"],
        "tokenizer_lines_per_s_one_core": speeds["tokenizer_lines_per_s_cold"],
        "tokenizer_lines_per_s_one_core_whole_line_masking": speeds["tokenizer_lines_per_s_whole_line_masking"],
        "replay_memory_bytes": drift["raccoon"].metrics["memory_bytes"],
        "replay_memory_items": drift["raccoon"].metrics["memory_items"],
    }
    if severity:
        metrics.update(acc_severity_model=severity["model"]["acc"], acc_severity_drain_lr=severity["drain_lr"]["acc"],
                       acc_severity_tfidf_lr=severity["tfidf_lr"]["acc"])
    machine = machine_info()
    command = "HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/logs.py" + (" --quick" if args.quick else "")
    result = {
        "family": "logs", "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine, "command": command, "metrics": metrics,
        "details": {"bgl": bgl, "severity": severity, "speed": speeds,
                    "drift": {m: {"metrics": r.metrics, "acc_matrix": r.acc, "base_curve": r.base_curve}
                              for m, r in drift.items()},
                    "drift_protocol": "base HDFS, Hadoop, Spark, Zookeeper (supervised); stream OpenStack, Apache, "
                                      f"Android, BGL, Windows ({per_stream} train lines each, labelled feedback on "
                                      f"every line, update_batch 16); test {per_test} lines per system; update "
                                      "rule (update_lr, update_steps, replay_ratio) from LogsConfig, tuned on the "
                                      "validation stream by benchmarks/logs_tune.py",
                    "forgetting_unit": "accuracy points on the base systems' test lines (just after base training "
                                       "minus at the end of the stream); bwt = Avalanche backward transfer over all "
                                       "experiences but the last, in points",
                    "note": "measured on a 2-core machine shared with other jobs at the same time; timings are "
                            "lower bounds of an idle machine",
                    "wall_s": time.perf_counter() - started, "python": sys.version.split()[0],
                    "torch": torch.__version__},
    }
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "logs.json").write_text(json.dumps(result, indent=2) + "\n")
    rows = [[k, v] for k, v in metrics.items()]
    md = [f"# logs benchmark ({result['date']})", "",
          f"Machine: {machine['cpu']}, {machine['cores']} cores, no GPU (shared with other jobs). "
          f"Command: `{command}`.", "", markdown_table(["metric", "value"], rows), "",
          "BGL alert detection (2k sample, stratified 70/30 split, alert field removed):", "",
          markdown_table(["method", "F1 alert", "accuracy"],
                         [[m, bgl[m]["f1_alert"], bgl[m]["acc"]] for m in ("model", "drain_lr", "tfidf_lr")]), ""]
    if severity:
        md += ["Severity (9 systems, level token removed):", "",
               markdown_table(["method", "accuracy", "macro F1"],
                              [[m, severity[m]["acc"], severity[m]["macro_f1"]]
                               for m in ("model", "drain_lr", "tfidf_lr")]), ""]
    md += ["Drift stream:", "", markdown_table(
        ["method", "final acc", "final acc new systems", "forgetting base (points)", "BWT (points)",
         "prequential acc",
         "acc first 100 lines of a new system", "lines to 90% (rolling 100)"],
        [[m, r.metrics["final_acc"], r.metrics["final_acc_new"], r.metrics["forgetting_base"], r.metrics["bwt"],
          r.metrics["prequential_acc"],
          r.metrics["adapt_acc_first"], r.metrics["adapt_lines_to_target"]] for m, r in drift.items()]), ""]
    (out / "logs.md").write_text("\n".join(md))
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
