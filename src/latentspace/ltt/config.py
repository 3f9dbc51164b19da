"""`LTTConfig`: every setting of the Latent Trajectory Transformer, with defaults that train the char task on CPU;
`EncoderConfig`: the sizes of its token encoder alone, which the apps (codesearch, logs) nest in their configs;
`LTTRunConfig`: one `ltt train` run (the model, the optimiser, the batch size), the one config tree of that command.

Checkpoints save the model config (`LTTConfig`) alone, as before; the run's `config.json` holds the whole tree."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..core.config import Config
from ..core.errors import ConfigError
from ..core.training import TrainConfig

PRIORS = ("ode", "sde", "flow")


@dataclasses.dataclass
class EncoderConfig(Config):
    """Sizes of the bidirectional transformer encoder (ltt.md "Understanding the Architecture")."""

    d_model: int = 64
    n_layers: int = 2  # transformer blocks
    n_heads: int = 4
    latent_dim: int = 16  # D: the width of the latent path
    dropout: float = 0.0

    def __post_init__(self):
        for name in ("d_model", "n_layers", "n_heads", "latent_dim"):
            if getattr(self, name) < 1:
                raise ConfigError(f"EncoderConfig: {name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ConfigError(f"EncoderConfig: d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"EncoderConfig: dropout must be in [0, 1), got {self.dropout}")


def nest_encoder_fields(saved: dict[str, Any]) -> dict[str, Any]:
    """An app config saved before `EncoderConfig` (its sizes at the top level), with the sizes moved under "encoder".

    Checkpoints of codesearch and logs written before the encoder had its own config still load; a config
    that already has "encoder" is returned as it is.
    """
    if "encoder" in saved:
        return saved
    names = {field.name for field in dataclasses.fields(EncoderConfig)}
    encoder = {name: value for name, value in saved.items() if name in names}
    if not encoder:
        return saved
    return {**{name: value for name, value in saved.items() if name not in names}, "encoder": encoder}


@dataclasses.dataclass
class LTTConfig(Config):
    """Encoder, decoder, prior, loss weights and the char task (ltt.md "Practical Tips": weights 1.0, 0.05, 1.0)."""

    # model sizes
    vocab_size: int = 32  # the char task's vocabulary (tasks.VOCAB); other users set their own
    d_model: int = 64
    latent_dim: int = 16
    n_layers: int = 2  # encoder blocks
    decoder_layers: int = 2  # causal decoder blocks
    n_heads: int = 4
    max_len: int = 80  # longest sequence the positional embedding covers
    dropout: float = 0.0
    # prior
    prior: str = "ode"  # ode (PriorODE) | sde (PriorSDE, torchsde) | flow (flow-matching z0 + ODE drift)
    prior_hidden: int = 128
    multiscale: bool = False  # drift = fast(z, t) + slow_scale * slow(z, t) (ltt.md "Hierarchical Time Scales")
    slow_scale: float = 0.1
    solver: str = "euler"  # ODE solver of sampling: euler | midpoint | rk4 | dopri5 ...
    sde_solver: str = "euler"  # SDE solver: euler (Euler-Maruyama) | milstein | srk ...
    flow_steps: int = 32  # integration steps of the flow-matching z0 sampler
    flow_ot: bool = True  # pair noise and data by minibatch optimal transport (OT-CFM): straighter flows
    # loss: w_recon * CE + w_latent * Epps-Pulley + w_ode * prior matching
    w_recon: float = 1.0
    w_latent: float = 0.05  # Epps-Pulley on every latent of the path
    w_latent_z0: float = 1.0  # Epps-Pulley on the initial latents alone: the prior samples z0 ~ N(0, I)
    w_ode: float = 10.0  # on the relative (scale-free) matching loss; the seed's 1.0 is on the plain one
    ode_relative: bool = True  # prior matching divided by the latents' variance: no collapse (priors.py)
    ep_slices: int = 32
    latent_noise: float = 0.3  # std of Gaussian noise on the latents the decoder sees in training
    # word dropout on the decoder's inputs (Bowman et al. 2016): each previous token is replaced by <pad> with
    # this probability in training, so the decoder must read the latent to know where the block is
    token_dropout: float = 0.0
    rollout_frac: float = 0.75  # fraction of each batch decoded from the prior's rollout of the encoder's z0
    # char task (tasks.py)
    seq_len: int = 64  # characters after the `?X>` prompt
    block_len: int = 8
    noise_p: float = 0.0625  # probability of `!` at each background character
    temperature: float = 1.0  # sampling temperature of the decoder

    PRESETS = {
        "tiny": {"d_model": 32, "latent_dim": 8, "n_layers": 1, "decoder_layers": 1, "n_heads": 2,
                 "prior_hidden": 32, "seq_len": 16, "block_len": 4, "max_len": 24, "ep_slices": 8},
        "small": {},
    }

    def __post_init__(self):
        if self.d_model % self.n_heads:
            raise ConfigError(f"LTTConfig: d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.prior not in PRIORS:
            raise ConfigError(f"LTTConfig: unknown prior {self.prior!r}; expected one of {PRIORS}")
        for name in ("vocab_size", "d_model", "latent_dim", "n_layers", "n_heads", "max_len"):
            if getattr(self, name) < 1:
                raise ConfigError(f"LTTConfig: {name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"LTTConfig: dropout must be in [0, 1), got {self.dropout}")


def _train_defaults() -> TrainConfig:
    """The optimiser of `ltt train`: 1500 steps at 1e-3, warm-up 100 and an evaluation every 300 steps.

    These are the values the command computed from its default 1500 steps before it had a run config
    (warm-up min(100, steps // 10), eval_every steps // 5); they do not follow `--train.steps`, so a run of
    another length sets `--train.warmup-steps` and `--train.eval-every` itself if it wants them to scale.
    """
    return TrainConfig(steps=1500, lr=1e-3, warmup_steps=100, log_every=10, eval_every=300, seed=0, grad_clip=1.0)


@dataclasses.dataclass
class LTTRunConfig(Config):
    """One `ltt train` run: the model, the optimiser and the batch size.

    `train.seed` is the run's one seed: the model's initialisation, the generated batches, the evaluation
    samples and the sample table.
    """

    model: LTTConfig = dataclasses.field(default_factory=LTTConfig)
    train: TrainConfig = dataclasses.field(default_factory=_train_defaults)
    batch_size: int = dataclasses.field(default=64, metadata={"help": "Sequences per step."})

    # the model presets, as presets of the run (`--preset tiny` = LTTConfig.preset("tiny") as the model)
    PRESETS = {name: {"model": dict(changes)} for name, changes in LTTConfig.PRESETS.items()}

    def __post_init__(self):
        if self.batch_size < 1:
            raise ConfigError(f"LTTRunConfig: batch_size must be >= 1, got {self.batch_size}")


def _setting(default, text: str):
    return dataclasses.field(default=default, metadata={"help": text})


@dataclasses.dataclass
class SampleConfig(Config):
    """The settings of `ltt sample`. Solver and temperature left at None are the checkpoint's (its `LTTConfig`'s
    `solver` / `sde_solver` and `temperature`): the model config is not nested here, so that its defaults never
    override the trained model's."""

    n: int = _setting(8, "Samples to draw.")
    shared_z: bool = _setting(False, "One z0 for all samples.")
    solver: str | None = _setting(None, "ODE/SDE solver (default: the checkpoint's).")
    temperature: float | None = _setting(None, "Decoder temperature (0: greedy; default: the checkpoint's).")
    seed: int = _setting(0, "Random seed.")

    def __post_init__(self):
        if self.n < 1:
            raise ConfigError(f"--n {self.n}: expected >= 1")


@dataclasses.dataclass
class PlanConfig(Config):
    """The settings of `ltt plan`: the goal and the search for z0."""

    goal: str | None = _setting(None, "Goal sequence whose final latent is the target (default: a random task).")
    method: str = _setting("cem", "cem | random (random shooting).")
    candidates: int = _setting(256, "Candidates per iteration (one batch).")
    iterations: int = _setting(5, "Iterations (CEM refits; random draws candidates x iterations).")
    seed: int = _setting(0, "Random seed.")

    def __post_init__(self):
        if self.method not in ("cem", "random"):
            raise ConfigError(f"--method {self.method!r}: expected cem or random")
        if self.candidates < 1 or self.iterations < 1:
            raise ConfigError("--candidates and --iterations must be >= 1")


@dataclasses.dataclass
class EvaluateConfig(Config):
    """The settings of `ltt evaluate`."""

    n: int = _setting(512, "Samples per prior.")
    prior_steps: int = _setting(300, "Steps to fit the SDE and flow priors on the frozen encoder.")
