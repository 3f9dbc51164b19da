"""The concept-drift stream (task c): train on some systems, stream others, measure forgetting and adaptation.

Experiences follow Avalanche: experience 0 is the base systems (learned by supervised training), then one
experience per streamed system (learned online, `update_batch` labelled lines per continuous update).
Every line of the stream is first predicted (prequential accuracy), then learned from. After each
experience every seen experience's test lines are scored, which gives
- forgetting of experience i: accuracy right after learning it minus accuracy at the end (points);
- backward transfer (BWT): the mean over all but the last experience of (final - just-learned) accuracy;
- adaptation: final accuracy on the new systems' test lines, and on each right after it streamed;
- adaptation speed: prequential accuracy over the first `adapt_window` lines of each new system, and the
  lines it takes a rolling window of that size to reach `adapt_target` accuracy.
Methods: Raccoon (replay-mixed small steps), naive fine-tuning (the same steps without replay), frozen.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch

from ..core.progress import progress_bar
from .classify import LogClassifier
from .config import LogsConfig
from .data import Examples, load_examples, split
from .raccoon import RaccoonLearner
from .train import evaluate_model, fill_memory, tensorise, train_classifier

BASE_SYSTEMS = ("HDFS", "Hadoop", "Spark", "Zookeeper")
STREAM_SYSTEMS = ("OpenStack", "Apache", "Android", "BGL", "Windows")


@dataclass
class DriftResult:
    """One method's stream: prequential correctness per line, accuracy matrix, summary metrics."""

    method: str
    correct: list[int] = field(default_factory=list)
    stream_systems: list[str] = field(default_factory=list)
    # acc[j][i]: accuracy on experience i's test lines after learning experience j (i <= j)
    acc: list[list[float]] = field(default_factory=list)
    base_curve: list[tuple[int, float]] = field(default_factory=list)  # (lines streamed, acc on base test)
    metrics: dict[str, float] = field(default_factory=dict)


def _take(examples: Examples, system: str, limit: int) -> Examples:
    index = [i for i, s in enumerate(examples.systems) if s == system][:limit]
    return examples.subset(index)


def prepare_drift(config: LogsConfig, base_systems=BASE_SYSTEMS, stream_systems=STREAM_SYSTEMS,
                  per_system_stream: int = 600, per_system_test: int = 300, data_dir=None,
                  validation: bool = False):
    """Splits of the drift experiment: base train, per-experience test sets, and the stream (in order).

    The reported stream is each stream system's first `per_system_stream` training lines, tested on the
    held-out test split. `validation=True` builds the stream for tuning the update rule from training lines
    only, disjoint from both: each system's last `per_system_test` training lines are its test set, the
    stream takes the training lines after the reported stream's, the systems stream in reverse order and the
    base model trains on the base systems' remaining training lines.
    """
    examples = load_examples("severity", [*base_systems, *stream_systems], data_dir)
    train, test = split(examples, config.test_frac, config.train.seed)
    if validation:
        held_out = Examples()
        kept = []
        for system in dict.fromkeys(train.systems):
            index = [i for i, s in enumerate(train.systems) if s == system]
            held_out.extend(train.subset(index[-per_system_test:]))
            kept += index[:-per_system_test]
        train, test = train.subset(sorted(kept)), held_out
        stream_systems = tuple(reversed(stream_systems))
    base_train = Examples()
    for system in base_systems:
        base_train.extend(_take(train, system, 10**9))
    tests = [Examples()]
    for system in base_systems:
        tests[0].extend(_take(test, system, per_system_test))
    stream = Examples()
    for system in stream_systems:
        lines = _take(train, system, 10**9)
        offset = per_system_stream if validation else 0
        stream.extend(lines.subset(list(range(offset, min(len(lines), offset + per_system_stream)))))
        tests.append(_take(test, system, per_system_test))
    return base_train, tests, stream


def run_stream(learner: RaccoonLearner, method: str, tests: list[Examples], stream: Examples,
               stream_systems, eval_every: int = 300, adapt_window: int = 100, adapt_target: float = 0.9,
               quiet: bool = True) -> DriftResult:
    """Stream lines through a learner: predict, then learn, in chunks of update_batch lines."""
    model = learner.model
    result = DriftResult(method, stream_systems=list(stream.systems))
    result.acc.append([evaluate_model(model, tests[0])["acc"]])
    result.base_curve.append((0, result.acc[0][0]))
    chunk = model.config.update_batch
    with progress_bar(quiet, "lines") as bar:
        task = bar.add_task(f"drift stream ({method})", total=len(stream), info="")
        start = 0
        while start < len(stream):
            system = stream.systems[start]
            stop = min(start + chunk, len(stream))
            while stream.systems[stop - 1] != system:
                stop -= 1
            part = stream.subset(list(range(start, stop)))
            predictions = model.classify_lines(part.lines)
            result.correct += [int(p.label == y) for p, y in zip(predictions, part.labels, strict=True)]
            tokens, _, labels = tensorise(model, part)
            learner.continuous_update(tokens, labels)
            previous, start = start, stop
            if start // eval_every != previous // eval_every:
                result.base_curve.append((start, evaluate_model(model, tests[0])["acc"]))
            if start == len(stream) or stream.systems[start] != system:
                seen = len(result.acc) + 1
                result.acc.append([evaluate_model(model, tests[i])["acc"] for i in range(seen)])
            bar.update(task, completed=start)
    if result.base_curve[-1][0] != len(stream):
        result.base_curve.append((len(stream), result.acc[-1][0]))
    result.metrics = drift_metrics(result, tests, adapt_window, adapt_target)
    result.metrics["memory_items"] = len(learner.memory)
    result.metrics["memory_bytes"] = learner.memory.nbytes
    return result


