"""The four-stage CRSM pipeline, resumable: backbone LM -> dynamics distillation -> assembly -> value head.

Layout of a pipeline run `runs/crsm/<name>/`: config.json, summary.md, and one folder per stage
(`1-backbone/`, `2-distill/`, `3-assemble/`, `4-value/`), each a core `Run` whose `model/` is a complete
CRSM checkpoint (config.json + model.safetensors + tokenizer.json, metadata {"stage": ...}). A stage whose
`model/` exists is done and skipped; a stage interrupted mid-training resumes from its `checkpoints/last`.
Any stage's `model/` loads with `CRSM.load` and works with `generate` and `evaluate`.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from pathlib import Path

import torch

from ..core.checkpoint import is_checkpoint, read_header
from ..core.errors import CheckpointError
from ..core.runs import Run
from ..core.training import fit
from .config import PipelineConfig
from .dynamics import dynamics_loss
from .model import CRSM
from .tasks import PathStarTask, lm_batch, perplexity, split_tokens, stdlib_corpus
from .tokenizer import make_tokenizer

log = logging.getLogger("latentspace")

STAGES = ("1-backbone", "2-distill", "3-assemble", "4-value")


def stage_model_dir(root: Path, stage: str) -> Path:
    return Path(root) / stage / "model"


def stage_done(root: Path, stage: str) -> bool:
    return is_checkpoint(stage_model_dir(root, stage))


def _task(config: PipelineConfig) -> PathStarTask:
    return PathStarTask(config.data.pathstar_degree, config.data.pathstar_length)


_CORPUS_CACHE: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}


def corpus_tokens(model: CRSM, config: PipelineConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Train / validation token streams of the standard-library corpus, tokenized by the model's tokenizer."""
    key = (config.data.corpus_bytes, model.tokenizer.backend_tokenizer.to_str()[:2000])
    if key not in _CORPUS_CACHE:
        _CORPUS_CACHE[key] = split_tokens(model.encode(stdlib_corpus(config.data.corpus_bytes)))
    return _CORPUS_CACHE[key]


def _load_stage(root: Path, stage: str) -> CRSM:
    path = stage_model_dir(root, stage)
    if not is_checkpoint(path):
        raise CheckpointError(f"stage {stage} has no checkpoint at {path}; run the earlier stages first")
    return CRSM.load(path)


def _on(model, tensors):
    """Move a batch to the model's device (fit places the model on the accelerator when there is one)."""
    device = next(model.parameters()).device
    return [t.to(device) for t in tensors]


def _save_stage(model: CRSM, root: Path, stage: str, metrics: dict) -> Path:
    model.cpu()  # later stages and generation work on CPU; only stage 1 trains on an accelerator when present
    return model.save(stage_model_dir(root, stage), metadata={"stage": stage, "metrics": metrics})


# ---- stage 1 ------------------------------------------------------------------------------------
def new_model(config: PipelineConfig) -> CRSM:
    if config.data.task == "lm" and config.model.tokenizer == "bpe":
        text = stdlib_corpus(config.data.corpus_bytes)
        tokenizer = make_tokenizer("bpe", [text[i : i + 4096] for i in range(0, len(text), 4096)],
                                   config.data.bpe_vocab_size)
    else:
        tokenizer = make_tokenizer("byte")
    torch.manual_seed(config.seed)
    return CRSM(config.model_config(len(tokenizer)), tokenizer)


def backbone_loss(model, batch):
    """Next-token cross-entropy; batch = (tokens (B, T), mask (B, T-1) or None)."""
    tokens, mask = batch
    device = next(model.parameters()).device
    tokens = tokens.to(device)
    mask = None if mask is None else mask.to(device)
    logits, _ = model(tokens[:, :-1])  # (B, T-1, V)
    nll = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), tokens[:, 1:], reduction="none")
    if mask is None:
        return nll.mean()
    return (nll * mask).sum() / mask.sum()


def train_backbone(config: PipelineConfig, root: Path, resume: bool = True, quiet: bool = False) -> CRSM:
    """Stage 1: train the Mamba LM by next-token prediction (value head and dynamics untouched)."""
    if stage_done(root, STAGES[0]):
        return _load_stage(root, STAGES[0])
    run = Run("crsm", path=Path(root) / STAGES[0])
    run.write_config(config)
    model = new_model(config)
    if config.data.task == "pathstar":
        task = _task(config)

        def data(step):
            return task.batch(model, config.data.batch_size, seed=config.seed * 1_000_003 + step)
    else:
        train, _ = corpus_tokens(model, config)

        def data(step):
            seed = config.seed * 1_000_003 + step
            return lm_batch(train, config.data.batch_size, config.data.seq_len, seed=seed), None
    params = list(model.backbone.parameters())
    result = fit(model, backbone_loss, data, config.backbone,
                 run=run, resume=resume, quiet=quiet, parameters=params, description="stage 1: backbone")
    if result.interrupted:
        raise KeyboardInterrupt
    metrics = {"loss": result.metrics.get("loss")}
    if config.data.task == "lm":
        _, val = corpus_tokens(model, config)
        device = next(model.parameters()).device
        metrics["ppl"] = perplexity(lambda t: model(t.to(device))[0], val, config.data.seq_len)
    _save_stage(model, root, STAGES[0], metrics)
    run.plot_metrics(["loss"], "loss.png", title="stage 1: backbone")
    return model


