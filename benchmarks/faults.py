"""Crash safety measured: SIGKILL long jobs at random moments, resume, and check what survived (issue 28).

For `ltt train` (tiny) and `codesearch index` (tiny LTT encoder), each trial runs the command in a subprocess,
kills it with SIGKILL at random moments (mid-interval during a step, inside a checkpoint write, just before a
checkpoint's swap, inside an index write), restarts it (`--resume` where the command has one), and compares the
final result with an uninterrupted run of the same seed. Bad disks: a write failing with ENOSPC (a full disk) or
EROFS (a read-only folder) at a checkpoint, at the run folder's lock, and at an index write must end with one
clear line, exit code 2, and the earlier checkpoint or index intact.

    python benchmarks/faults.py              # 4 ltt trials x 3 kills, 2 codesearch trials, 4 bad-disk cases
    python benchmarks/faults.py --trials 2 --codesearch-trials 1   # quicker

Writes benchmarks/results/faults.json and .md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import shlex
import sys
import tempfile
import time
from pathlib import Path

from _common import machine

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from latentspace.core.runs import markdown_table  # noqa: E402
from tests.faults.harness import (  # noqa: E402
    Kill,
    checkpoint_step,
    cli,
    codesearch_args,
    index_vectors,
    kill_and_resume_fit,
    kill_when,
    ltt_args,
    ltt_weights,
    make_code_tree,
    reached,
    same_tensors,
)

FIT_POINTS = ("step", "checkpoint.write", "atomic_folder.before_swap")


def ltt_trial(work: Path, steps: int, rng: random.Random, kills_per_trial: int) -> dict:
    straight_dir = work / "runs" / "ltt" / "straight"
    if not straight_dir.exists():
        done = cli(ltt_args(work / "runs", steps, "straight"), work)
        assert done.returncode == 0, done.stderr[-3000:]
    name = f"killed-{rng.randrange(10**6)}"
    interval = max(1, steps // 10)
    kills = [Kill(p, at=rng.randrange(1, 2 * interval)) if p == "step" else Kill(p, skip=rng.randrange(4))
             for p in (rng.choice(FIT_POINTS) for _ in range(kills_per_trial))]
    result = kill_and_resume_fit(ltt_args(work / "runs", steps, name), ["--resume"], work,
                                 work / "runs" / "ltt" / name, kills)
    equal = result.returncode == 0 and same_tensors(ltt_weights(work / "runs" / "ltt" / name),
                                                    ltt_weights(straight_dir))
    return {"job": "ltt train", "interval": interval, "equal": equal, "returncode": result.returncode,
            "kills": [{"point": k.point, "at": k.at, "skip": k.skip, "landed": k.landed, "recovered": k.recovered,
                       "killed_step": k.killed_step, "checkpoint_step": k.checkpoint_step,
                       "work_lost": k.work_lost()} for k in kills]}


def codesearch_trial(work: Path, steps: int, rng: random.Random) -> dict:
    """Kill the index build during its encoder training (resumed from the build's checkpoint), then inside the
    index write (the previous index must still load), then let it finish."""
    tree = work / "tree"
    if not tree.exists():
        make_code_tree(tree)
    straight = work / "idx-straight"
    if not straight.exists():
        done = cli(codesearch_args(tree, straight, steps), work)
        assert done.returncode == 0, done.stderr[-3000:]
    output = work / f"idx-{rng.randrange(10**6)}"
    build = output.parent / f".{output.name}.build"
    interval = max(1, steps // 10)

    def encoder_run():
        found = sorted(build.glob("ltt-encoder-*"))
        return found[0] if found else None

    kill = Kill("step", at=rng.randrange(1, 2 * interval))
    args = codesearch_args(tree, output, steps)
    first = cli(args, work)  # a previous index of the tree, then a rebuild that is killed
    assert first.returncode == 0, first.stderr[-3000:]
    before = index_vectors(output)
    args = [*args, "--rebuild"]
    result = kill_and_resume_fit(args, [], work, encoder_run, [kill])  # the last restart finishes the build
    # one more rebuild, killed inside the index write
    log = work / "index-write.log"
    log.unlink(missing_ok=True)
    landed = kill_when(args, work, lambda: reached(log, "index.write"),
                       {"LATENTSPACE_FAULT_LOG": str(log), "LATENTSPACE_FAULT_POINT": "index.write",
                        "LATENTSPACE_FAULT_SLEEP": "60"})
    try:
        index_intact = same_tensors(index_vectors(output), before)
    except Exception:  # noqa: BLE001
        index_intact = False
    final = cli(args, work)
    equal = (result.returncode == 0 and final.returncode == 0 and same_tensors(index_vectors(output), before)
             and same_tensors(index_vectors(straight), before))
    return {"job": "codesearch index", "interval": interval, "equal": equal, "returncode": final.returncode,
            "kills": [{"point": "step (encoder training)", "at": kill.at, "landed": kill.landed,
                       "recovered": kill.recovered, "killed_step": kill.killed_step,
                       "checkpoint_step": kill.checkpoint_step, "work_lost": kill.work_lost()},
                      {"point": "index.write", "landed": landed, "recovered": index_intact, "work_lost": 0}]}


def bad_disk_cases(work: Path, steps: int) -> list[dict]:
    """A full disk or a read-only folder at a checkpoint, at the run lock and at an index write."""
    out = []
    runs = work / "runs"
    base = cli(ltt_args(runs, steps, "disk"), work)
    assert base.returncode == 0, base.stderr[-3000:]
    last = runs / "ltt" / "disk" / "checkpoints" / "last"
    tree = work / "tree"
    if not tree.exists():
        make_code_tree(tree)
    index = work / "idx-disk"
    done = cli(codesearch_args(tree, index, steps), work)
    assert done.returncode == 0, done.stderr[-3000:]
    cases = [("ltt train --resume, full disk at the checkpoint", ltt_args(runs, 2 * steps, "disk") + ["--resume"],
              "checkpoint.write", 28),
             ("ltt train --resume, read-only folder at the checkpoint",
              ltt_args(runs, 2 * steps, "disk") + ["--resume"], "checkpoint.write", 30),
             ("ltt train --resume, read-only run folder (lock)", ltt_args(runs, 2 * steps, "disk") + ["--resume"],
              "run.lock", 30),
             ("codesearch index --rebuild, full disk at the index write",
              [*codesearch_args(tree, index, steps), "--rebuild"], "index.write", 28)]
    for what, args, point, code in cases:
        before_step = checkpoint_step(last)
        before_index = index_vectors(index)
        proc = cli(args, work, {"LATENTSPACE_FAULT_POINT": point, "LATENTSPACE_FAULT_ERRNO": str(code)})
        lines = [line for line in proc.stderr.splitlines() if line.lower().startswith("error")]  # not INFO logs
        try:
            intact = checkpoint_step(last) == before_step and same_tensors(index_vectors(index), before_index)
        except Exception:  # noqa: BLE001
            intact = False
        clear = (proc.returncode == 2 and len(lines) == 1 and "cannot write" in lines[0] and point in lines[0]
                 and "Traceback" not in proc.stderr)
        out.append({"case": what, "returncode": proc.returncode, "stderr": proc.stderr.strip()[-600:],
                    "one_clear_line": clear, "earlier_results_intact": intact, "ok": clear and intact})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4, help="ltt train trials (each: kills, resume, compare)")
    parser.add_argument("--kills", type=int, default=3, help="kills per ltt trial")
    parser.add_argument("--codesearch-trials", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40, help="training steps of each job (interval: steps // 10)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        trials = [ltt_trial(work, args.steps, rng, args.kills) for _ in range(args.trials)]
        trials += [codesearch_trial(work, args.steps, rng) for _ in range(args.codesearch_trials)]
        disks = bad_disk_cases(work, args.steps)
    kills = [(k, t["interval"]) for t in trials for k in t["kills"] if k["landed"]]
    metrics = {
        "kill_points_tried": len(kills),
        "kill_points_recovered": sum(k["recovered"] for k, _ in kills),
        "max_work_lost_frac_of_interval": max(k["work_lost"] / interval for k, interval in kills),
        "resumed_equal_frac": sum(t["equal"] for t in trials) / len(trials),
        "bad_disk_cases_tried": len(disks),
        "bad_disk_cases_clear": sum(d["ok"] for d in disks),
        "trials": len(trials),
        "seconds": round(time.perf_counter() - start, 1),
    }
    report = {
        "family": "faults",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(note="a shared 2-core machine; every job on CPU"),
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "metrics": metrics,
        "trials": trials,
        "bad_disk_cases": disks,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "faults.json").write_text(json.dumps(report, indent=2) + "\n")
    md = ["# Crash safety: kill -9 and bad disks", "", f"`{report['command']}` on {report['machine']['cpu']} "
          f"({report['machine']['cores']} cores), {report['date']}.", "",
          markdown_table(["metric", "value"], metrics.items()), "", "## Kills", "",
          markdown_table(["job", "point", "killed at step", "checkpoint step", "work lost (steps)", "interval",
                          "recovered", "final equal"],
                         [(t["job"], k["point"], k.get("killed_step", ""), k.get("checkpoint_step", ""),
                           k["work_lost"], t["interval"], k["recovered"], t["equal"])
                          for t in trials for k in t["kills"] if k["landed"]]), "", "## Bad disks", "",
          markdown_table(["case", "exit code", "one clear line", "earlier results intact", "message"],
                         [(d["case"], d["returncode"], d["one_clear_line"], d["earlier_results_intact"],
                           d["stderr"].replace("\n", " / ")[-240:]) for d in disks])]
    (args.out / "faults.md").write_text("\n".join(md) + "\n")
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
