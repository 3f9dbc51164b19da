"""`latentspace logs`: train, classify FILE, stream (stdin), evaluate; and the demo."""

from __future__ import annotations

import json
import pathlib
from pathlib import Path
from typing import Optional  # noqa: UP035 (typer needs typing.Optional)

import typer

from ..core.config import config_command
from ..core.errors import CheckpointError, require_dir, require_file, require_path
from .config import ClassifyConfig, EvaluateConfig, LogsConfig, StreamConfig, train_schedule

app = typer.Typer(help="Log classification and anomaly detection with Raccoon continual learning.",
                  no_args_is_help=True)

DEFAULT_RUN = Path("runs") / "logs" / "default"
DataDir = Optional[Path]  # noqa: UP045


# the options of classify / stream / evaluate that are not settings (those are their configs' fields)
MODEL_PARAM = (DataDir, typer.Option(None, help="run folder, Raccoon state or model checkpoint"))
OUTPUT_PARAMS = {
    "as_json": (bool, typer.Option(False, "--json", help="JSON output")),
    "quiet": (bool, typer.Option(False, "--quiet", "-q")),
}


def _echo(payload, as_json: bool, quiet: bool = False) -> None:
    from rich.console import Console

    if as_json:
        print(json.dumps(payload, indent=2))
    elif not quiet:
        Console().print(payload)


def _train_run(config: LogsConfig, name: str, runs_dir: Path, data_dir, quiet: bool, resume: bool = False):
    """Train on the task's systems, evaluate on the held-out split, save model + Raccoon state in the run."""
    from ..core.runs import Run
    from .data import load_examples, split
    from .raccoon import RaccoonLearner
    from .train import evaluate_model, fill_memory, train_classifier

    run = Run("logs", name, root=runs_dir)
    run.write_config(config)
    examples = load_examples(config.task, config.system_list(), data_dir)
    train, test = split(examples, config.test_frac, config.train.seed)
    model = train_classifier(config, train, run=run, quiet=quiet, resume=resume)
    metrics = {f"test_{k}": v for k, v in evaluate_model(model, test).items()}
    metrics.update(train_lines=len(train), test_lines=len(test), templates=len(model.templates))
    learner = RaccoonLearner(model, seed=config.train.seed)
    fill_memory(learner, train, config.train.seed)
    learner.save(run.path / "raccoon")
    metrics["memory_bytes"] = learner.memory.nbytes
    run.log(config.train.steps, **{k: v for k, v in metrics.items() if isinstance(v, float)})
    run.plot_metrics(["loss", "acc"], "train.png", title=f"logs train ({config.task})")
    run.write_summary(f"logs train: {config.task} on {', '.join(config.system_list())}", metrics,
                      notes=f"Model and replay memory: `{run.path / 'raccoon'}` (use with classify/stream --model).")
    return run, metrics


def resolve_state(model: Path | None, quiet: bool) -> Path:
    """The Raccoon state folder (model/ + memory) of a run, a state folder or a model; trains the default."""
    if model is None:
        model = DEFAULT_RUN
        if not (model / "raccoon" / "learner.json").is_file():
            from ..core.progress import console

            if not quiet:
                console.print(f"no --model given and {DEFAULT_RUN} is empty: training the default BGL model first")
            _train_run(LogsConfig(), "default", Path("runs"), None, quiet)
    for candidate in (model / "raccoon", model):
        if (candidate / "learner.json").is_file():
            return candidate
    if (model / "config.json").is_file():
        return model
    raise CheckpointError(f"{model} is neither a logs run, a Raccoon state folder nor a logs model checkpoint")


def load_learner(model: Path | None, quiet: bool):
    from .classify import LogClassifier
    from .raccoon import RaccoonLearner

    state = resolve_state(model, quiet)
    if (state / "learner.json").is_file():
        return RaccoonLearner.load(state, LogClassifier), state
    return RaccoonLearner(LogClassifier.load(state)), state


