"""Checkpoints as `config.json` + `model.safetensors` (+ tokenizer/vocabulary files); never a pickle.

`config.json` holds {"family", "format_version", "latentspace_version", "config", "metadata"}. A load
checks the family and the format version before touching the weights, and a file that is not a
safetensors file (a pickle, a truncated write) is refused with a message naming it. Writes go to a
temporary folder renamed into place, so a crash mid-save leaves the previous checkpoint intact.

`save_state` / `load_state` store any nested state (optimizer, scheduler, RNG) the same way: tensors in
safetensors, the rest in JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .. import __version__
from .data import atomic_folder
from .errors import CheckpointError

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
_PICKLE_NAMES = ("pytorch_model.bin", "model.pt", "model.pth", "model.ckpt", "model.pkl")


def _tensors_for_saving(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies; cloning also un-shares tied weights, which safetensors refuses to store."""
    out = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"state entry {key!r} is a {type(value).__name__}, not a tensor")
        out[key] = value.detach().to("cpu").contiguous().clone()
    return out


def _check_safetensors(path: Path) -> None:
    """Refuse pickles and non-safetensors files with a message that names the file."""
    with open(path, "rb") as handle:
        head = handle.read(16)
    if head[8:9] == b"{":  # 8-byte little-endian header length, then the JSON header
        return
    if head[:2] == b"PK" or head[:1] == b"\x80":
        raise CheckpointError(
            f"{path} is a pickle (torch.save) file, not safetensors; latentspace never unpickles "
            "checkpoints. Convert it with safetensors.torch.save_file in a trusted environment."
        )


