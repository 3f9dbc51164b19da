"""LBS settings: the model (`LBSConfig`), the windows (`WindowConfig`) and one run of both (`LBSRunConfig`).

`LBSRunConfig` is the one config tree of `lbs train` and `lbs evaluate`: every option of those commands is one of
its fields (`--model.latent-dim`, `--window.horizon`, `--train.steps`, `--data`), `--preset` picks a named change of
it, and the run writes it to `runs/lbs/<name>/config.json`. Values fitted from data (the statistical highway's
forecasters) are model state, saved in the checkpoint, not config.
"""

from __future__ import annotations

import dataclasses

from ..core.config import Config
from ..core.errors import ConfigError
from ..core.training import TrainConfig

_DTYPES = ("float32", "bfloat16", "float16")
HIGHWAY_FEATURES = ("level", "deviation", "diff", "devdiff")
HIGHWAY_SOURCES = ("linear", "arima", "ets", "arima+ets")


@dataclasses.dataclass
class LBSConfig(Config):
    """Model and data-window settings of `BaseLBS` / `GoalLBS`.

    The seed's names are kept (`latent_dim`, `prefix_tokens`, `sum_tokens`, `gru_layers`, `kl_free_nats`,
    `alpha_val`, `alpha_text`, `alpha_kl`, `d_type` as `dtype`). Backbone "tiny-llama" / "tiny-granite"
    builds a small causal LM from a config (offline); anything else is a hub id or a local path.
    """

    backbone: str = dataclasses.field(default="tiny-llama",
                                      metadata={"help": "tiny-llama, tiny-granite, hub id or path"})
    tiny_hidden: int = 64
    tiny_layers: int = 2
    tiny_heads: int = 4
    latent_dim: int = 16
    prefix_tokens: int = 4
    sum_tokens: int = 4
    gru_layers: int = 1
    kl_free_nats: float = 1.0
    kl_balance: float = 0.8  # DreamerV3 balancing in core.gaussian.kl_loss; -1 = the seed's plain KL
    alpha_val: float = 1.0
    alpha_text: float = 0.1
    alpha_kl: float = 0.1
    alpha_pred: float = 1.0  # value loss of open-loop prior rollouts: trains the forecast path directly
    overshoot: int = 6  # ... of 1..overshoot steps from every filtered state
    persistence: bool = True  # forecast = last value + the latent's predicted change (rollout minus its start)
    highway: int = 8  # order q of the linear autoregressive skip added to forecasts (LSTNet's highway); 0 = off
    # what the highway reads from the last q values: "level" (the standardised values), "deviation" (values
    # minus the smoothed level), "diff" (first differences) or "devdiff" (deviation and differences)
    highway_features: str = "level"
    highway_alpha: float = 1.0  # exponential smoothing of the level forecasts are anchored on; 1 = the last value
    highway_ridge: float = 0.01  # ridge of the highway's least-squares initialisation (fit_highway)
    # where the highway's forecast comes from: "linear" (the learnable linear highway above), or a statistical
    # forecaster fitted on the training part and filtered causally through the whole series (lbs/stat.py):
    # "arima", "ets" or "arima+ets" (their mean); the latent then learns a correction of that forecast (ES-RNN)
    highway_source: str = "linear"
    highway_train: bool = True  # False: the highway stays at its least-squares fit; only the latent learns
    # (the fitted statistical forecasters are model state: `BaseLBS.highway_stat`, saved in the checkpoint)
    dtype: str = "float32"
    value_zero_init: bool = False  # mlp_val starts at 0: with persistence the latent adds nothing until trained
    use_text: bool = True  # False: text embeddings zeroed (the no-text ablation)
    max_text_chars: int = 384  # text is cut to this many characters before encoding
    max_target_tokens: int = 96  # text_loss: tokens of the target text scored per step
    text_loss_samples: int = 16  # text_loss on this many (series, step) pairs per batch
    encode_batch: int = 64
    padding_side: str = "right"
    # the seed the tiny frozen sensor (tiny-llama / tiny-granite) is built from: part of the model, like the choice
    # of backbone (it names the embedding cache too); unused by hub backbones. The run's randomness (head
    # initialisation, window order, forecast samples) is `TrainConfig.seed` (`--train.seed`).
    seed: int = dataclasses.field(default=0, metadata={"help": "Seed the tiny frozen sensor is built from (the "
                                                               "run's seed is --train.seed)."})

    PRESETS = {
        "tiny": {"tiny_hidden": 32, "tiny_layers": 1, "latent_dim": 8, "prefix_tokens": 2, "sum_tokens": 2,
                 "max_text_chars": 64, "max_target_tokens": 24, "text_loss_samples": 4},
        "small": {},
        "granite": {"backbone": "tiny-granite"},
    }

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise ConfigError(f"LBSConfig.dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}")
        if self.padding_side not in ("left", "right"):
            raise ConfigError(f"LBSConfig.padding_side must be left or right, got {self.padding_side!r}")
        for name in ("latent_dim", "prefix_tokens", "sum_tokens", "gru_layers", "overshoot"):
            if getattr(self, name) < 1:
                raise ConfigError(f"LBSConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.highway_features not in HIGHWAY_FEATURES:
            raise ConfigError(f"LBSConfig.highway_features must be one of {list(HIGHWAY_FEATURES)}, "
                              f"got {self.highway_features!r}")
        if self.highway_source not in HIGHWAY_SOURCES:
            raise ConfigError(f"LBSConfig.highway_source must be one of {list(HIGHWAY_SOURCES)}, "
                              f"got {self.highway_source!r}")
        if not 0.0 < self.highway_alpha <= 1.0:
            raise ConfigError(f"LBSConfig.highway_alpha must be in (0, 1], got {self.highway_alpha}")
        if self.highway < 0:
            raise ConfigError(f"LBSConfig.highway must be >= 0 (0 = off), got {self.highway}")

    @property
    def torch_dtype(self):
        import torch  # lazily: the CLI imports this module at startup

        return getattr(torch, self.dtype)

    @property
    def stat_kinds(self) -> tuple[str, ...]:
        """The statistical forecasters the highway averages; () for the linear highway."""
        return () if self.highway_source == "linear" else tuple(self.highway_source.split("+"))

    @property
    def is_tiny(self) -> bool:
        return self.backbone.startswith("tiny-")


@dataclasses.dataclass
class WindowConfig(Config):
    """How a series is cut into training windows and forecast origins."""

    window: int = 32  # T steps per training window
    batch: int = 16  # B windows per optimizer step
    # truncated BPTT: the state is detached every `bptt` steps of a window; bptt >= window (or 0) never detaches,
    # so the CLI's old rule min(16, window) is this default for every window length
    bptt: int = 16
    context: int = 24  # forecast: steps filtered before the origin
    horizon: int = 6  # H steps forecast
    samples: int = 64  # N prior trajectories per origin
    instance_norm: bool = True  # values are taken relative to the last context step (the forecast origin's level)
    train_frac: float = 0.7
    val_frac: float = 0.1
    val_every: int = 0  # > 0: forecast MSE on the validation part every this many steps; the best weights are kept
    val_at_start: bool = False  # the untrained model is a candidate of the validation selection too
    patience: int = 0  # > 0: stop after this many validation checks without improvement (needs val_every)
    point: str = "path"  # point forecast: "path" (the prior-mean rollout, the path overshoot_loss trains) or
    # "samples" (the mean of the N sampled trajectories); quantiles always come from the samples

    def __post_init__(self) -> None:
        if self.point not in ("path", "samples"):
            raise ConfigError(f"WindowConfig.point must be path or samples, got {self.point!r}")


def _train_defaults() -> TrainConfig:
    return TrainConfig(steps=200, lr=3e-3, log_every=10)


@dataclasses.dataclass
class LBSRunConfig(Config):
    """One `lbs train` / `lbs evaluate` run: the model, its windows, the optimiser and the series.

    `train.seed` is the run's one seed: it seeds the model's initialisation (`seed_everything` before the model
    is built), the window order and the forecast samples (`lbs evaluate`: member k of an ensemble uses seed + k).
    `model.seed` only picks the tiny frozen sensor's weights (see `LBSConfig.seed`).
    """

    model: LBSConfig = dataclasses.field(default_factory=LBSConfig)
    window: WindowConfig = dataclasses.field(default_factory=WindowConfig)
    train: TrainConfig = dataclasses.field(default_factory=_train_defaults)
    data: str = dataclasses.field(default="generated", metadata={"help": "generated | time-mmd:<Domain> | a "
                                                                         "date,value,text CSV"})
    data_dir: str | None = dataclasses.field(default=None, metadata={"help": "Folder holding time-mmd."})

    # the model presets, as presets of the run (`--preset tiny` = LBSConfig.preset("tiny") as the model)
    PRESETS = {name: {"model": dict(changes)} for name, changes in LBSConfig.PRESETS.items()}


def _setting(default, text: str):
    return dataclasses.field(default=default, metadata={"help": text})


@dataclasses.dataclass
class ForecastConfig(Config):
    """The settings of `lbs forecast`. The window settings a forecast shares with training (context, instance
    norm, point forecast) are the checkpoint's own (saved with its `window`), so `WindowConfig` is not nested here:
    its defaults would override the trained model's."""

    origin: int = _setting(-1, "First forecast step (-1: just after the series ends).")
    horizon: int = _setting(6, "H steps forecast.")
    samples: int = _setting(64, "N prior trajectories.")
    text: bool = _setting(False, "Also generate a textual forecast from the soft prompt.")

    def __post_init__(self) -> None:
        for name in ("horizon", "samples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be >= 1, got {getattr(self, name)}")


@dataclasses.dataclass
class SteerConfig(Config):
    """The settings of `lbs steer`: the goal (exactly one of `target` and `goal_text`), how hard to steer, and the
    forecast it steers."""

    target: float | None = _setting(None, "Goal value (original units).")
    goal_text: str | None = _setting(None, "Goal as text, through the encoder.")
    strength: float = _setting(0.5, "0: no steering, 1: the prior mean is the goal.")
    horizon: int = _setting(6, "H steps forecast.")
    samples: int = _setting(64, "N prior trajectories.")

    def __post_init__(self) -> None:
        for name in ("horizon", "samples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be >= 1, got {getattr(self, name)}")
