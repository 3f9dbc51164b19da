"""One fit loop for every family: accelerate, grad clipping, LR schedule, eval hook, checkpoints, resume.

The loop is deterministic given the seed: a run interrupted (Ctrl-C, a crash after a checkpoint) and
resumed with `resume=True` reaches the same parameters as an uninterrupted run, because the model,
the optimizer, the step and every RNG (torch, CUDA, numpy, random) are restored from the last
checkpoint, and the data is addressed by step. Nothing is pickled: the trainer state is JSON +
safetensors (core/checkpoint.py).

Crash safety: a checkpoint is written every `checkpoint_every` steps (by default about 10 % of the run)
or every `checkpoint_seconds` (default 5 minutes), whichever comes first, into a temporary folder that
is renamed over `checkpoints/last` only once complete (`atomic_folder`). A kill -9, a crash or a power
loss therefore loses at most one interval; `--resume` continues from the last complete checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator

from .checkpoint import load_checkpoint, load_state, save_checkpoint, save_state
from .config import Config
from .data import atomic_folder, fault_point, recover_folder
from .errors import LatentspaceError, disk_errors
from .progress import progress_bar
from .runs import Run

log = logging.getLogger("latentspace")

LossOutput = torch.Tensor | tuple[torch.Tensor, dict[str, float]]


@dataclasses.dataclass
class TrainConfig(Config):
    """Optimisation settings shared by every family's training command."""

    steps: int = 1000
    lr: float = 3e-4
    weight_decay: float = 0.0
    warmup_steps: int | None = 0  # None: min(50, steps // 10), resolved when used (`warmup`)
    schedule: str = "cosine"  # constant | linear | cosine (to min_lr_ratio * lr)
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0  # 0 disables clipping
    log_every: int = 10
    eval_every: int = 0  # 0: evaluate only at the end
    checkpoint_every: int | None = None  # None: ~10 % of the run (max(1, steps // 10)); 0: no step-based checkpoints
    checkpoint_seconds: float = 300.0  # also checkpoint when this many seconds passed since the last; 0: never
    mixed_precision: str = "auto"  # auto (bf16 on CUDA, none on CPU) | no | bf16 | fp16
    seed: int = 0
    cpu: bool = False  # force CPU even when a GPU is present

    @property
    def warmup(self) -> int:
        """Warm-up steps: `warmup_steps`, or min(50, steps // 10) when it is None (follows `steps`)."""
        return min(50, self.steps // 10) if self.warmup_steps is None else self.warmup_steps

    @property
    def checkpoint_interval(self) -> int:
        """Steps between periodic checkpoints: `checkpoint_every`, or max(1, steps // 10) when it is None; 0: none."""
        return max(1, self.steps // 10) if self.checkpoint_every is None else max(0, self.checkpoint_every)


class StopTraining(Exception):  # noqa: N818 (a signal, not an error)
    """Raised by a callback to end training normally (early stopping): the final evaluation and checkpoint run."""


class TrainingError(LatentspaceError):
    """Training cannot go on (a non-finite loss, a checkpoint that does not fit the model)."""


@dataclasses.dataclass
class TrainResult:
    step: int
    metrics: dict[str, float]
    interrupted: bool = False
    checkpoint: Path | None = None


def lr_at(step: int, config: TrainConfig) -> float:
    """Learning rate at `step`: linear warm-up, then constant / linear / cosine decay to min_lr_ratio."""
    warmup = config.warmup
    if warmup and step < warmup:
        return config.lr * (step + 1) / warmup
    if config.schedule == "constant":
        return config.lr
    span = max(1, config.steps - warmup)
    frac = min(1.0, (step - warmup) / span)
    floor = config.lr * config.min_lr_ratio
    if config.schedule == "linear":
        return floor + (config.lr - floor) * (1.0 - frac)
    if config.schedule == "cosine":
        return floor + (config.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * frac))
    raise TrainingError(f"unknown LR schedule {config.schedule!r}: expected constant, linear or cosine")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], [int(x) for x in np_state[1]], int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


def save_model(model: torch.nn.Module, directory: Path, metadata: dict[str, Any] | None = None) -> None:
    """Save through the model's own `save` (CheckpointMixin) or as a plain state dict."""
    if hasattr(model, "save"):
        model.save(directory, metadata=metadata)
    else:
        save_checkpoint(directory, model.state_dict(), {}, family="module", metadata=metadata)


