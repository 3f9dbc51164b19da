import dataclasses
import pickle

import pytest
import torch
from torch import nn

from latentspace.core.checkpoint import (
    CheckpointMixin,
    load_checkpoint,
    load_state,
    read_header,
    save_checkpoint,
    save_state,
)
from latentspace.core.config import Config
from latentspace.core.errors import CheckpointError


@dataclasses.dataclass
class TinyConfig(Config):
    width: int = 8
    depth: int = 2


class Tiny(CheckpointMixin, nn.Module):
    family = "testfam"
    config_class = TinyConfig

    def __init__(self, config: TinyConfig):
        super().__init__()
        self.config = config
        self.layers = nn.Sequential(*[nn.Linear(config.width, config.width) for _ in range(config.depth)])
        self.head = nn.Linear(config.width, config.width, bias=False)
        self.head.weight = self.layers[0].weight  # tied weights must survive saving

    def checkpoint_files(self):
        return {"vocab.txt": "a\nb\n"}


def test_round_trip_is_bit_exact(tmp_path):
    model = Tiny(TinyConfig(width=6, depth=3))
    model.save(tmp_path / "ckpt", metadata={"step": 7})
    loaded = Tiny.load(tmp_path / "ckpt")
    assert loaded.config == model.config
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert loaded.head.weight is loaded.layers[0].weight
    assert (tmp_path / "ckpt" / "vocab.txt").read_text() == "a\nb\n"
    assert read_header(tmp_path / "ckpt")["metadata"] == {"step": 7}


def test_other_family_is_refused(tmp_path):
    save_checkpoint(tmp_path / "c", {"w": torch.zeros(2)}, {}, family="crsm")
    with pytest.raises(CheckpointError, match="'crsm' checkpoint, but a 'testfam'"):
        Tiny.load(tmp_path / "c")


def test_newer_format_is_refused(tmp_path):
    path = save_checkpoint(tmp_path / "c", {"w": torch.zeros(2)}, {}, family="x")
    text = (path / "config.json").read_text().replace('"format_version": 1', '"format_version": 99')
    (path / "config.json").write_text(text)
    with pytest.raises(CheckpointError, match="newer"):
        load_checkpoint(path)


def test_truncated_file_is_refused(tmp_path):
    path = save_checkpoint(tmp_path / "c", {"w": torch.randn(1000)}, {}, family="x")
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)


def test_pickle_is_refused_and_never_unpickled(tmp_path):
    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled!')",))

    path = save_checkpoint(tmp_path / "c", {"w": torch.zeros(2)}, {}, family="x")
    (path / "model.safetensors").write_bytes(pickle.dumps(Boom()))
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(path)
    torch.save({"w": torch.zeros(2)}, path / "model.safetensors")  # a zip-format torch.save file
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(path)
    (path / "model.safetensors").unlink()
    torch.save({"w": torch.zeros(2)}, path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(path)


def test_missing_folder_and_header(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json is missing"):
        load_checkpoint(tmp_path / "empty")


def test_failed_save_keeps_previous_checkpoint(tmp_path):
    save_checkpoint(tmp_path / "c", {"w": torch.ones(3)}, {}, family="x")
    with pytest.raises(CheckpointError):
        save_checkpoint(tmp_path / "c", {"w": "not a tensor"}, {}, family="x")
    _, state = load_checkpoint(tmp_path / "c")
    assert torch.equal(state["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["c"]


def test_nested_state_round_trip(tmp_path):
    model = nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    state = {"optimizer": optimizer.state_dict(), "tuple": (1, 2.5, None, "x"), "rng": torch.get_rng_state()}
    save_state(tmp_path / "s", state)
    back = load_state(tmp_path / "s")
    assert back["tuple"] == (1, 2.5, None, "x")
    assert torch.equal(back["rng"], state["rng"])
    fresh = torch.optim.AdamW(model.parameters())
    fresh.load_state_dict(back["optimizer"])
    assert torch.equal(fresh.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])
