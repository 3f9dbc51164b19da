"""Where the belief tracker's per-segment time goes: cold (right after a model forward) vs warm calls.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 PYTHONPATH=src .venv/bin/python benchmarks/rbsqa_tracker_profile.py \
        [--checkpoint runs/rbsqa/benchmark/checkpoints/last/model]

The checkpoint is the one `benchmarks/rbsqa.py` leaves. Each probe runs in its own pass over the test documents'
segments, right after that segment's forward (encoder included, as in `read_document`): the first NumPy call
(a small add: the tracker's step calls none), the first torch call (a small add), the learned re-scorer's first
layer (`F.linear`, as the tracker runs it) cold and then again warm, and `update_belief` cold (as in the read
loop) and warm (the same update again from the same state).
Medians over segments, in microseconds; writes benchmarks/results/rbsqa_tracker_profile.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _common import machine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from latentspace.core.runs import markdown_table, set_threads  # noqa: E402
from latentspace.rbsqa.model import RBSQAModel  # noqa: E402
from latentspace.rbsqa.train import encode_split  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def segments(model, docs):
    """(doc, segment index, model outputs) after each segment's forward, memory carried as in read_document."""
    for doc in docs:
        model.tracker.reset_belief()
        memory = model.init_memory(1)
        for s in range(doc.num_segments):
            att = doc.attention_mask[s : s + 1]
            out = model.segment_forward(model.encode(doc.input_ids[s : s + 1], att), att,
                                        doc.context_mask[s : s + 1], memory)
            memory = out["memory"]
            yield doc, s, out


@torch.no_grad()
def profile(model, docs) -> dict[str, float]:
    pc = time.perf_counter
    tracker = model.tracker
    small_np, small_t = np.ones(8, np.float32), torch.ones(8)
    net = tracker.re_score_network
    w1 = None if net is None else net[0].weight.detach()  # the layer as update_belief runs it: F.linear
    b1 = None if net is None else net[0].bias.detach()
    x = None if w1 is None else torch.ones(w1.shape[1])
    times: dict[str, list[float]] = {k: [] for k in ("first_numpy_call", "first_torch_call", "rescorer_layer_cold",
                                                      "rescorer_layer_warm", "update_belief_cold",
                                                      "update_belief_warm")}

    def update(s, doc, out):
        start, end = model.tracker_logits(out["start"][0], out["end"][0])
        states = out["states"][0][model.tracker_index]
        return lambda: tracker.update_belief((start, end), s, out["memory"], doc.offsets[s], token_states=states)

    for doc, s, out in segments(model, docs):
        t0 = pc()
        np.add(small_np, 1.0)
        times["first_numpy_call"].append(pc() - t0)
        step = update(s, doc, out)
        step()
    for doc, s, out in segments(model, docs):
        t0 = pc()
        torch.add(small_t, 1.0)
        times["first_torch_call"].append(pc() - t0)
        update(s, doc, out)()
    if w1 is not None:
        for doc, s, out in segments(model, docs):
            torch.add(small_t, 1.0)  # torch entered: what follows is the layer itself
            t0 = pc()
            F.linear(x, w1, b1)
            t1 = pc()
            F.linear(x, w1, b1)
            t2 = pc()
            times["rescorer_layer_cold"].append(t1 - t0)
            times["rescorer_layer_warm"].append(t2 - t1)
            update(s, doc, out)()
    for doc, s, out in segments(model, docs):
        step = update(s, doc, out)
        t0 = pc()
        step()
        times["update_belief_cold"].append(pc() - t0)
    for doc, s, out in segments(model, docs):
        step = update(s, doc, out)
        before, stable = copy.deepcopy(tracker.belief), tracker.stable_for
        step()  # warms the caches
        tracker.belief, tracker.stable_for = before, stable
        t0 = pc()
        step()  # the same update again, from the same state
        times["update_belief_warm"].append(pc() - t0)
    return {k: round(1e6 * statistics.median(v), 1) for k, v in times.items() if v}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(ROOT / "runs/rbsqa/benchmark/checkpoints/last/model"))
    parser.add_argument("--docs", type=int, default=24)
    args = parser.parse_args()
    set_threads(1)
    model = RBSQAModel.load(args.checkpoint)
    model.eval()
    if model.tracker is None:
        raise SystemExit(f"{args.checkpoint}: the model has no belief tracker")
    docs = encode_split(model, model.config, "test")[: args.docs]
    profile(model, docs)  # one pass to settle allocations
    us = profile(model, docs)
    result = {"family": "rbsqa", "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
              "command": "OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 PYTHONPATH=src .venv/bin/python "
                         "benchmarks/rbsqa_tracker_profile.py " + " ".join(sys.argv[1:]),
              "machine": machine(load_1min=round(os.getloadavg()[0], 2)),
              "documents": len(docs), "segments": sum(d.num_segments for d in docs), "median_us": us}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "rbsqa_tracker_profile.json").write_text(json.dumps(result, indent=2) + "\n")
    md = [f"# rbsqa tracker profile ({result['date']})", "", f"Command: `{result['command']}`; "
          f"{result['segments']} segments of {len(docs)} test documents, 1-minute load "
          f"{result['machine']['load_1min']}.",
          "", "Median microseconds per segment, measured right after the segment's model forward:", "",
          markdown_table(["probe", "us"], [[k, v] for k, v in us.items()]), ""]
    (RESULTS / "rbsqa_tracker_profile.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