@config_command(app, "train", LogsConfig, help="Train a log classifier (task bgl_alert or severity) on loghub.",
                data_dir=(DataDir, typer.Option(None, "--data-dir", help="folder holding loghub/")),
                run_name=(str, typer.Option("default", "--name", help="run name: runs/logs/<name>/")),
                runs_dir=(Path, typer.Option(Path("runs"), help="root of run folders")),
                resume=(bool, typer.Option(False, help="continue from the run's last checkpoint")),
                quiet=(bool, typer.Option(False, "--quiet", "-q")),
                as_json=(bool, typer.Option(False, "--json", help="print metrics as JSON")))
def train(config: LogsConfig, data_dir, run_name, runs_dir, resume, quiet, as_json):
    require_dir(data_dir, "--data-dir")
    run, metrics = _train_run(config, run_name, runs_dir, data_dir, quiet, resume)
    _echo({"run": str(run.path), **metrics}, as_json, quiet)


@config_command(app, "classify", ClassifyConfig,
                file=(Path, typer.Argument(..., help="a text log file")), model=MODEL_PARAM, **OUTPUT_PARAMS)
def classify(config: ClassifyConfig, file: Path, model: Path | None, as_json: bool, quiet: bool):
    """Classify every line of FILE: label, confidence, anomaly score, alert flag (and template)."""
    from .parse import read_log_file

    require_file(file, "log file")  # before a missing default model is trained
    require_path(model, "--model", error=CheckpointError)
    learner, _ = load_learner(model, quiet)
    lines, issues = read_log_file(file)
    predictions = learner.model.classify_lines(lines, templates=config.templates,
                                               anomaly_threshold=config.anomaly_threshold)
    if as_json:
        for line, p in zip(lines, predictions, strict=True):
            print(json.dumps({"label": p.label, "confidence": round(p.confidence, 4),
                              "anomaly_score": round(p.anomaly_score, 4), "alert": p.alert,
                              "template_id": p.template_id, "template": p.template, "line": line}))
        return
    for line, p in zip(lines, predictions, strict=True):
        flag = "ALERT" if p.alert else "     "
        print(f"{flag} {p.label:<7} {p.confidence:.2f} {p.anomaly_score:6.2f} | {line[:200]}")
    if not quiet:
        from ..core.progress import console

        alerts = sum(p.alert for p in predictions)
        console.print(f"{len(lines)} lines, {alerts} alerts; skipped: {issues or 'none'}")


@config_command(app, "stream", StreamConfig, model=MODEL_PARAM,
                state=(Optional[Path], typer.Option(None, help="where the learner is saved (default: the model's "  # noqa: UP045
                                                              "folder)")),
                **OUTPUT_PARAMS)
def stream(config: StreamConfig, model: Path | None, state: Path | None, as_json: bool, quiet: bool):
    """Read log lines from stdin, print alerts as they come; `#label LABEL <line>` lines teach the model."""
    import sys

    from .classify import LogClassifier
    from .raccoon import RaccoonLearner
    from .stream import LogStream

    require_path(model, "--model", error=CheckpointError)
    if state is not None and (state / "learner.json").is_file():
        learner = RaccoonLearner.load(state, LogClassifier)  # a restart continues where it stopped
    else:
        learner, found = load_learner(model, quiet)
        state = state or found
    stats = LogStream(learner, state, as_json=as_json, anomaly_threshold=config.anomaly_threshold,
                      save_every=config.save_every).run(_stdin_source(sys.stdin))
    if not quiet:
        from ..core.progress import console

        console.print(f"stream summary: {json.dumps(stats.to_dict())}; state saved in {state}")


def _stdin_source(stdin):
    """stdin's file descriptor (reads what has arrived), else its binary buffer (e.g. under a test runner)."""
    import io

    try:
        return stdin.fileno()
    except (io.UnsupportedOperation, AttributeError, ValueError):
        return getattr(stdin, "buffer", stdin)


@config_command(app, "evaluate", EvaluateConfig, model=MODEL_PARAM,
                data_dir=(DataDir, typer.Option(None, "--data-dir", help="folder holding loghub/")),
                name=(str, typer.Option("evaluate", help="run name: runs/logs/<name>/")), **OUTPUT_PARAMS)
