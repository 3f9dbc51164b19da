"""`latentspace rbsqa train | answer | evaluate` and the family's demo."""

from __future__ import annotations

import json
import pathlib
import time

import typer

from ..core.config import config_command
from ..core.data import looks_binary
from ..core.errors import CheckpointError, DataError, require_dir, require_file
from .config import RBSQAConfig

app = typer.Typer(help="Segment-recurrent memory QA with a revising, calibrated, halting belief tracker.",
                  no_args_is_help=True)

_COMMON = {
    "run_name": (str, typer.Option(None, "--name", help="Run name (default: a timestamp).")),
    "runs_dir": (pathlib.Path, typer.Option(pathlib.Path("runs"), "--runs-dir", help="Where runs/<family>/ lives.")),
    "quiet": (bool, typer.Option(False, "--quiet", "-q", help="No progress bars.")),
    "as_json": (bool, typer.Option(False, "--json", help="Print the result as JSON.")),
}


def _setup():
    from ..core.runs import set_threads

    set_threads(2, at_most=True)


def _check_inputs(config: RBSQAConfig, checkpoint: pathlib.Path | None = None) -> None:
    """Name a missing --checkpoint or --data-dir before a run folder is made or a model trained."""
    require_dir(checkpoint, "--checkpoint", CheckpointError)
    require_dir(config.data_dir, "--data-dir")


def _latest_checkpoint(runs_dir: pathlib.Path) -> pathlib.Path | None:
    found = sorted((runs_dir / "rbsqa").glob("*/model/config.json"), key=lambda p: p.stat().st_mtime)
    return found[-1].parent if found else None


def _model_for(checkpoint: pathlib.Path | None, config: RBSQAConfig, run, quiet: bool):
    """The checkpoint given, else the newest under runs/rbsqa, else a model trained now into `run`."""
    from .train import load_or_train

    return load_or_train(checkpoint or _latest_checkpoint(run.path.parent.parent), config, run, quiet)


@config_command(app, "train", RBSQAConfig, help="Train the memory QA model, fit calibration, save a checkpoint.",
                resume=(bool, typer.Option(False, "--resume", help="Continue from the run's last checkpoint.")),
                **_COMMON)
def train(config: RBSQAConfig, run_name, runs_dir, quiet, as_json, resume):
    """Train on generated stories + long documents (or real bAbI / SQuAD files when present)."""
    from ..core.runs import Run
    from .train import evaluate_documents, train_model

    _check_inputs(config)
    _setup()
    run = Run("rbsqa", run_name, root=runs_dir)
    run.write_config(config)
    trained = train_model(config, run, quiet, resume=resume)
    trained.model.save(run.path / "model")
    metrics, _ = evaluate_documents(trained.model, trained.val_docs, trained.val_features, quiet=quiet)
    metrics = {f"val_{k}": v for k, v in metrics.items()}
    metrics.update({k: v for k, v in trained.calibration.items()})
    metrics["train_seconds"] = trained.train_seconds
    run.log(config.train.steps, **metrics)
    run.plot_metrics(["loss"], "loss.png")
    run.write_summary("rbsqa train", metrics, notes=f"Checkpoint: `{run.path / 'model'}`.")
    _emit(metrics, as_json, f"checkpoint: {run.path / 'model'}")


@config_command(app, "answer", RBSQAConfig, help="Answer a question over a text file, showing the belief trajectory.",
                doc=(pathlib.Path, typer.Option(..., "--doc", help="A UTF-8 text file (the document).")),
                question=(str, typer.Option(..., "--question", help="The question.")),
                checkpoint=(pathlib.Path, typer.Option(None, "--checkpoint",
                                                       help="Model folder (default: newest runs/rbsqa/*/model).")),
                halt=(bool, typer.Option(True, "--halt/--no-halt", help="Stop reading once confident.")),
                **_COMMON)
def answer(config: RBSQAConfig, doc, question, checkpoint, halt, run_name, runs_dir, quiet, as_json):
    """Read --doc segment by segment and print which span was believed after each segment."""
    from rich.console import Console
    from rich.table import Table

    from ..core.runs import Run
    from .data import Document, encode_document
    from .plots import plot_trajectory
    from .reading import read_document

    text = _read_text(doc)
    if not question.strip():
        raise DataError("--question is empty")
    _check_inputs(config, checkpoint)
    _setup()
    run = Run("rbsqa", run_name or f"answer-{time.strftime('%Y%m%d-%H%M%S')}", root=runs_dir)
    model = _model_for(checkpoint, config, run, quiet)
    if model.tracker is None:
        raise DataError("this checkpoint was trained with use_belief_state=False; answer needs the tracker")
    encoded = encode_document(Document(doc.name, text, question, []), model.tokenizer, model.config)
    traj = read_document(model, encoded, halt=halt)
    plot = plot_trajectory(traj, encoded, run.plots_dir / "belief_trajectory.png", model.config.belief_state_threshold)
    (run.path / "trajectory.json").write_text(json.dumps(traj.to_dict(), indent=2) + "\n")
    run.write_summary("rbsqa answer", {"answer": traj.answer_text, "confidence": traj.steps[-1].confidence,
                                       "segments_read": traj.segments_read, "segments": traj.num_segments})
    if as_json:
        print(json.dumps({"answer": traj.answer_text, **traj.to_dict(), "plot": str(plot)}, indent=2))
        return
    console = Console()
    table = Table("segment", "segment's best span", "conf", "belief", "belief conf", "event")
    for step in traj.steps:
        event = "revised" if step.revised else ""
        event += (" halted" if step.halted else "")
        table.add_row(str(step.segment), step.candidate_text, f"{step.candidate_confidence:.2f}", step.belief_text,
                      f"{step.confidence:.2f}", event.strip())
    console.print(table)
    console.print(f"answer: [bold]{traj.answer_text}[/bold] (confidence {traj.steps[-1].confidence:.2f}, read "
                  f"{traj.segments_read}/{traj.num_segments} segments); plot: {plot}")


