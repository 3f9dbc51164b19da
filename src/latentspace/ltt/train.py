"""Training and evaluation of the LTT on the char task: `train`, `fit_prior`, `evaluate_validity`, `sample_table`.

`train` runs the joint loss (encoder + decoder + the config's prior) through `core.training.fit` with data
addressed by step (so `--resume` is exact). `fit_prior` fits another prior (SDE, flow, ...) to the frozen
encoder's paths, so every prior is compared on the same encoder and decoder.
"""

from __future__ import annotations

import copy
import math
import time

import torch

from ..core.runs import Run, markdown_table
from ..core.training import TrainConfig, TrainResult, fit
from . import tasks
from .config import LTTConfig
from .model import LatentTrajectoryTransformer
from .priors import Prior, build_prior


def task_batches(config: LTTConfig, batch_size: int, seed: int):
    """data(step) -> a batch of char-task tokens (batch_size, 3 + seq_len), a pure function of (seed, step)."""

    def data(step: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
        return tasks.generate(batch_size, config.seq_len, config.block_len, config.noise_p, generator=generator)

    return data


def evaluate_samples(model: LatentTrajectoryTransformer, n: int = 256, prior: Prior | None = None,
                     z0: torch.Tensor | None = None, seed: int = 0, method: str | None = None,
                     batch_size: int = 256, temperature: float | None = None) -> dict[str, float]:
    """Validity and diversity of n samples from the prior (or from explicit z0 (n, D)), decoded at
    `temperature` (default the config's).

    Returns valid (the fraction passing the validity checker), and over the valid samples the entropy of the
    block's start position and of its letter, each over its maximum (1 = uniform, as in the data; 0 = one
    value): a decoder that is valid only because it always writes the same sequence scores 0.
    """
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    c = model.config
    samples = []
    was_training = model.training
    model.eval()
    for start in range(0, n, batch_size):
        count = min(batch_size, n - start)
        chunk = None if z0 is None else z0[start:start + count]
        tokens, _ = model.sample(count, generator=generator, prior=prior, z0=chunk, method=method,
                                 temperature=temperature)
        samples.append(tokens.cpu())
    model.train(was_training)
    tokens = torch.cat(samples)
    valid = tasks.valid_mask(tokens, c.seq_len, c.block_len)

    def norm_entropy(values: torch.Tensor, size: int) -> float:
        if len(values) == 0:
            return 0.0
        p = torch.bincount(values, minlength=size).float() / len(values)
        p = p[p > 0]
        return float(-(p * p.log()).sum() / math.log(size))

    starts = tasks.block_start(tokens[valid])
    letters = tokens[valid, 1] - tasks.FIRST_LETTER
    return {"valid": float(valid.float().mean()),
            "start_entropy": norm_entropy(starts, c.seq_len - c.block_len + 1),
            "letter_entropy": norm_entropy(letters, len(tasks.LETTERS))}


def evaluate_validity(model: LatentTrajectoryTransformer, n: int = 256, prior: Prior | None = None,
                      z0: torch.Tensor | None = None, seed: int = 0, method: str | None = None,
                      batch_size: int = 256) -> float:
    """Fraction of n samples from the prior (or from explicit z0 (n, D)) that pass the validity checker."""
    return evaluate_samples(model, n, prior, z0, seed, method, batch_size)["valid"]


def encoder_z0(model: LatentTrajectoryTransformer, n: int, seed: int = 0) -> torch.Tensor:
    """Initial latents of n fresh task sequences from the encoder (the upper bound's z0): (n, D)."""
    c = model.config
    generator = torch.Generator().manual_seed(10_000 + seed)
    tokens = tasks.generate(n, c.seq_len, c.block_len, c.noise_p, generator=generator)
    with torch.no_grad():
        return model.encoder(tokens.to(next(model.parameters()).device))[:, 0]


def train(config: LTTConfig, train_config: TrainConfig, batch_size: int = 64, run: Run | None = None,
          resume: bool = False, quiet: bool = False, eval_samples: int = 128) -> tuple[LatentTrajectoryTransformer,
                                                                                       TrainResult]:
    """Train the LTT jointly (encoder, decoder, prior) on the char task; eval = validity of prior samples."""
    torch.manual_seed(train_config.seed)
    model = LatentTrajectoryTransformer(config)
    if run is not None:
        run.write_config({"model": config.to_dict(), "train": train_config.to_dict(), "batch_size": batch_size})

    def loss_fn(m, batch):
        return m.loss(batch)

    def eval_fn(m):
        return {"valid_frac": evaluate_validity(m, eval_samples, seed=train_config.seed)}

    result = fit(model, loss_fn, task_batches(config, batch_size, train_config.seed), train_config, run=run,
                 eval_fn=eval_fn, resume=resume, quiet=quiet, description="ltt train")
    model.eval()
    return model, result


def fit_prior(model: LatentTrajectoryTransformer, kind: str, steps: int = 500, batch_size: int = 64,
              lr: float = 1e-3, seed: int = 0, quiet: bool = True) -> Prior:
    """Fit a fresh prior of `kind` to the frozen encoder's paths on fresh task batches; returns it (eval mode)."""
    torch.manual_seed(seed)
    device = next(model.parameters()).device
    prior = build_prior(model.config, kind).to(device)
    if kind == model.config.prior:  # start from the jointly trained prior's drift
        prior.load_state_dict(model.prior.state_dict())
    data = task_batches(model.config, batch_size, seed + 7)
    optimizer = torch.optim.AdamW(prior.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    model.eval()
    for step in range(steps):
        with torch.no_grad():
            z = model.encoder(data(step).to(device))  # (B, T, D)
        loss, _ = prior.matching_loss(z)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(prior.parameters(), 1.0)
        optimizer.step()
        schedule.step()
    return prior.eval()


def sampling_speed(model: LatentTrajectoryTransformer, prior: Prior | None = None, method: str | None = None,
                   n: int = 256, repeats: int = 1) -> float:
    """Sequences per second of prior sampling (z0, integration and autoregressive decoding)."""
    generator = torch.Generator().manual_seed(0)
    model.eval()
    model.sample(8, generator=generator, prior=prior, method=method)  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        model.sample(n, generator=generator, prior=prior, method=method)
    return n * repeats / (time.perf_counter() - start)


def sample_table(model: LatentTrajectoryTransformer, n: int = 4, seed: int = 0) -> str:
    """Markdown table of "shared Z" and "random Z" samples with their validity (ltt.md quickstart)."""
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    c = model.config
    rows = []
    for label, shared in (("shared Z", True), ("random Z", False)):
        tokens, _ = model.sample(n, shared_z=shared, generator=generator)
        tokens = tokens.cpu()
        ok = tasks.valid_mask(tokens, c.seq_len, c.block_len)
        rows += [[label, f"`{tasks.decode(t)}`", "yes" if v else "no"] for t, v in zip(tokens, ok, strict=True)]
    return markdown_table(["sampling", "sample", "valid"], rows)


def untrained_prior(model: LatentTrajectoryTransformer, seed: int = 0) -> Prior:
    """A freshly initialised ODE prior (the floor of the validity comparison)."""
    torch.manual_seed(seed)
    device = next(model.parameters()).device
    return build_prior(copy.deepcopy(model.config), "ode").to(device).eval()


def latent_usage(model: LatentTrajectoryTransformer, n: int = 256, seed: int = 0) -> dict[str, float]:
    """Does the decoder read the latent? Decode the encoder's path of n real sequences (temperature 1).

    valid_frac_encoder_path: the decodings that are valid; latent_block_match_frac: those whose block starts
    where the real sequence's block starts (1/57 by chance for a decoder that ignores the latent).
    """
    c = model.config
    device = next(model.parameters()).device
    real = tasks.generate(n, c.seq_len, c.block_len, c.noise_p, generator=torch.Generator().manual_seed(20_000 + seed))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        decoded = model.decode(model.encoder(real.to(device)), temperature=1.0,
                               generator=torch.Generator(device=device).manual_seed(seed)).cpu()
    model.train(was_training)
    valid = tasks.valid_mask(decoded, c.seq_len, c.block_len)
    match = valid & (tasks.block_start(decoded) == tasks.block_start(real))
    return {"valid_frac_encoder_path": float(valid.float().mean()),
            "latent_block_match_frac": float(match.float().mean())}


def validity_report(model: LatentTrajectoryTransformer, n: int = 512, prior_steps: int = 300, seed: int = 0,
                    extra_temperatures: tuple[float, ...] = (), prior_batch_size: int = 128) -> dict[str, float]:
    """Validity of n samples for each prior on the same encoder and decoder, plus upper bound and floor.

    valid_frac_ode / _sde / _flow: z0 and path from that prior (SDE and flow fitted on the frozen encoder),
    decoded at the config's temperature; valid_frac_<source>_t<T>: the same at each extra temperature T;
    start_entropy_* / letter_entropy_*: the diversity of the valid samples (`evaluate_samples`);
    valid_frac_encoder_z0: z0 from the encoder of real sequences, path from the ODE drift (upper bound);
    valid_frac_untrained: z0 ~ N(0, I) and an untrained drift (floor).
    """
    ode = (model.prior if model.config.prior == "ode" else
           fit_prior(model, "ode", prior_steps, batch_size=prior_batch_size, seed=seed))
    priors = {"ode": ode}
    for kind in ("sde", "flow"):
        priors[kind] = fit_prior(model, kind, prior_steps, batch_size=prior_batch_size, seed=seed)
    sources = {kind: {"prior": prior} for kind, prior in priors.items()}
    sources["encoder_z0"] = {"prior": ode, "z0": encoder_z0(model, n, seed)}
    sources["untrained"] = {"prior": untrained_prior(model, seed)}
    out = {}
    for temperature in (None, *extra_temperatures):
        suffix = "" if temperature is None else f"_t{temperature:g}"
        for name, source in sources.items():
            stats = evaluate_samples(model, n, seed=seed, temperature=temperature, **source)
            for key in ("valid", "start_entropy", "letter_entropy"):
                out[f"{'valid_frac' if key == 'valid' else key}_{name}{suffix}"] = stats[key]
    return out
