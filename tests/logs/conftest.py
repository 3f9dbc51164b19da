"""Shared tiny fixtures of the logs tests: a small synthetic log set and a tiny trained BGL model."""

from __future__ import annotations

import random

import pytest
import torch

from latentspace.core.data import find_dataset
from latentspace.logs.config import LogsConfig, train_schedule
from latentspace.logs.data import Examples


def tiny_config(**changes) -> LogsConfig:
    """The tiny preset with `changes`; `steps`, `lr` and `seed` go to `train` (steps with its old schedule)."""
    train = {key: changes.pop(key) for key in ("steps", "lr", "seed") if key in changes}
    if "steps" in train:
        train.update(train_schedule(train["steps"]))
    return LogsConfig.preset("tiny").override({**changes, "train": train})


def synthetic_severity(n: int = 200, seed: int = 0) -> Examples:
    """Lines whose severity follows from their words (levels removed by `prepare` at use)."""
    rng = random.Random(seed)
    kinds = [("ERROR", "failed to open connection to {ip} errno {n}"), ("INFO", "request served in {n} ms"),
             ("WARN", "slow disk {path} latency {n} ms"), ("DEBUG", "cache lookup key 0x{h} hit")]
    out = Examples()
    for i in range(n):
        level, text = kinds[i % 4]
        body = text.format(ip=f"10.0.{rng.randint(0, 255)}.{rng.randint(0, 255)}", n=rng.randint(0, 9999),
                           path=f"/var/disk{rng.randint(0, 9)}/data", h=f"{rng.getrandbits(32):08x}")
        out.lines.append(f"2024-01-01 12:00:{i % 60:02d} {level} svc{rng.randint(0, 3)}: {body}")
        out.labels.append(level)
        out.systems.append("synthetic")
    return out


@pytest.fixture(scope="session")
def loghub():
    """loghub's raw 2k logs: a full copy, else the embedded sample (the same unchanged .log files)."""
    path = find_dataset("loghub", required=False)
    if path is None:
        pytest.skip("loghub not found: run `latentspace data fetch loghub` or set $LATENTSPACE_DATA")
    return path


@pytest.fixture(scope="session")
def loghub_full():
    """The full loghub copy (with its structured CSVs), never the embedded sample of raw logs."""
    path = find_dataset("loghub", required=False, sample=False)
    if path is None:
        pytest.skip("full loghub not found: run `latentspace data fetch loghub` or set $LATENTSPACE_DATA")
    return path


@pytest.fixture(scope="session")
def tiny_severity_model():
    from latentspace.logs.train import train_classifier

    torch.manual_seed(0)
    config = tiny_config(task="severity", steps=40, lr=5e-3, batch_size=32)
    return train_classifier(config, synthetic_severity(240)), synthetic_severity(80, seed=1)
