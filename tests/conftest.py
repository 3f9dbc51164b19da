"""Shared test settings: offline, CPU, few threads so the suite is fast and deterministic on 2 cores."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def save_as_before_encoder_config(model, directory):
    """Save an app model (codesearch, logs) with its config laid out as before `EncoderConfig` and the nested
    `train`: sizes at the top, and of the training only `steps`, `lr` and `seed`, at the top too."""
    model.save(directory)
    header_path = directory / "config.json"
    header = json.loads(header_path.read_text())
    header["config"].update(header["config"].pop("encoder"))
    train = header["config"].pop("train")
    header["config"].update({key: train[key] for key in ("steps", "lr", "seed")})
    header_path.write_text(json.dumps(header))