def drift_metrics(result: DriftResult, tests: list[Examples], adapt_window: int, adapt_target: float):
    """Final accuracy (all experiences' test lines), forgetting, BWT and adaptation speed."""
    final = result.acc[-1]
    sizes = [len(t) for t in tests]
    final_acc = sum(a * n for a, n in zip(final, sizes, strict=True)) / sum(sizes)
    just_learned = [result.acc[i][i] for i in range(len(final))]
    deltas = [final[i] - just_learned[i] for i in range(len(final) - 1)]
    first_acc, first_lines = [], []
    systems = result.stream_systems
    for system in dict.fromkeys(systems):
        index = [i for i, s in enumerate(systems) if s == system]
        correct = [result.correct[i] for i in index]
        first_acc.append(sum(correct[:adapt_window]) / max(1, len(correct[:adapt_window])))
        reached = len(correct)
        for end in range(adapt_window, len(correct) + 1):
            if sum(correct[end - adapt_window:end]) >= adapt_target * adapt_window:
                reached = end
                break
        first_lines.append(reached)
    new_sizes = sizes[1:len(final)]
    return {
        "final_acc": final_acc,
        "final_acc_new": sum(a * n for a, n in zip(final[1:], new_sizes, strict=True)) / max(1, sum(new_sizes)),
        "just_learned_acc_new": sum(a * n for a, n in zip(just_learned[1:], new_sizes, strict=True))
        / max(1, sum(new_sizes)),
        "forgetting_base": 100.0 * (just_learned[0] - final[0]),
        "forgetting_mean": 100.0 * -sum(deltas) / max(1, len(deltas)),
        "bwt": 100.0 * sum(deltas) / max(1, len(deltas)),
        "base_acc_before": just_learned[0],
        "base_acc_after": final[0],
        "prequential_acc": sum(result.correct) / max(1, len(result.correct)),
        "adapt_acc_first": sum(first_acc) / len(first_acc),
        "adapt_lines_to_target": sum(first_lines) / len(first_lines),
    }


def run_drift(config: LogsConfig, base_systems=BASE_SYSTEMS, stream_systems=STREAM_SYSTEMS,
              per_system_stream: int = 600, per_system_test: int = 300, eval_every: int = 300,
              methods=("raccoon", "naive", "frozen"), data_dir=None, quiet: bool = True,
              base_model: LogClassifier | None = None, validation: bool = False,
              learner_options: dict | None = None) -> dict[str, DriftResult]:
    """Train once on the base systems, then stream the others through each method from the same start.

    `validation`: the tuning stream of `prepare_drift`; `learner_options`: RaccoonLearner keyword arguments
    (lr, steps, replay_ratio) shared by raccoon and naive, which differ only in the replay.
    """
    config = config.replace(task="severity")
    base_train, tests, stream = prepare_drift(config, base_systems, stream_systems, per_system_stream,
                                              per_system_test, data_dir, validation)
    stream_systems = list(dict.fromkeys(stream.systems))
    base = base_model or train_classifier(config, base_train, quiet=quiet)
    results = {}
    for method in methods:
        model = copy.deepcopy(base)
        model.invalidate_cache()
        options = {k: v for k, v in (learner_options or {}).items() if method != "naive" or k != "replay_ratio"}
        learner = RaccoonLearner(model, **{"replay_ratio": 0.0 if method == "naive" else None, **options},
                                 frozen=method == "frozen", seed=config.train.seed)
        if method == "raccoon":
            fill_memory(learner, base_train, config.train.seed)
        torch.manual_seed(config.train.seed)
        results[method] = run_stream(learner, method, tests, stream, stream_systems, eval_every,
                                     quiet=quiet)
    return results


def plot_drift(results: dict[str, DriftResult], path, window: int = 100):
    """Rolling prequential accuracy over the stream and base-system test accuracy, per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    for method, result in results.items():
        correct = torch.tensor(result.correct, dtype=torch.float32)
        if len(correct) >= window:
            rolling = correct.unfold(0, window, 1).mean(1)
            left.plot(range(window, len(correct) + 1), rolling.numpy(), label=method, lw=1.3)
        xs, ys = zip(*result.base_curve, strict=True)
        right.plot(xs, ys, marker="o", ms=3, label=method)
    any_result = next(iter(results.values()))
    systems = any_result.stream_systems
    for i in range(1, len(systems)):
        if systems[i] != systems[i - 1]:
            for ax in (left, right):
                ax.axvline(i, color="grey", lw=0.6, ls="--")
    starts = [0] + [i for i in range(1, len(systems)) if systems[i] != systems[i - 1]]
    for s in starts:
        left.text(s + 5, 0.02, systems[s], fontsize=7, rotation=90, va="bottom")
    left.set_title(f"prequential accuracy on the stream (rolling {window})")
    right.set_title("accuracy on the base systems' test lines")
    for ax in (left, right):
        ax.set_xlabel("stream lines")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
