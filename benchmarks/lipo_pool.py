"""Pool LIPO benchmark runs on disjoint optimiser seeds of one table: per-method areas and paired differences.

    python benchmarks/lipo_pool.py benchmarks/results/lipo.json benchmarks/results/lipo_seeds12-23.json

Each run must be on the same table and settings (checked); the areas under the anytime curve are pooled per seed
and LIPO's paired differences (same seed, same table) to each baseline get a mean, a standard error, a one-sided
paired t-test (H1: LIPO's area is lower) and a sign count, for each run alone and for all of them together. Writes
benchmarks/results/lipo_pooled.{json,md}.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from latentspace.core.runs import markdown_table  # noqa: E402

RESULTS = Path(__file__).parent / "results"
METHODS = ("random", "hyperband", "hbbops", "lipo")
SAME = ("table", "lipo_settings", "horizon_frac")  # what must agree between pooled runs
COUNTS = ("invbo_steps_run", "invbo_from_inversion_neighbours", "invbo_raced_out", "invbo_new_incumbents")
DEFAULTS = {"lipo_settings": {"gp_fidelity": "high"}}  # settings that older result files do not record


def paired(lipo: np.ndarray, other: np.ndarray) -> dict:
    diff = lipo - other
    n = len(diff)
    se = float(diff.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    p = float(stats.ttest_1samp(diff, 0.0, alternative="less").pvalue) if n > 1 else float("nan")
    return {"mean": float(diff.mean()), "se": se, "t": float(diff.mean() / se) if se else float("nan"),
            "p_one_sided": p, "seeds_lipo_lower": int((diff < 0).sum()), "seeds": n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="result JSONs of benchmarks/lipo.py on disjoint seeds")
    args = parser.parse_args()
    runs = [json.loads(Path(p).read_text()) for p in args.runs]
    for run in runs:
        for key, defaults in DEFAULTS.items():
            run[key] = {**defaults, **run[key]}
    for key in SAME:
        first = runs[0][key]
        if isinstance(first, dict):  # the InvBO counts are outcomes of the run, not settings
            first = {k: v for k, v in first.items() if k not in COUNTS}
        for path, run in zip(args.runs[1:], runs[1:], strict=True):
            other = {k: v for k, v in run[key].items() if k in first} if isinstance(run[key], dict) else run[key]
            if other != first:
                raise SystemExit(f"{path}: {key} differs from {args.runs[0]}'s; runs of different setups do not pool")
    seeds = [run.get("optimiser_seeds", list(range(run["seeds"]))) for run in runs]
    flat = [s for group in seeds for s in group]
    if len(set(flat)) != len(flat):
        raise SystemExit(f"the runs share optimiser seeds ({seeds}): pooled seeds must be disjoint")
    areas = {m: [np.asarray(run["anytime_summary"][m]["auc_per_seed"]) for run in runs] for m in METHODS}
    out = {"family": "lipo", "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
           "command": "python benchmarks/lipo_pool.py " + " ".join(args.runs), "runs": args.runs, "seeds": seeds,
           "table": runs[0]["table"], "per_run": [], "pooled": {}}
    for i, path in enumerate(args.runs):
        out["per_run"].append({"run": path, "seeds": seeds[i],
                               "area": {m: float(areas[m][i].mean()) for m in METHODS},
                               "lipo_minus": {m: paired(areas["lipo"][i], areas[m][i]) for m in METHODS[:3]}})
    pooled = {m: np.concatenate(areas[m]) for m in METHODS}
    out["pooled"] = {"seeds": len(flat),
                     "area": {m: {"mean": float(pooled[m].mean()),
                                  "se": float(pooled[m].std(ddof=1) / np.sqrt(len(pooled[m])))} for m in METHODS},
                     "lipo_minus": {m: paired(pooled["lipo"], pooled[m]) for m in METHODS[:3]}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "lipo_pooled.json").write_text(json.dumps(out, indent=2) + "\n")

    def row(label, block):
        return [label] + [f"{block[m]['mean']:+.4f} +- {block[m]['se']:.4f} (t {block[m]['t']:.2f}, p "
                          f"{block[m]['p_one_sided']:.3f}, lower on {block[m]['seeds_lipo_lower']}/{block[m]['seeds']})"
                          for m in METHODS[:3]]

    rows = [row(f"{Path(r['run']).name} (seeds {r['seeds'][0]}-{r['seeds'][-1]})", r["lipo_minus"])
            for r in out["per_run"]]
    rows.append(row(f"pooled ({len(flat)} seeds)", out["pooled"]["lipo_minus"]))
    md = [f"# lipo benchmark, runs pooled over optimiser seeds ({out['date']})", "",
          f"Command: `{out['command']}`. Table: {runs[0]['table']['instructions']} instructions x "
          f"{runs[0]['table']['nvalid']} questions (table of the runs, same settings, checked).", "",
          "Area under the anytime curve (lower is better), pooled: " + ", ".join(
              f"{m} {out['pooled']['area'][m]['mean']:.4f} +- {out['pooled']['area'][m]['se']:.4f}" for m in METHODS),
          "", "LIPO minus baseline, area, paired by seed (one-sided paired t-test, H1: LIPO lower):", "",
          markdown_table(["runs", "random", "hyperband", "hbbops"], rows), ""]
    (RESULTS / "lipo_pooled.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