@config_command(app, "evaluate", RBSQAConfig, help="EM/F1 with and without the tracker, revisions, ECE, halting.",
                checkpoint=(pathlib.Path, typer.Option(None, "--checkpoint",
                                                       help="Model folder (default: newest runs/rbsqa/*/model).")),
                **_COMMON)
def evaluate(config: RBSQAConfig, checkpoint, run_name, runs_dir, quiet, as_json):
    """Evaluate on the test split and plot a belief trajectory and a reliability diagram."""
    from ..core.runs import Run

    _check_inputs(config, checkpoint)
    _setup()
    run = Run("rbsqa", run_name or f"evaluate-{time.strftime('%Y%m%d-%H%M%S')}", root=runs_dir)
    run.write_config(config)
    model = _model_for(checkpoint, config, run, quiet)
    metrics, plots = _evaluate_into(model, config, run, quiet)
    _emit(metrics, as_json, f"run: {run.path}")


def _evaluate_into(model, config: RBSQAConfig, run, quiet: bool):
    """Evaluate the test split into `run`: metrics.jsonl, predictions.jsonl, plots, summary.md."""
    from .plots import plot_reliability, plot_trajectory
    from .reading import read_document
    from .train import candidate_scores, encode_split, evaluate_documents, segment_features

    data_config = model.config.replace(train=model.config.train.replace(seed=config.train.seed), **{
        k: getattr(config, k) for k in ("task", "data_dir", "test_docs", "story_sentences", "distractors")})
    docs = encode_split(model, data_config, "test")
    features = segment_features(model, docs, quiet=quiet)
    metrics, rows = evaluate_documents(model, docs, features, quiet=quiet)
    run.log(0, **metrics)
    with open(run.path / "predictions.jsonl", "w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    stories = [i for i, d in enumerate(docs) if d.revision_points] or [0]
    example = max(stories, key=lambda i: len(docs[i].revision_points))
    traj = read_document(model, docs[example], None if features is None else features[example])
    plots = [plot_trajectory(traj, docs[example], run.plots_dir / "belief_trajectory.png",
                             model.config.belief_state_threshold)]
    z, correct = candidate_scores(model, docs, features)
    plots.append(plot_reliability(z, correct, model.tracker.calibrate, run.plots_dir / "reliability.png"))
    run.write_summary("rbsqa evaluate", metrics)
    return metrics, plots


def _read_text(path: pathlib.Path) -> str:
    require_file(path, "--doc")
    raw = path.read_bytes()
    if looks_binary(raw):
        raise DataError(f"--doc {path} is a binary file; expected UTF-8 text")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"--doc {path} is not UTF-8 text") from None
    if not text.strip():
        raise DataError(f"--doc {path} is empty")
    return text


def _emit(metrics: dict, as_json: bool, line: str) -> None:
    from rich.console import Console

    from ..core.runs import format_value

    if as_json:
        print(json.dumps(metrics, indent=2))
        return
    console = Console()
    for key, value in metrics.items():
        console.print(f"{key:32s} {format_value(value)}")
    console.print(line)


def demo(out_dir: pathlib.Path, quiet: bool):
    """Train a small RBS-QA model on bAbI qa1 stories and generated long documents, evaluate, plot a trajectory."""
    from ..core.runs import DemoResult, Run, markdown_table
    from .train import train_model

    _setup()
    config = RBSQAConfig.preset("demo")
    run = Run("rbsqa", path=pathlib.Path(out_dir))
    run.write_config(config)
    trained = train_model(config, run, quiet)
    trained.model.save(run.path / "model")
    metrics, plots = _evaluate_into(trained.model, config, run, quiet)
    plots.append(run.plot_metrics(["loss"], "loss.png"))
    keys = ["f1_with_tracker", "f1_without_tracker", "revision_detection_rate", "false_revisions_per_doc",
            "ece_uncalibrated", "ece_calibrated", "segments_read_frac_halting", "f1_halting", "f1_full_read_long"]
    headline = {k: metrics[k] for k in keys}
    summary = (f"RBS-QA reads real bAbI qa1 stories (people moving, so the answer changes) and generated long "
               f"documents (a fact paragraph among {config.distractors} distractors) segment by segment with a frozen "
               f"MiniLM, gated memory and a QA head trained for {config.train.steps} steps on {config.train_docs} "
               f"documents. "
               f"The belief tracker revises its answer when a later segment beats the re-scored old belief "
               f"(F1 {metrics['f1_with_tracker']:.2f} vs {metrics['f1_without_tracker']:.2f} for the best span over "
               f"all segments), and halting reads {metrics['segments_read_frac_halting']:.0%} of the long documents' "
               f"segments.")
    table = markdown_table(["metric", "value"], [[k, v] for k, v in headline.items()])
    return DemoResult(headline, [p for p in plots if p is not None], summary, [table])
