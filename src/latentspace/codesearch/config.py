"""Codesearch settings: the LTT code encoder (`CodeEncoderConfig`), indexing a tree (`IndexConfig`, the run config
of `codesearch index`) and the retrieval benchmark (`EvalConfig`, the run config of `codesearch evaluate`).

Both run configs nest the code encoder under `ltt` (`--ltt.train.steps`, `--ltt.encoder.d-model`, `--ltt.embed-dim`)
and offer its presets as theirs (`--preset tiny|small|base`). Configs saved before the nesting (an index manifest
with `encoder_preset` / `encoder_steps`, an encoder checkpoint with flat `steps` / `lr` / `seed`) still load.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ..core.config import Config
from ..core.errors import ConfigError, DataError
from ..core.training import TrainConfig
from ..ltt.config import EncoderConfig


def canonical_encoder(name: str) -> str:
    """The part name of a dense encoder: "minilm" for the aliases of all-MiniLM-L6-v2, else the name."""
    name = name.strip()
    aliases = {"minilm", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}
    return "minilm" if name.lower() in aliases else name


def _encoder_train_defaults() -> TrainConfig:
    """The code encoder's optimiser: 800 steps at 2e-3, warm-up min(50, steps // 10) (follows steps), CPU."""
    return TrainConfig(steps=800, lr=2e-3, warmup_steps=None, weight_decay=0.01, log_every=10, seed=0, cpu=True)


# fields of CodeEncoderConfig before it nested a TrainConfig -> their place in `train`
_LEGACY_TRAIN = {"steps": "steps", "lr": "lr", "seed": "seed"}


@dataclasses.dataclass
class CodeEncoderConfig(Config):
    """The LTT code encoder: sizes of the DeterministicEncoder, the heads and its training (`train`)."""

    vocab_size: int = 0  # set from the vocabulary when the encoder is built
    max_words: int = 16000
    hash_buckets: int = 2048
    # the LTT DeterministicEncoder (the context path)
    encoder: EncoderConfig = dataclasses.field(default_factory=lambda: EncoderConfig(n_layers=1, latent_dim=64))
    context: bool = True  # False: word path only (a trained, IDF-pooled bag of words)
    embed_dim: int = 256  # width of the word path, the pooled vector and the output
    max_code_tokens: int = 64
    max_query_tokens: int = 32
    temperature: float = 0.05
    batch_size: int = 64
    # train.seed seeds the initialisation and the batch order as well as the fit loop
    train: TrainConfig = dataclasses.field(default_factory=_encoder_train_defaults)

    PRESETS = {
        "tiny": {"encoder": {"d_model": 32, "n_layers": 1, "n_heads": 2, "latent_dim": 32}, "embed_dim": 32,
                 "train": {"steps": 60}, "batch_size": 32, "max_code_tokens": 64, "max_words": 2000,
                 "hash_buckets": 256},
        "small": {},
        "base": {"encoder": {"d_model": 128, "n_layers": 2, "latent_dim": 128}, "max_code_tokens": 128,
                 "batch_size": 128},
    }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]):
        """Build from a dict; the flat `steps`, `lr`, `seed` of a config saved before `train` move into it."""
        return super().from_dict(_nest_train(data))


def _nest_train(data: Mapping[str, Any]) -> Mapping[str, Any]:
    """A CodeEncoderConfig dict with its pre-`train` fields (steps, lr, seed) moved under "train"."""
    if not isinstance(data, Mapping) or not any(key in data for key in _LEGACY_TRAIN):
        return data
    data = dict(data)
    train = {_LEGACY_TRAIN[key]: data.pop(key) for key in list(data) if key in _LEGACY_TRAIN}
    data["train"] = {**train, **data.get("train", {})}
    return data


def _legacy_run(data: Mapping[str, Any]) -> Mapping[str, Any]:
    """An IndexConfig / EvalConfig dict saved before `ltt`: `encoder_preset` + `encoder_steps` become `ltt`."""
    if not isinstance(data, Mapping) or not {"encoder_preset", "encoder_steps"} & set(data):
        return data
    data = dict(data)
    ltt = CodeEncoderConfig.preset(data.pop("encoder_preset", "small"))
    if "encoder_steps" in data:
        ltt = ltt.override({"train.steps": data.pop("encoder_steps")})
    if "seed" in data and "ltt" not in data:  # the evaluation's one seed also seeded the encoder
        ltt = ltt.override({"train.seed": data["seed"]})
    data["ltt"] = {**ltt.to_dict(), **data.get("ltt", {})}
    return data


# the code encoder's presets, as presets of a run (`--preset base` = CodeEncoderConfig.preset("base") as `ltt`)
_RUN_PRESETS = {name: {"ltt": dict(changes)} for name, changes in CodeEncoderConfig.PRESETS.items()}