def save_checkpoint(
    directory: str | Path,
    state_dict: dict[str, torch.Tensor],
    config: dict[str, Any],
    family: str,
    files: dict[str, str | bytes] | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint folder atomically.

    Args:
        directory: the checkpoint folder (replaced if it exists).
        state_dict: name -> tensor.
        config: the JSON-able config the model is built from.
        family: the family name ("ltt", "crsm", ...), checked on load.
        files: extra files, name -> text or bytes (tokenizer.json, vocab.txt, ...).
        metadata: JSON-able extras (step, metrics, ...).
    """
    directory = Path(directory)
    with atomic_folder(directory) as tmp:
        header = {
            "family": family,
            "format_version": FORMAT_VERSION,
            "latentspace_version": __version__,
            "config": config,
            "metadata": metadata or {},
        }
        (tmp / CONFIG_FILE).write_text(json.dumps(header, indent=2, sort_keys=True) + "\n")
        save_file(_tensors_for_saving(state_dict), str(tmp / WEIGHTS_FILE), metadata={"family": family})
        for name, content in (files or {}).items():
            path = tmp / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content)
    return directory


def read_header(directory: str | Path, family: str | None = None) -> dict[str, Any]:
    """Read and check `config.json`: it exists, is JSON, has the expected family and a known version."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint folder {directory} does not exist")
    header_path = directory / CONFIG_FILE
    if not header_path.is_file():
        raise CheckpointError(f"{directory} is not a latentspace checkpoint: {CONFIG_FILE} is missing")
    try:
        header = json.loads(header_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{header_path} is not valid JSON ({err})") from None
    if not isinstance(header, dict) or "family" not in header or "format_version" not in header:
        raise CheckpointError(f"{header_path} lacks 'family' and 'format_version': not a latentspace checkpoint")
    if family is not None and header["family"] != family:
        raise CheckpointError(
            f"{directory} is a '{header['family']}' checkpoint, but a '{family}' checkpoint was expected"
        )
    if int(header["format_version"]) > FORMAT_VERSION:
        raise CheckpointError(
            f"{directory} has checkpoint format {header['format_version']}, newer than this latentspace "
            f"({__version__}) reads (format {FORMAT_VERSION}); upgrade latentspace"
        )
    return header


def load_tensors(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Load a safetensors file, refusing pickles and truncated files with a clear message."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    _check_safetensors(path)
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is truncated or corrupt, not a readable safetensors file ({err})") from None


def load_checkpoint(
    directory: str | Path, family: str | None = None, device: str | torch.device = "cpu"
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Load a checkpoint folder.

    Returns:
        (header, state_dict): header as written by `save_checkpoint` (config under "config").
    """
    directory = Path(directory)
    header = read_header(directory, family)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        pickles = [name for name in _PICKLE_NAMES if (directory / name).exists()]
        if pickles:
            raise CheckpointError(
                f"{directory} holds {pickles[0]}, a pickle; latentspace loads only {WEIGHTS_FILE}"
            )
        raise CheckpointError(f"{directory} lacks {WEIGHTS_FILE}")
    return header, load_tensors(weights, device)


def is_checkpoint(directory: str | Path) -> bool:
    return (Path(directory) / CONFIG_FILE).is_file() and (Path(directory) / WEIGHTS_FILE).is_file()


# ---- nested state (optimizer, scheduler, RNG) without pickle -------------------------------------------


def _flatten(obj: Any, tensors: dict[str, torch.Tensor], prefix: str) -> Any:
    """Replace every tensor in a nested structure by {"__tensor__": key}; tuples are tagged."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        if not all(isinstance(k, str | int) for k in obj):
            raise CheckpointError(f"cannot store a dict with keys of type {[type(k) for k in obj]} at {prefix}")
        return {
            "__dict__": [[k, _flatten(v, tensors, f"{prefix}.{k}")] for k, v in obj.items()],
        }
    if isinstance(obj, list | tuple):
        items = [_flatten(v, tensors, f"{prefix}.{i}") for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if hasattr(obj, "item") and hasattr(obj, "dtype"):  # numpy scalar or array
        return _flatten(torch.as_tensor(obj), tensors, prefix)
    raise CheckpointError(f"cannot store a {type(obj).__name__} at {prefix} without pickle")


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__tuple__" in obj:
            return tuple(_unflatten(v, tensors) for v in obj["__tuple__"])
        return {k: _unflatten(v, tensors) for k, v in obj["__dict__"]}
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


def save_state(path_prefix: str | Path, state: Any) -> None:
    """Write nested state to `<prefix>.json` + `<prefix>.safetensors` (dict keys may be str or int)."""
    path_prefix = Path(path_prefix)
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(state, tensors, "s")
    save_file(_tensors_for_saving(tensors), str(path_prefix.with_suffix(".safetensors")))
    path_prefix.with_suffix(".json").write_text(json.dumps(skeleton))


def load_state(path_prefix: str | Path) -> Any:
    """Inverse of `save_state`."""
    path_prefix = Path(path_prefix)
    tensors = load_tensors(path_prefix.with_suffix(".safetensors"))
    try:
        skeleton = json.loads(path_prefix.with_suffix(".json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path_prefix.with_suffix('.json')} is missing or not JSON ({err})") from None
    return _unflatten(skeleton, tensors)


class CheckpointMixin:
    """`save(dir)` / `load(dir)` for an nn.Module built from a `Config`.

    A subclass sets `family` and `config_class`, is built as `cls(config)`, and may override
    `checkpoint_files()` (extra files such as a tokenizer), `_build_from_checkpoint(config, dir)` (to read
    them) and `_config_from_checkpoint(data)` (to read a config saved in an older layout).
    """

    family: str = ""
    config_class: type = dict

    def checkpoint_files(self) -> dict[str, str | bytes]:
        return {}

    def save(self, directory: str | Path, metadata: dict[str, Any] | None = None) -> Path:
        return save_checkpoint(
            directory,
            self.state_dict(),
            self.config.to_dict(),
            self.family,
            files=self.checkpoint_files(),
            metadata=metadata,
        )

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu"):
        header, state = load_checkpoint(directory, family=cls.family, device=device)
        config = cls._config_from_checkpoint(header["config"])
        model = cls._build_from_checkpoint(config, Path(directory))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise CheckpointError(
                f"{directory}: weights do not match the {cls.__name__} built from its config "
                f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
            )
        return model.to(device)

    @classmethod
    def _config_from_checkpoint(cls, data: dict[str, Any]):
        """The config of a checkpoint from its saved dict (override to convert a layout older checkpoints used)."""
        return cls.config_class.from_dict(data)

    @classmethod
    def _build_from_checkpoint(cls, config, directory: Path):
        """Build an empty model from its config (override to read extra files such as a tokenizer)."""
        return cls(config)
