"""`latentspace ltt train | sample | plan | evaluate` and the family's `demo`."""

from __future__ import annotations

import json
import pathlib
from pathlib import Path

import typer

from ..core.config import config_command
from ..core.errors import CheckpointError, require_dir
from .config import EvaluateConfig, LTTRunConfig, PlanConfig, SampleConfig

app = typer.Typer(help="Latent Trajectory Transformer: char task, ODE/SDE/flow priors, latent planning.",
                  no_args_is_help=True)

DEFAULT_RUN = "default"
# the options of sample / plan / evaluate that are not settings (those are their configs' fields)
MODEL_PARAMS = {
    "checkpoint": (Path, typer.Option(None, help="Model folder or run folder (default runs/ltt/default).")),
    "runs_dir": (Path, typer.Option(Path("runs"), help="Root of the run folders.")),
}
OUTPUT_PARAMS = {
    "quiet": (bool, typer.Option(False, "--quiet")),
    "as_json": (bool, typer.Option(False, "--json", help="Print the result as JSON.")),
}


def _checkpoint_dir(checkpoint: Path | None, runs_dir: Path) -> Path:
    """The model folder of a checkpoint argument: a model folder, a run folder, or the default run."""
    path = checkpoint or runs_dir / "ltt" / DEFAULT_RUN
    require_dir(path, "--checkpoint" if checkpoint else "default run", CheckpointError,
                hint="" if checkpoint else "train one first (latentspace ltt train) or pass --checkpoint")
    for candidate in (path, path / "checkpoints" / "last" / "model", path / "last" / "model"):
        if (candidate / "model.safetensors").is_file():
            return candidate
    return path


def _load(checkpoint: Path | None, runs_dir: Path):
    from .model import LatentTrajectoryTransformer

    return LatentTrajectoryTransformer.load(_checkpoint_dir(checkpoint, runs_dir))


def _emit(data: dict, as_json: bool, quiet: bool) -> None:
    if as_json:
        print(json.dumps(data, indent=2))
    elif not quiet:
        from rich.console import Console

        console = Console()
        for key, value in data.items():
            console.print(f"[bold]{key}[/bold]: {value}")


def train_run(config: LTTRunConfig, name: str, runs_dir: Path, resume: bool = False, quiet: bool = False,
              run_path: Path | None = None) -> dict:
    """Train on the char task into runs/ltt/<name>/ (or run_path); returns headline metrics and the run."""
    import torch

    from ..core.runs import Run
    from .train import evaluate_validity, sample_table, train

    seed = config.train.seed
    torch.manual_seed(seed)
    run = Run("ltt", name, root=runs_dir, path=run_path)
    model, result = train(config.model, config.train, batch_size=config.batch_size, run=run, resume=resume,
                          quiet=quiet)
    valid = evaluate_validity(model, 256, seed=seed + 1)
    run.log(result.step, valid_frac_ode=valid)
    run.plot_metrics(["loss", "recon", "ep", "ode"], filename="loss.png", title="LTT training", logy=True)
    run.plot_metrics(["eval_valid_frac"], filename="valid.png", title="valid samples from the ODE prior")
    table = sample_table(model, 4, seed=seed)
    metrics = {"steps": result.step, "valid_frac_ode": valid, "recon": result.metrics.get("recon", float("nan")),
               "ep": result.metrics.get("ep", float("nan")), "ode": result.metrics.get("ode", float("nan"))}
    run.write_summary("LTT training on the char task", metrics, tables=[table])
    return {"metrics": metrics, "run": run, "table": table, "model": model}


@config_command(app, "train", LTTRunConfig,
                help="Train the LTT on the char task (`?X>` + 64 chars, one 8-letter block).",
                name=(str, typer.Option(DEFAULT_RUN, help="Run name: runs/ltt/<name>/.")),
                runs_dir=(Path, typer.Option(Path("runs"), help="Root of the run folders.")),
                resume=(bool, typer.Option(False, help="Continue from the run's last checkpoint.")),
                quiet=(bool, typer.Option(False, "--quiet", help="No progress bar.")),
                as_json=(bool, typer.Option(False, "--json", help="Print the metrics as JSON.")))
def train_command(config: LTTRunConfig, name, runs_dir, resume, quiet, as_json):
    out = train_run(config, name, runs_dir, resume, quiet)
    _emit({**out["metrics"], "run": str(out["run"].path)}, as_json, quiet)


