"""RBS-QA benchmark: F1 with / without the belief tracker, revision detection, ECE, halting, tracker overhead.

Writes benchmarks/results/rbsqa.json and .md and the plots docs/img/rbsqa_*.png. Every baseline (the
no-tracker answer, the uncalibrated confidences, reading every segment) is measured in the same run. The timing
(tracker share of model time) runs in a new process on the saved model, both sides in it, as a user's `answer`
reads; the training process's own figure is kept as `*_training_process`.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/rbsqa.py [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from _common import machine

from latentspace.core.runs import Run, markdown_table, set_threads
from latentspace.rbsqa.config import RBSQAConfig
from latentspace.rbsqa.model import RBSQAModel
from latentspace.rbsqa.plots import plot_reliability, plot_trajectory
from latentspace.rbsqa.reading import read_document
from latentspace.rbsqa.train import (
    candidate_scores,
    encode_split,
    evaluate_documents,
    revision_detection,
    segment_features,
    train_model,
)

ROOT = Path(__file__).resolve().parent.parent
REQUIRED = ["f1_with_tracker", "f1_without_tracker", "revision_detection_rate", "ece_calibrated", "ece_uncalibrated",
            "segments_read_frac_halting", "f1_halting", "tracker_overhead_frac", "rescore_ms_per_segment",
            "tracker_bytes_per_doc"]
# reported in the main table next to the required ones: a detection rate means little without its false alarms
HEADLINE = [*REQUIRED[:3], "false_revisions_per_doc", *REQUIRED[3:]]


def timing(model, docs, n: int, repeats: int = 3) -> dict:
    """End-to-end reading (encoder included, nothing cached): tracker share of time, re-scoring latency.

    Each document is read `repeats` times and the fastest read of the model and of the tracker is kept, so
    that other jobs on the shared CPU inflate neither side of the ratio more than the other.
    """
    model_s = tracker_s = 0.0
    rescore_s, rescore_calls = 0.0, 0
    for doc in docs[:n]:
        reads = [read_document(model, doc, None, halt=False) for _ in range(repeats)]
        model_s += min(t.model_seconds for t in reads)
        tracker_s += min(t.tracker_seconds for t in reads)
        # re-scoring needs a span embedding, which the tracker keeps only for its belief's candidate: give every
        # candidate one for this worst case
        history = [c if c.span_embedding is not None else dataclasses.replace(c, span_embedding=torch.randn(model.dim))
                   for c in model.tracker.belief.span_history]
        memory = torch.randn(1, model.config.num_memory_slots, model.dim)
        for _ in range(20):  # re-score the whole span history, the worst case of one segment
            t0 = time.perf_counter()
            model.tracker.re_score_past_spans(history, memory)
            rescore_s += time.perf_counter() - t0
            rescore_calls += 1
    segments = sum(d.num_segments for d in docs[:n])
    return {"tracker_overhead_frac": tracker_s / model_s, "rescore_ms_per_segment": 1000 * rescore_s / rescore_calls,
            "model_ms_per_segment": 1000 * model_s / segments, "tracker_ms_per_segment": 1000 * tracker_s / segments}


def timing_from_checkpoint(checkpoint: Path, n: int, threads: int, processes: int = 3) -> dict:
    """`timing` in new processes on the saved model, as `latentspace rbsqa answer` / `evaluate` read documents:
    the median over `processes` processes of each figure (from process to process the tracker's share moves by
    up to ~5 % of itself: 1.90-2.00 % on one checkpoint), and every process's share as
    `tracker_overhead_frac_process_<i>`.

    The training process is ~20% slower at everything afterwards (the model's forward and the tracker alike; its
    heap holds the training's tensors): its figure is kept as a detail, `*_training_process`."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    runs = []
    for _ in range(processes):
        out = subprocess.run([sys.executable, __file__, "--time-checkpoint", str(checkpoint), "--threads",
                              str(threads), "--timing-docs", str(n)], env=env, check=True, capture_output=True,
                             text=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    merged = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    merged.update({f"tracker_overhead_frac_process_{i}": r["tracker_overhead_frac"] for i, r in enumerate(runs)})
    return merged


def rescoring_ablation(model, docs, features) -> dict:
    """Revision detection of the same trained model with the other re-scoring choices (stories of the test split)."""
    tracker = model.tracker
    method, rescore = tracker.re_scoring_method, tracker.enable_re_scoring
    out = {}
    try:
        for name, settings in (("context_weighted", dict(re_scoring_method="context_weighted")),
                               ("no_rescoring", dict(enable_re_scoring=False))):
            for key, value in settings.items():
                setattr(tracker, key, value)
            for key, value in revision_detection(model, docs, features).items():
                out[f"{key}_{name}"] = value
            tracker.re_scoring_method, tracker.enable_re_scoring = method, rescore
    finally:
        tracker.re_scoring_method, tracker.enable_re_scoring = method, rescore
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Smaller data and fewer steps.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timing-docs", type=int, default=12)
    parser.add_argument("--time-checkpoint", type=Path, default=None,
                        help="only time reading with this saved model (the test split) and print the JSON")
    args = parser.parse_args()
    set_threads(args.threads)
    if args.time_checkpoint is not None:
        model = RBSQAModel.load(args.time_checkpoint)
        print(json.dumps(timing(model, encode_split(model, model.config, "test"), args.timing_docs)))
        return
    config = RBSQAConfig.preset("small") if args.quick else RBSQAConfig()
    start = time.time()
    load_start = os.getloadavg()[0]
    run = Run("rbsqa", "benchmark", root=ROOT / "runs")
    trained = train_model(config, run, quiet=False)
    model = trained.model
    test_docs = encode_split(model, config, "test")
    features = segment_features(model, test_docs)
    metrics, rows = evaluate_documents(model, test_docs, features)
    for key, value in timing(model, test_docs, args.timing_docs).items():
        metrics[f"{key}_training_process"] = value
    model.save(run.path / "timing_model")
    metrics.update(timing_from_checkpoint(run.path / "timing_model", args.timing_docs, args.threads))
    metrics.update(rescoring_ablation(model, test_docs, features))
    for key, value in trained.calibration.items():
        metrics[f"calibration_{key}"] = value
    # plots for the docs: the story with most answer changes, and the reliability diagram
    img = ROOT / "docs" / "img"
    stories = [i for i, d in enumerate(test_docs) if d.revision_points]
    example = max(stories, key=lambda i: len(test_docs[i].revision_points))
    traj = read_document(model, test_docs[example], features[example] if features else None)
    plot_trajectory(traj, test_docs[example], img / "rbsqa_belief_trajectory.png", config.belief_state_threshold)
    long_docs = [i for i, d in enumerate(test_docs) if d.doc.kind == "long"]
    if long_docs:
        i = long_docs[0]
        halted = read_document(model, test_docs[i], features[i] if features else None, halt=True)
        plot_trajectory(halted, test_docs[i], img / "rbsqa_halting_trajectory.png", config.belief_state_threshold)
    z, correct = candidate_scores(model, test_docs, features)
    plot_reliability(z, correct, model.tracker.calibrate, img / "rbsqa_reliability.png")
    shutil.copy(run.plot_metrics(["loss"], "loss.png"), img / "rbsqa_loss.png")
    seconds = time.time() - start
    result = {
        "family": "rbsqa",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(note="shared CPU: other helpers' jobs could run at the same time (1-minute load average "
                                f"{load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end of this run)"),
        "command": " ".join(["HF_HUB_OFFLINE=1", "PYTHONPATH=src", ".venv/bin/python", "benchmarks/rbsqa.py",
                             *sys.argv[1:]]),
        "metrics": {k: metrics[k] for k in HEADLINE},
        "details": {k: v for k, v in metrics.items() if k not in HEADLINE},
        "config": config.to_dict(),
        "seconds": seconds,
        "example_trajectory": traj.to_dict(),
        "goals": {"revision_detection_rate": ">= 0.95 (seed > 0.8)",
                  "false_revisions_per_doc": "low (answer changes where the true answer does not)",
                  "ece_calibrated": "<= 0.05 (seed < 0.1)",
                  "segments_read_frac_halting": "<= 0.7 at <= 1 point F1 loss", "tracker_overhead_frac": "< 0.02",
                  "rescore_ms_per_segment": "< 2", "tracker_bytes_per_doc": "< 1e6"},
    }
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "rbsqa.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown_table(["metric", "value", "goal"], [[k, metrics[k], result["goals"].get(k, "")] for k in HEADLINE])
    details = markdown_table(["detail", "value"], [[k, v] for k, v in result["details"].items()])
    md = ["# rbsqa benchmark", "", f"{result['date']}, {result['machine']['cpu']}, {result['machine']['cores']} cores, "
          f"no GPU; {result['machine']['note']}.", "", f"Command: `{result['command']}` ({seconds:.0f} s).", "",
          table, "", details, ""]
    (out / "rbsqa.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