def _to_device(obj: Any, device: torch.device) -> Any:
    """Move the tensors of a (nested) batch to the training device."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, list | tuple):
        return type(obj)(_to_device(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    return obj


def _batches(data: Callable[[int], Any] | Iterable, start: int):
    """Yield batches from step `start`: `data(step)` if callable, else cycle an iterable skipping `start`."""
    if callable(data):
        step = start
        while True:
            yield data(step)
            step += 1
    skipped = 0
    while True:
        empty = True
        for batch in data:
            empty = False
            if skipped < start:
                skipped += 1
                continue
            yield batch
        if empty:
            raise TrainingError("the training data is empty")


def fit(
    model: torch.nn.Module,
    loss_fn: Callable[[torch.nn.Module, Any], LossOutput],
    data: Callable[[int], Any] | Iterable,
    config: TrainConfig,
    run: Run | None = None,
    eval_fn: Callable[[torch.nn.Module], dict[str, float]] | None = None,
    resume: bool = False,
    quiet: bool = False,
    parameters: Iterable[torch.nn.Parameter] | None = None,
    callbacks: Iterable[Callable[[int, dict[str, float]], None]] = (),
    description: str = "training",
) -> TrainResult:
    """Train `model` for `config.steps` optimizer steps.

    Args:
        model: the module; saved through its `save` method if it has one.
        loss_fn: loss_fn(model, batch) -> loss or (loss, metrics).
        data: a function step -> batch (deterministic resume for free) or a re-iterable of batches.
        config: optimisation settings.
        run: where metrics.jsonl and checkpoints go; without a run nothing is written.
        eval_fn: eval_fn(model) -> metrics, called every `eval_every` steps and at the end (no grad).
        resume: continue from `run`'s last checkpoint (model, optimizer, step, RNG) if there is one.
        parameters: the parameters to optimise (default: all that require grad).
        callbacks: called as cb(step, metrics) after every step; may raise StopTraining to end training
            normally (early stopping), or KeyboardInterrupt to stop as on Ctrl-C.

    Returns:
        The final step and metrics; `interrupted` if Ctrl-C stopped it (a checkpoint was written).
    """
    mixed = config.mixed_precision
    if mixed == "auto":
        mixed = "bf16" if torch.cuda.is_available() and not config.cpu else "no"
    accelerator = Accelerator(mixed_precision=mixed, cpu=config.cpu)
    seed_everything(config.seed)
    params = list(parameters) if parameters is not None else [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    start = 0
    last_dir = run.checkpoints_dir / "last" if run is not None else None
    if last_dir is not None:  # a kill inside a checkpoint swap left the previous one aside: put it back
        recover_folder(last_dir)
    if resume and last_dir is not None and (last_dir / "trainer_state.json").exists():
        _, state_dict = load_checkpoint(last_dir / "model")
        model.load_state_dict(state_dict)
        trainer_state = load_state(last_dir / "trainer_state")
        optimizer.load_state_dict(trainer_state["optimizer"])
        _set_rng_state(trainer_state["rng"])
        start = int(trainer_state["step"])
        run.truncate_metrics(start)
        log.info("resumed from %s at step %d", last_dir, start)
    model, optimizer = accelerator.prepare(model, optimizer)
    raw_model = accelerator.unwrap_model(model)

    interval = config.checkpoint_interval
    last_saved = {"step": start, "time": time.monotonic()}

    def checkpoint(step: int) -> Path | None:
        if last_dir is None:
            return None
        with disk_errors(f"checkpoint {last_dir} (the previous checkpoint is kept)"), atomic_folder(last_dir) as tmp:
            save_model(raw_model, tmp / "model", metadata={"step": step})
            fault_point("checkpoint.write")
            save_state(tmp / "trainer_state", {"step": step, "optimizer": optimizer.state_dict(),
                                                "rng": _rng_state()})
        last_saved.update(step=step, time=time.monotonic())
        return last_dir

    def checkpoint_due(step: int) -> bool:
        if step >= config.steps or step == last_saved["step"]:
            return False  # the final checkpoint follows
        if interval and step % interval == 0:
            return True
        return bool(config.checkpoint_seconds) and time.monotonic() - last_saved["time"] >= config.checkpoint_seconds

    def evaluate(step: int) -> dict[str, float]:
        if eval_fn is None:
            return {}
        was_training = raw_model.training
        raw_model.eval()
        with torch.no_grad(), accelerator.autocast():
            metrics = {f"eval_{k}" if not k.startswith("eval_") else k: float(v) for k, v in eval_fn(raw_model).items()}
        raw_model.train(was_training)
        if run is not None:
            run.log(step, **metrics)
        return metrics

    metrics: dict[str, float] = {}
    step = start
    batches = _batches(data, start)
    model.train()
    try:
        with progress_bar(quiet, unit="step") as bar:
            task = bar.add_task(description, total=config.steps, completed=start, info="")
            while step < config.steps:
                lr = lr_at(step, config)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                batch = _to_device(next(batches), accelerator.device)
                with accelerator.autocast():
                    out = loss_fn(model, batch)
                loss, extra = out if isinstance(out, tuple) else (out, {})
                if not torch.isfinite(loss):
                    raise TrainingError(
                        f"loss became {loss.item()} at step {step}; the last checkpoint is kept "
                        f"({last_dir}); lower --lr or check the data for NaN"
                    )
                accelerator.backward(loss)
                grad_norm = None
                if config.grad_clip > 0:
                    grad_norm = accelerator.clip_grad_norm_(params, config.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                metrics = {"loss": float(loss.detach()), "lr": lr}
                if grad_norm is not None:
                    metrics["grad_norm"] = float(grad_norm)
                metrics.update({k: float(v) for k, v in extra.items()})
                if run is not None and (step % max(1, config.log_every) == 0 or step == config.steps):
                    run.log(step, **metrics)
                if config.eval_every and step % config.eval_every == 0 and step < config.steps:
                    metrics.update(evaluate(step))
                if checkpoint_due(step):
                    checkpoint(step)
                bar.update(task, completed=step, info=f"loss {metrics['loss']:.4f}")
                fault_point("fit.step")
                try:
                    for callback in callbacks:
                        callback(step, metrics)
                except StopTraining:
                    log.info("training stopped by a callback at step %d", step)
                    break
    except KeyboardInterrupt:
        path = checkpoint(step)
        log.warning("interrupted at step %d; checkpoint saved to %s; continue with --resume", step, path)
        return TrainResult(step, metrics, interrupted=True, checkpoint=path)
    metrics.update(evaluate(step))
    return TrainResult(step, metrics, interrupted=False, checkpoint=checkpoint(step))