@config_command(app, "sample", SampleConfig, **MODEL_PARAMS, **OUTPUT_PARAMS)
def sample_command(config: SampleConfig, checkpoint: Path | None, runs_dir: Path, quiet: bool, as_json: bool):
    """Sample sequences from the prior: z0 -> integrate -> decode; marks each as valid or not."""
    import torch

    from . import tasks

    model = _load(checkpoint, runs_dir)
    tokens, _ = model.sample(config.n, shared_z=config.shared_z,
                             generator=torch.Generator().manual_seed(config.seed), temperature=config.temperature,
                             method=config.solver)
    valid = tasks.valid_mask(tokens, model.config.seq_len, model.config.block_len)
    rows = [{"text": tasks.decode(t), "valid": bool(v)} for t, v in zip(tokens, valid, strict=True)]
    if as_json:
        print(json.dumps({"samples": rows, "valid_frac": float(valid.float().mean())}, indent=2))
    elif not quiet:
        for row in rows:
            print(("ok  " if row["valid"] else "BAD ") + row["text"])
        print(f"valid: {float(valid.float().mean()):.3f}")


@config_command(app, "plan", PlanConfig, **MODEL_PARAMS, **OUTPUT_PARAMS)
def plan_command(config: PlanConfig, checkpoint: Path | None, runs_dir: Path, quiet: bool, as_json: bool):
    """Search z0 so that the prior's trajectory ends at a goal latent; print the decoded best plan."""
    import torch

    from . import tasks
    from .plan import plan

    model = _load(checkpoint, runs_dir)
    generator = torch.Generator().manual_seed(config.seed)
    goal = config.goal
    c = model.config
    goal_tokens = (tasks.encode(goal) if goal else
                   tasks.generate(1, c.seq_len, c.block_len, c.noise_p, generator=generator)[0])
    with torch.no_grad():
        goal_latent = model.encoder(goal_tokens[None])[0, -1]  # (D,)
    result = plan(model, goal_latent, method=config.method, n_candidates=config.candidates,
                  iterations=config.iterations, generator=generator)
    _emit({"goal": tasks.decode(goal_tokens), "plan": tasks.decode(result.tokens), "distance": result.distance,
           "random_mean_distance": result.random_mean_distance, "history": result.history,
           "evaluated": result.evaluated}, as_json, quiet)


@config_command(app, "evaluate", EvaluateConfig, **MODEL_PARAMS,
                name=(str, typer.Option("evaluate", help="Run name: runs/ltt/<name>/.")), **OUTPUT_PARAMS)
def evaluate_command(config: EvaluateConfig, checkpoint: Path | None, runs_dir: Path, name: str, quiet: bool,
                     as_json: bool):
    """Validity of prior samples for ODE, SDE and flow priors vs encoder z0 (upper bound) and an untrained prior."""
    from ..core.runs import Run
    from .train import latent_usage, validity_report

    model = _load(checkpoint, runs_dir)
    run = Run("ltt", name, root=runs_dir)
    metrics = {**validity_report(model, n=config.n, prior_steps=config.prior_steps), **latent_usage(model, config.n)}
    run.write_config({"checkpoint": str(_checkpoint_dir(checkpoint, runs_dir)), **config.to_dict()})
    run.log(0, **metrics)
    run.write_summary("LTT evaluation: validity of prior samples", metrics)
    _emit({**metrics, "run": str(run.path)}, as_json, quiet)


# what the demo reads, for the report
DEMO_DATA = "the generated char task (synthetic)"


def demo(out_dir: pathlib.Path, quiet: bool):
    """The family's small default job: train the char task briefly, sample, and compare priors."""
    from ..core.runs import DemoResult
    from .train import latent_usage, validity_report

    # 400 steps at 2e-3, with the warm-up (min(100, steps // 10)) and evaluation interval (steps // 5) of 400 steps
    config = LTTRunConfig().override({"train": {"steps": 400, "lr": 2e-3, "warmup_steps": 40, "eval_every": 80}})
    out = train_run(config, name="demo", runs_dir=Path(out_dir), quiet=quiet, run_path=Path(out_dir))
    report = {**validity_report(out["model"], n=128, prior_steps=100), **latent_usage(out["model"], 128)}
    run = out["run"]
    metrics = {**out["metrics"], **report}
    plots = sorted(run.plots_dir.glob("*.png"))
    summary = (f"LTT on the char task after {out['metrics']['steps']} CPU steps: "
               f"{report['valid_frac_ode']:.1%} of ODE-prior samples are valid "
               f"(flow {report['valid_frac_flow']:.1%}, SDE {report['valid_frac_sde']:.1%}, "
               f"encoder z0 {report['valid_frac_encoder_z0']:.1%}, "
               f"untrained prior {report['valid_frac_untrained']:.1%}); the decoder puts the block where the "
               f"latent says in {report['latent_block_match_frac']:.1%} of encoder paths. "
               "The benchmark trains longer (docs/ltt.md).")
    return DemoResult(metrics, plots=plots, summary=summary, tables=[out["table"]])