@dataclasses.dataclass
class IndexConfig(Config):
    """How a tree is indexed (the run config of `codesearch index`)."""

    encoders: str = "ltt"  # comma-separated dense encoders: ltt, minilm, any sentence-transformers id/path; "" none
    snippet_lines: int = 20
    overlap: int = 5
    max_file_bytes: int = 1_000_000
    max_snippet_lines: int = 200
    # the LTT encoder trained on the indexed corpus (default: the "small" preset, 800 steps)
    ltt: CodeEncoderConfig = dataclasses.field(default_factory=CodeEncoderConfig)
    min_train_pairs: int = 16  # fewer docstring pairs: add (symbol name, code) pairs
    # weighted reciprocal-rank fusion: "part=weight,..." (parts not named weigh 1), and RRF's k. The defaults
    # are those chosen for the default parts (bm25 + ltt) on the validation packages of benchmarks/codesearch.py
    # (docs/codesearch.md); minilm, when added, weighs 1.
    fusion_weights: str = "bm25=1,ltt=0.75,minilm=1"
    rrf_k: float = 5.0

    PRESETS = _RUN_PRESETS

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]):
        """Build from a dict; the manifest config of an index built before `ltt` (encoder_preset, encoder_steps)
        converts."""
        data = _legacy_run(data)
        if isinstance(data, Mapping) and isinstance(data.get("ltt"), Mapping):
            data = {**data, "ltt": _nest_train(data["ltt"])}
        return super().from_dict(data)

    def encoder_names(self) -> list[str]:
        return [canonical_encoder(n) for n in self.encoders.split(",") if n.strip()]

    def weights(self) -> dict[str, float]:
        """Part name -> fusion weight, from `fusion_weights`."""
        out = {}
        for item in [i.strip() for i in self.fusion_weights.split(",") if i.strip()]:
            name, _, value = item.partition("=")
            try:
                out[canonical_encoder(name)] = float(value)
            except ValueError:
                raise DataError(f"fusion weight {item!r} is not NAME=NUMBER (e.g. 'bm25=1,ltt=0.5')") from None
        return out


@dataclasses.dataclass
class EvalConfig(Config):
    """What the retrieval benchmark evaluates, on what, and how big (the run config of `codesearch evaluate`)."""

    packages: str = "stdlib"  # "stdlib" and/or comma-separated installed package names or folders
    # installed packages whose functions only train the LTT encoder (never evaluated); missing ones are skipped
    train_packages: str = "numpy,scipy,pandas,sklearn,sympy,networkx,matplotlib,statsmodels"
    eval_fraction: float = 0.25  # share of packages held out (by a stable hash of the name)
    validation_fraction: float = 0.2  # share of the other packages kept for choosing the fusion weights
    max_validation: int = 400
    max_queries: int = 1000
    max_pool: int = 4000  # searched functions: the query targets plus other held-out functions
    max_train_pairs: int = 60000
    methods: str = "bm25,minilm,ltt"
    # the LTT encoder trained on the training packages (default: the "small" preset, 800 steps); its seed is
    # ltt.train.seed, the data's `seed`
    ltt: CodeEncoderConfig = dataclasses.field(default_factory=CodeEncoderConfig)
    min_query_words: int = 4
    seed: int = 0  # the package split and the sampled queries, pool and validation set

    PRESETS = _RUN_PRESETS

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]):
        """Build from a dict; a config saved before `ltt` (encoder_preset, encoder_steps) converts."""
        data = _legacy_run(data)
        if isinstance(data, Mapping) and isinstance(data.get("ltt"), Mapping):
            data = {**data, "ltt": _nest_train(data["ltt"])}
        return super().from_dict(data)


@dataclasses.dataclass
class SearchConfig(Config):
    """The settings of `codesearch search` and `codesearch similar` (how the index was built, fusion weights
    included, is the index's own `IndexConfig`)."""

    top_k: int = dataclasses.field(default=10, metadata={"help": "Hits to show."})
    parts: str | None = dataclasses.field(default=None, metadata={
        "help": "Comma-separated parts to fuse (bm25, ltt, minilm, ...); default all in the index."})
    depth: int = dataclasses.field(default=100, metadata={"help": "Candidates each part ranks before fusion."})

    def __post_init__(self):
        if self.top_k < 1:
            raise ConfigError(f"--top-k {self.top_k}: expected >= 1")
        if self.depth < 1:
            raise ConfigError(f"--depth {self.depth}: expected >= 1")

    def part_list(self) -> list[str] | None:
        """The parts named by `parts`, or None for all in the index."""
        return [p.strip() for p in self.parts.split(",") if p.strip()] if self.parts else None
