"""Configuration of the logs app: tokenizer, LTT encoder size, Raccoon dynamics, replay and training.

`LogsConfig` is both the config a classifier checkpoint is built from and the one config tree of `logs train` (and
`logs evaluate`): its base training is the shared `TrainConfig` under `train` (`--train.steps`, `--train.lr`,
`--train.seed`). Checkpoints saved before (flat `steps`, `lr`, `seed`) still load.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ..core.config import Config
from ..core.training import TrainConfig
from ..ltt.config import EncoderConfig

TASKS = ("bgl_alert", "severity")

# fields of LogsConfig before it nested a TrainConfig -> their place in `train`
_LEGACY_TRAIN = ("steps", "lr", "seed")


def train_schedule(steps: int) -> dict[str, int]:
    """`train` overrides for a run of `steps` steps with the warm-up and logging `logs train` has always used:
    warm-up min(20, steps // 10) and a log line every max(1, steps // 20) steps.

    The defaults of `LogsConfig.train` are these for 400 steps (warm-up 20, log every 20); they do not follow
    `--train.steps`, so `LogsConfig().override({"train": train_schedule(150)})` is a run of 150 steps as before.
    """
    return {"steps": steps, "warmup_steps": min(20, steps // 10), "log_every": max(1, steps // 20)}


def _train_defaults() -> TrainConfig:
    """The base training: 400 steps at 2e-3 on CPU, warm-up 20 and a log line every 20 steps (train_schedule(400))."""
    return TrainConfig(lr=2e-3, seed=0, cpu=True, **train_schedule(400))


@dataclasses.dataclass
class LogsConfig(Config):
    """Everything a log classifier checkpoint is built from; defaults train on CPU in about a minute."""

    task: str = dataclasses.field(default="bgl_alert", metadata={"help": "bgl_alert | severity"})
    systems: str = dataclasses.field(default="", metadata={"help": "comma-separated loghub systems (default: task's)"})
    # tokenizer: hashed word buckets, so new systems need no vocabulary growth
    hash_buckets: int = 4096
    max_len: int = 40
    # LTT encoder (a bidirectional transformer; latentspace.ltt.encoder.DeterministicEncoder)
    encoder: EncoderConfig = dataclasses.field(default_factory=lambda: EncoderConfig(latent_dim=32))
    # Raccoon SDE latent dynamics: dz = f(z, t) dt + sigma(z, t) dW over t in [0, 1]
    sde_steps: int = 4
    sde_sigma: float = 0.1
    # replay memory and the continuous update rule
    memory_size: int = 2000
    quality_alpha: float = 1.0
    # update rule tuned on the validation stream (benchmarks/logs_tune.py), never on the reported one
    replay_ratio: float = 0.75
    distill_weight: float = 1.0
    update_lr: float = 1e-3
    update_steps: int = 4
    update_batch: int = 16
    # base training; train.seed is the run's one seed: the split, the initialisation, the batches, the learner
    batch_size: int = 64
    train: TrainConfig = dataclasses.field(default_factory=_train_defaults)
    test_frac: float = 0.3
    anomaly_quantile: float = 0.99

    PRESETS = {
        "tiny": {"hash_buckets": 512, "max_len": 24, "encoder": {"d_model": 32, "n_layers": 1, "n_heads": 2,
                 "latent_dim": 16}, "train": train_schedule(60), "memory_size": 200},
    }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]):
        """Build from a dict; the flat `steps`, `lr`, `seed` of a checkpoint saved before `train` move into it
        (with the warm-up and log interval that training ran with)."""
        if isinstance(data, Mapping) and any(key in data for key in _LEGACY_TRAIN):
            data = dict(data)
            train = {key: data.pop(key) for key in _LEGACY_TRAIN if key in data}
            if "steps" in train:
                train.update(train_schedule(train["steps"]))
            data["train"] = {**train, **data.get("train", {})}
        return super().from_dict(data)

    def __post_init__(self):
        if self.task not in TASKS:
            from ..core.errors import ConfigError

            raise ConfigError(f"LogsConfig.task must be one of {TASKS}, got {self.task!r}")
        if self.update_steps < 1:
            from ..core.errors import ConfigError

            raise ConfigError(f"LogsConfig.update_steps must be >= 1, got {self.update_steps}")

    def system_list(self) -> list[str]:
        if self.systems:
            return [s.strip() for s in self.systems.split(",") if s.strip()]
        return ["BGL"] if self.task == "bgl_alert" else list(SEVERITY_SYSTEMS)


# loghub systems whose lines carry a level token (Linux's "combo" and HPC/Mac/... carry none)
SEVERITY_SYSTEMS = ("HDFS", "Hadoop", "Spark", "Zookeeper", "OpenStack", "Apache", "Android", "BGL", "Windows")


def _setting(default, text: str):
    return dataclasses.field(default=default, metadata={"help": text})


@dataclasses.dataclass
class ClassifyConfig(Config):
    """The settings of `logs classify`."""

    templates: bool = _setting(True, "Add each line's Drain3 template.")
    anomaly_threshold: float = _setting(1.0, "Anomaly score above which a line is an alert.")


@dataclasses.dataclass
class StreamConfig(Config):
    """The settings of `logs stream`."""

    anomaly_threshold: float = _setting(1.0, "Anomaly score above which a line is an alert.")
    save_every: int = _setting(10, "Save the state every N continuous updates.")


@dataclasses.dataclass
class EvaluateConfig(Config):
    """The settings of `logs evaluate` (the model's task, systems and split are the checkpoint's `LogsConfig`)."""

    drift: bool = _setting(False, "Also run the concept-drift stream (Raccoon vs naive vs frozen).")
