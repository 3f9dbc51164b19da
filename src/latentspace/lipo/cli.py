"""`latentspace lipo run | evaluate`, and the demo: LIPO's pipeline from the command line.

Heavy imports (torch, botorch, sentence-transformers) happen inside the commands: the root CLI imports
this module on startup.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional  # noqa: UP035 (typer needs typing.Optional)

import typer

from ..core.config import config_command
from ..core.errors import DataError, require_dir, require_file
from .config import LIPOConfig

app = typer.Typer(help="Latent instruction prompt optimisation: APE -> VAE -> Hyperband + GP/LogEI -> inversion.",
                  no_args_is_help=True)

def _debug_is_the_debug_preset(ctx: typer.Context, value: bool) -> bool:
    """`--debug` (the seed's debug mode) = `--preset debug`: it becomes the default of --preset, so options given on
    the command line (`--debug --iterations 3`) and --config still override the preset's values."""
    if value:
        ctx.default_map = {**(ctx.default_map or {}), "preset": "debug"}
    return value


# the options of `lipo run` that are not settings (those are LIPOConfig's fields): the seed's modes and the run folder
_RUN_PARAMS = {
    "debug": (bool, typer.Option(False, "--debug", is_eager=True, callback=_debug_is_the_debug_preset,
                                 help="The seed's debug mode: the same as --preset debug.")),
    "skip_hbbops": (bool, typer.Option(False, "--skip-hbbops", help="Load Hyperband evaluations instead.")),
    "hyperband_evals_path": (str, typer.Option("", "--hyperband-evals-path", help="hyperband_evals.json to load.")),
    "load_grid": (str, typer.Option("", "--load-grid", help="JSONL {instruction, error_rate}.")),
    "hyperband_only": (bool, typer.Option(False, "--hyperband-only", help="Stop after Hyperband.")),
    "run_name": (str, typer.Option("", "--name", help="Run name (reusing one reuses its LLM caches).")),
    "runs_dir": (Path, typer.Option(Path("runs"), "--runs-dir", help="Where runs/lipo/<name> goes.")),
    "data_dir": (str, typer.Option("", "--data-dir", help="Folder holding gsm8k/.")),
    "quiet": (bool, typer.Option(False, "--quiet", "-q", help="No progress bars.")),
    "as_json": (bool, typer.Option(False, "--json", help="Print the result JSON.")),
}


@config_command(app, "run", LIPOConfig, help="Run LIPO (standard | --skip-hbbops | --load-grid | --hyperband-only | "
                "--debug); writes runs/lipo/<name>/result.json and plots.", **_RUN_PARAMS)
def run_command(config: LIPOConfig, debug: bool, skip_hbbops: bool, hyperband_evals_path: str, load_grid: str,
                hyperband_only: bool, run_name: str, runs_dir: Path, data_dir: str, quiet: bool, as_json: bool):
    from rich.console import Console

    from ..core.runs import Run, markdown_table
    from .pipeline import run_lipo

    require_file(load_grid, "--load-grid")
    require_file(hyperband_evals_path, "--hyperband-evals-path")
    require_dir(data_dir, "--data-dir")
    modes = [m for m, on in (("skip_hbbops", skip_hbbops), ("load_grid", bool(load_grid)),
                             ("hyperband_only", hyperband_only)) if on]
    if len(modes) > 1:
        raise DataError(f"choose one mode, got {modes}")
    mode = modes[0] if modes else "standard"
    run = Run("lipo", run_name or None, root=runs_dir)
    result = run_lipo(config, run, mode=mode, quiet=quiet, load_grid_path=load_grid or None,
                      hyperband_evals_path=hyperband_evals_path or None, data_dir=data_dir or None)
    metrics = headline_metrics(result)
    run.write_summary(f"LIPO run ({mode})", metrics, notes=_notes(result))
    if as_json:
        print(json.dumps(result, indent=2, default=float))
    elif not quiet:
        Console().print(markdown_table(["metric", "value"], [[k, v] for k, v in metrics.items()]))
        Console().print(f"run folder: {run.path}")


def headline_metrics(result: dict) -> dict:
    metrics = {"vae_cosine_mean": result["vae_quality_metrics"]["cosine_mean"],
               "hyperband_best_error": result["hyperband"]["best_error"]}
    if "inference" in result:
        metrics["inference_best_error"] = result["inference"]["best_error"]
        metrics["inference_improvement"] = result["inference"]["improvement"]
    for key, value in result.get("test_error", {}).items():
        metrics[f"test_error_{key}"] = value
    metrics["total_llm_calls"] = result["total_llm_calls"]
    return metrics


def _notes(result: dict) -> str:
    best = result.get("inference", result["hyperband"])["best_instruction"]
    sim = " The task model is the offline SIMULATED GSM8K solver (docs/lipo.md)." if result["task_model"][
        "simulated"] else ""
    return f"Best instruction: \"{best}\".{sim}"


@config_command(
    app, "evaluate", LIPOConfig,
    help="Error rate of instructions on GSM8K (exact match of the final number); default: the seed's examples. "
         "The task model is the config's (--task-backend, --task-model, --base-url; --preset seed: an LLM server).",
    instruction=(list[str], typer.Option(None, "--instruction", "-i", help="Instruction text (repeatable).")),
    result_file=(Optional[Path], typer.Option(None, "--result", help="A result.json: evaluate its best "  # noqa: UP045
                                                                      "instructions.")),
    split=(str, typer.Option("test", "--split", help="test | validation.")),
    name=(str, typer.Option("", "--name", help="Run name.")),
    runs_dir=(Path, typer.Option(Path("runs"), "--runs-dir")),
    data_dir=(str, typer.Option("", "--data-dir", help="Folder holding gsm8k/.")),
    quiet=(bool, typer.Option(False, "--quiet", "-q")),
    as_json=(bool, typer.Option(False, "--json", help="Machine-readable output.")),
)
def evaluate_command(config: LIPOConfig, instruction: list[str], result_file: Path | None, split: str, name: str,
                     runs_dir: Path, data_dir: str, quiet: bool, as_json: bool):
    """Error rate of instructions on GSM8K (exact match of the final number); default: the seed's examples."""
    from rich.console import Console

    from ..core.runs import Run, markdown_table
    from .ape import STYLE_CATEGORIES
    from .pipeline import build_task_evaluator

    require_file(result_file, "--result")
    require_dir(data_dir, "--data-dir")
    texts = list(instruction or [])
    if result_file is not None:
        data = json.loads(result_file.read_text())
        texts += [data[k]["best_instruction"] for k in ("hyperband", "inference") if k in data]
    if not texts:
        texts = [ex for info in STYLE_CATEGORIES.values() for ex in info["examples"][:1]]
    if split not in ("test", "validation"):
        raise DataError(f"--split must be test or validation, got {split!r}")
    run = Run("lipo", name or None, root=runs_dir)
    run.write_config(config)
    evaluator = build_task_evaluator(config, run.path / "llm_cache.jsonl", data_dir or None)
    rows = []
    for step, text in enumerate(texts):
        error = evaluator.evaluate_test(text) if split == "test" else evaluator.evaluate_range(
            text, 0, len(evaluator.validation))
        run.log(step, error=error)
        rows.append({"instruction": text, "error": error, "accuracy": 1.0 - error})
    n = len(evaluator.test) if split == "test" else len(evaluator.validation)
    table = markdown_table(["instruction", f"{split} error (n={n})"], [[r["instruction"], r["error"]] for r in rows])
    sim = config.task_backend == "simulated"
    run.write_summary("LIPO evaluate", {"instructions": len(rows), "llm_calls": evaluator.client.calls},
                      tables=[table], notes="Task model: SIMULATED (offline stand-in)." if sim else "")
    (run.path / "evaluation.json").write_text(json.dumps({"split": split, "n": n, "simulated": sim, "rows": rows},
                                                         indent=2))
    if as_json:
        print(json.dumps({"split": split, "n": n, "simulated": sim, "rows": rows}, indent=2))
    elif not quiet:
        Console().print(table)


def demo(out_dir: Path, quiet: bool):
    """The small offline default job: 200 APE instructions, Hyperband + 4 InvBO iterations, simulated task model."""
    from ..core.runs import DemoResult, Run, markdown_table
    from .pipeline import run_lipo

    config = LIPOConfig(ape_num_instructions=200, iterations=4, vae_epochs=150,
                                                hb_gp_epochs=60, gp_retrain_epochs=50, test_size=100)
    run = Run("lipo", path=Path(out_dir))
    result = run_lipo(config, run, quiet=quiet)
    metrics = headline_metrics(result)
    run.write_summary("LIPO demo", metrics, notes=_notes(result))
    history = result["inference"]["history"]
    table = markdown_table(["iter", "instruction (inverted)", "val error", "GP predicted"],
                           [[h["iteration"], h["instruction"], h["error"], h["predicted_error"]] for h in history])
    summary = (f"LIPO generated {config.ape_num_instructions} instructions offline, embedded them with MiniLM, trained "
               f"the InstructionVAE (reconstruction cosine {metrics['vae_cosine_mean']:.3f}), ran Hyperband with BO "
               f"proposals ({result['hyperband']['llm_calls']} LLM calls, best validation error "
               f"{metrics['hyperband_best_error']:.3f}) and {config.iterations} InvBO iterations (best "
               f"{metrics['inference_best_error']:.3f}). The GSM8K solver is the deterministic SIMULATED task model, "
               "not an LLM; `--task-backend vllm --base-url ...` runs the same code on a real model.")
    return DemoResult(metrics, plots=[Path(p) for p in result["plots"]], summary=summary, tables=[table])
