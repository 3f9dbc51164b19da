"""Configuration of the logs app: tokenizer, LTT encoder size, Raccoon dynamics, replay and training."""

from __future__ import annotations

import dataclasses

from ..core.config import Config
from ..ltt.config import EncoderConfig

TASKS = ("bgl_alert", "severity")


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
    # base training
    steps: int = 400
    batch_size: int = 64
    lr: float = 2e-3
    test_frac: float = 0.3
    seed: int = 0
    anomaly_quantile: float = 0.99

    PRESETS = {
        "tiny": {"hash_buckets": 512, "max_len": 24, "encoder": {"d_model": 32, "n_layers": 1, "n_heads": 2,
                 "latent_dim": 16}, "steps": 60, "memory_size": 200},
    }

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