def evaluate(settings: EvaluateConfig, model: Path | None, data_dir: Path | None, name: str, as_json: bool,
             quiet: bool):
    """Score a model on its task's held-out split beside Drain3+LR and TF-IDF+LR (and the drift stream)."""
    from ..core.runs import Run, markdown_table
    from .baselines import drain_lr, tfidf_lr
    from .data import load_examples, split
    from .train import evaluate_model, scores

    require_path(model, "--model", error=CheckpointError)
    require_dir(data_dir, "--data-dir")
    learner, _ = load_learner(model, quiet)
    config = learner.model.config
    examples = load_examples(config.task, config.system_list(), data_dir)
    train_part, test = split(examples, config.test_frac, config.train.seed)
    results = {"model": evaluate_model(learner.model, test),
               "drain_lr": scores(test.labels, drain_lr(train_part, test, config.task), config.task),
               "tfidf_lr": scores(test.labels, tfidf_lr(train_part, test, config.task), config.task)}
    run = Run("logs", name)
    payload = {"task": config.task, "test_lines": len(test), "results": results}
    plots = []
    if settings.drift:
        from .drift import plot_drift, run_drift

        drift_results = run_drift(config, data_dir=data_dir, quiet=quiet)
        payload["drift"] = {m: r.metrics for m, r in drift_results.items()}
        plots.append(plot_drift(drift_results, run.plots_dir / "drift.png"))
    (run.path / "evaluation.json").write_text(json.dumps(payload, indent=2))
    keys = sorted({k for r in results.values() for k in r})
    table = markdown_table(["method", *keys], [[m, *(r.get(k, "") for k in keys)] for m, r in results.items()])
    run.write_summary(f"logs evaluate ({config.task})", tables=[table])
    _echo(payload, as_json, quiet)


def demo(out_dir: pathlib.Path, quiet: bool):
    """Small default job: BGL alerts (model vs baselines) and a short drift stream, in about two minutes."""
    import torch

    from ..core.runs import DemoResult, Run, markdown_table
    from .baselines import tfidf_lr
    from .data import load_examples, split
    from .drift import plot_drift, run_drift
    from .train import evaluate_model, scores, train_classifier

    torch.manual_seed(0)
    run = Run("logs", path=out_dir)
    config = LogsConfig().override({"train": train_schedule(150)})
    run.write_config(config)
    train_part, test = split(load_examples("bgl_alert", ["BGL"]), config.test_frac, config.train.seed)
    model = train_classifier(config, train_part, run=run, quiet=quiet)
    bgl = evaluate_model(model, test)
    tfidf = scores(test.labels, tfidf_lr(train_part, test, "bgl_alert"), "bgl_alert")
    drift = run_drift(config.replace(task="severity"), per_system_stream=200, per_system_test=100,
                      eval_every=200, quiet=quiet)
    plot = plot_drift(drift, run.plots_dir / "drift.png", window=50)
    metrics = {"f1_bgl_model": bgl["f1_alert"], "f1_bgl_tfidf_lr": tfidf["f1_alert"]}
    for method, result in drift.items():
        metrics[f"drift_final_acc_{method}"] = result.metrics["final_acc"]
        metrics[f"drift_forgetting_{method}"] = result.metrics["forgetting_base"]
    table = markdown_table(["method", "final acc", "forgetting (points)", "adapt acc (first lines)"],
                           [[m, r.metrics["final_acc"], r.metrics["forgetting_base"], r.metrics["adapt_acc_first"]]
                            for m, r in drift.items()])
    summary = ("A small LTT-encoder classifier finds BGL alerts (alert field removed from the input) beside a "
               "TF-IDF + logistic regression baseline; then a severity model trained on HDFS, Hadoop, Spark and "
               "Zookeeper streams OpenStack, Apache, Android, BGL and Windows with Raccoon (replay + small steps), "
               "naive fine-tuning and a frozen copy.")
    run.write_summary("logs demo", metrics, notes=summary, tables=[table])
    return DemoResult(metrics, [plot], summary, [table])