# ---- stage 2 ------------------------------------------------------------------------------------
@torch.no_grad()
def collect_traces(model: CRSM, config: PipelineConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(state h_t, action embedding e(x_{t+1}), next state h_{t+1}), each (M, D), from the trained backbone."""
    model.eval()
    if config.data.task == "pathstar":
        tokens, _ = _task(config).batch(model, config.data.distill_sequences, seed=10**9 + config.seed)
    else:
        train, _ = corpus_tokens(model, config)
        tokens = lm_batch(train, config.data.distill_sequences, config.data.seq_len, seed=10**9 + config.seed)
    states, actions, nexts = [], [], []
    for i in range(0, len(tokens), 64):
        chunk = tokens[i : i + 64]
        hidden = model.backbone.hidden(chunk)  # (b, T, D)
        states.append(hidden[:, :-1].reshape(-1, hidden.shape[-1]))
        actions.append(model.backbone.embedding(chunk[:, 1:]).reshape(-1, hidden.shape[-1]))
        nexts.append(hidden[:, 1:].reshape(-1, hidden.shape[-1]))
    return torch.cat(states), torch.cat(actions), torch.cat(nexts)


def distill(config: PipelineConfig, root: Path, resume: bool = True, quiet: bool = False) -> CRSM:
    """Stage 2: fit the LatentDynamics MLP to the backbone's traces (MSE on h_{t+1} - h_t)."""
    if stage_done(root, STAGES[1]):
        return _load_stage(root, STAGES[1])
    model = _load_stage(root, STAGES[0])
    run = Run("crsm", path=Path(root) / STAGES[1])
    run.write_config(config)
    states, actions, nexts = collect_traces(model, config)
    n_val = max(1, len(states) // 10)
    batch = 256

    def data(step):
        g = torch.Generator().manual_seed(config.seed * 7919 + step)
        idx = torch.randint(n_val, len(states), (batch,), generator=g)
        return states[idx], actions[idx], nexts[idx]

    def loss_fn(m, b):
        return dynamics_loss(m.dynamics, *_on(m, b))

    def eval_fn(m):
        s, a, nx = _on(m, (states[:n_val], actions[:n_val], nexts[:n_val]))
        pred = m.dynamics.next_state(s, a)
        base = ((nx - s) ** 2).mean()
        err = ((nx - pred) ** 2).mean()
        return {"mse": float(err), "mse_identity": float(base), "r2": float(1 - err / base)}

    result = fit(model, loss_fn, data, config.distill, run=run, resume=resume,
                 quiet=quiet, parameters=list(model.dynamics.parameters()), eval_fn=eval_fn,
                 description="stage 2: distill")
    if result.interrupted:
        raise KeyboardInterrupt
    _save_stage(model, root, STAGES[1], {k: v for k, v in result.metrics.items() if k.startswith("eval_")})
    run.plot_metrics(["loss", "eval_r2"], "distill.png", title="stage 2: dynamics distillation")
    return model


# ---- stage 3 ------------------------------------------------------------------------------------
def assemble(config: PipelineConfig, root: Path) -> CRSM:
    """Stage 3: one CRSM from the stage-1 backbone and the stage-2 dynamics (checked to share one tokenizer)."""
    if stage_done(root, STAGES[2]):
        return _load_stage(root, STAGES[2])
    backbone = _load_stage(root, STAGES[0])
    distilled = _load_stage(root, STAGES[1])
    if backbone.tokenizer.backend_tokenizer.to_str() != distilled.tokenizer.backend_tokenizer.to_str():
        raise CheckpointError("stage 1 and stage 2 checkpoints carry different tokenizers; rerun stage 2")
    model = CRSM(backbone.config, backbone.tokenizer)
    model.backbone.load_state_dict(backbone.backbone.state_dict())
    model.dynamics.load_state_dict(distilled.dynamics.state_dict())
    model.value_head.load_state_dict(backbone.value_head.state_dict())
    Run("crsm", path=Path(root) / STAGES[2]).write_config(config)
    _save_stage(model, root, STAGES[2], {"from": [str(stage_model_dir(root, s)) for s in STAGES[:2]]})
    return model


# ---- stage 4 ------------------------------------------------------------------------------------
@torch.no_grad()
def value_targets(model: CRSM, config: PipelineConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(latent states (M, D), targets (M,) in [0, 1]).

    pathstar: sampled continuations (temperature 1) are verified; every state along a continuation gets its
    outcome (1 if the path reaches the goal). lm: the target is exp(-mean NLL) of the next 8 true tokens.
    """
    model.eval()
    if config.data.task == "pathstar":
        task = _task(config)
        rng = random.Random(config.seed + 31)
        samples = [task.sample(rng) for _ in range(config.data.value_rollouts)]
        tokens = torch.tensor([model.encode(p) for p, _ in samples])
        gen = torch.Generator().manual_seed(config.seed + 37)
        latent, caches = model.prefill(tokens)
        states, out = [latent], []
        for _ in range(task.length + 2):
            token = torch.multinomial(torch.softmax(model.logits(latent).float(), -1), 1, generator=gen).squeeze(-1)
            out.append(token)
            latent, caches = model.step(token, caches)
            states.append(latent)
        ids = torch.stack(out, 1).tolist()
        outcome = []
        for row, (prompt, _) in zip(ids, samples, strict=True):
            row = row[: row.index(model.eos_id) + 1] if model.eos_id in row else row
            outcome.append(task.reward_fn(model, prompt)(row))
        y = torch.tensor(outcome)  # (R,)
        # states before the first answer token carry no choice yet: label them with the mean outcome
        stacked = torch.stack(states[1:], 1)  # (R, length + 2, D): states after each sampled token
        return stacked.reshape(-1, stacked.shape[-1]), y[:, None].expand(-1, stacked.shape[1]).reshape(-1)
    train, _ = corpus_tokens(model, config)
    tokens = lm_batch(train, config.data.value_rollouts, config.data.seq_len, seed=config.seed + 41)
    logits, hidden = model(tokens[:, :-1])
    nll = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), tokens[:, 1:], reduction="none")
    horizon = 8
    future = nll.unfold(1, horizon, 1).mean(-1)  # (B, T - horizon): mean NLL of the next `horizon` tokens
    target = torch.exp(-future)
    states = hidden[:, : future.shape[1]]
    return states.reshape(-1, states.shape[-1]), target.reshape(-1)


def train_value(config: PipelineConfig, root: Path, resume: bool = True, quiet: bool = False) -> CRSM:
    """Stage 4: fine-tune the value head (backbone frozen) on verifiable or likelihood targets (BCE)."""
    if stage_done(root, STAGES[3]):
        return _load_stage(root, STAGES[3])
    model = _load_stage(root, STAGES[2])
    run = Run("crsm", path=Path(root) / STAGES[3])
    run.write_config(config)
    states, targets = value_targets(model, config)
    n_val = max(1, len(states) // 10)

    def data(step):
        g = torch.Generator().manual_seed(config.seed * 104729 + step)
        idx = torch.randint(n_val, len(states), (256,), generator=g)
        return states[idx], targets[idx]

    def loss_fn(m, b):
        x, y = _on(m, b)
        return torch.nn.functional.binary_cross_entropy_with_logits(m.value_head(x), y)

    def eval_fn(m):
        x, y = _on(m, (states[:n_val], targets[:n_val]))
        logits = m.value_head(x).float()
        p = torch.sigmoid(logits)
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
        return {"bce": float(bce), "mae": float((p - y).abs().mean()),
                "target_mean": float(targets.mean())}

    result = fit(model, loss_fn, data, config.value, run=run, resume=resume,
                 quiet=quiet, parameters=list(model.value_head.parameters()), eval_fn=eval_fn,
                 description="stage 4: value head")
    if result.interrupted:
        raise KeyboardInterrupt
    _save_stage(model, root, STAGES[3], {k: v for k, v in result.metrics.items() if k.startswith("eval_")})
    run.plot_metrics(["loss", "eval_bce"], "value.png", title="stage 4: value head")
    return model


def run_pipeline(config: PipelineConfig, root: Path, resume: bool = True, quiet: bool = False) -> CRSM:
    """All four stages; finished stages are skipped, an interrupted one resumes from its last checkpoint."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    saved = root / "config.json"
    if saved.exists() and resume:
        previous = PipelineConfig.from_json(saved)
        if dataclasses.asdict(previous) != dataclasses.asdict(config):
            log.warning("pipeline config differs from %s; finished stages keep their old settings", saved)
    config.to_json(saved)
    train_backbone(config, root, resume, quiet)
    distill(config, root, resume, quiet)
    assemble(config, root)
    return train_value(config, root, resume, quiet)


def stage_of(path: Path) -> str:
    return read_header(path, "crsm").get("metadata", {}).get("stage", "?")
