"""`run_lipo`: the whole LIPO pipeline of the seed in its modes, writing the seed's result JSON and plots.

Modes: "standard" (APE -> encode -> VAE -> Hyperband -> InvBO), "hyperband_only" (stops after Hyperband),
"skip_hbbops" (loads earlier Hyperband evaluations instead of running it), "load_grid" (a JSONL grid of
evaluated instructions; the best top_k train the GP). `--debug` is the `debug` preset of LIPOConfig.
"""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path
from typing import Any

import torch

from ..core.data import read_jsonl
from ..core.errors import DataError
from ..core.llm import CallableBackend, LLMClient, make_client
from ..core.runs import Run
from .ape import APEGenerator, OfflineInstructionWriter
from .config import LIPOConfig
from .encoder import GTRInstructionEncoder
from .evaluate import GSM8KEvaluator, SimulatedTaskModel, load_gsm8k
from .gp import GPWithEI
from .hyperband import EvaluationCache, LIPOHyperband
from .inference import LIPOInference
from .inversion import make_inverter
from .vae import InstructionVAE, VAEWithAdapter, train_vae, vae_quality_metrics

log = logging.getLogger("latentspace")

MODES = ("standard", "hyperband_only", "skip_hbbops", "load_grid")


def build_task_evaluator(config: LIPOConfig, cache_path: Path | None, data_dir: str | None = None) -> GSM8KEvaluator:
    """GSM8K evaluator whose client is the simulated task model (offline) or a real LLM backend."""
    train = load_gsm8k("train", data_dir)
    test = load_gsm8k("test", data_dir)[: config.test_size] if config.test_size > 0 else []
    if config.validation_size > len(train):
        raise DataError(f"validation_size {config.validation_size} exceeds the {len(train)} GSM8K train questions")
    validation = random.Random(config.seed).sample(train, config.validation_size)
    budget = config.llm_budget or None
    if config.task_backend == "simulated":
        client = LLMClient(CallableBackend(SimulatedTaskModel(validation + test), config.task_model),
                           cache=cache_path, budget=budget)
    else:
        client = make_client(config.task_backend, config.task_model, config.base_url, cache_path,
                             max_concurrency=config.max_concurrency, budget=budget)
    return GSM8KEvaluator(client, validation, test, max_tokens=config.task_max_tokens)


def build_writer_client(config: LIPOConfig, cache_path: Path | None) -> LLMClient:
    if config.ape_backend == "offline":
        return LLMClient(CallableBackend(OfflineInstructionWriter(config.seed), config.ape_model), cache=cache_path)
    return make_client(config.ape_backend, config.ape_model, config.base_url, cache_path,
                       max_concurrency=config.max_concurrency)


def load_grid(path: str | Path) -> list[dict]:
    """A JSONL grid of evaluated instructions: {"instruction" | "instruction_text" | "text", "error_rate" | "error"}."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"grid file {path} does not exist")
    rows = []
    for lineno, record in read_jsonl(path):
        try:
            text = record.get("instruction") or record.get("instruction_text") or record["text"]
            error = float(record["error_rate"] if "error_rate" in record else record["error"])
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{path}:{lineno}: expected {{'instruction', 'error_rate'}}") from None
        if not (0.0 <= error <= 1.0):
            raise DataError(f"{path}:{lineno}: error_rate {error} outside [0, 1]")
        rows.append({"text": text, "error": error})
    if len(rows) < 2:
        raise DataError(f"{path}: a grid needs at least 2 evaluated instructions, found {len(rows)}")
    return rows


def load_evaluations(path: str | Path) -> list[dict]:
    """Hyperband evaluations written by an earlier run (hyperband_evals.json): [{"text", "error", ...}]."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"--hyperband-evals-path {path} does not exist")
    try:
        data = json.loads(path.read_text())
        rows = data["instructions"] if isinstance(data, dict) else data
        rows = [{"text": r["text"], "error": float(r["error"]), **r} for r in rows if r.get("error") is not None]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise DataError(f"{path}: expected {{'instructions': [{{'text', 'error'}}]}}") from None
    if len(rows) < 2:
        raise DataError(f"{path}: needs at least 2 evaluated instructions, found {len(rows)}")
    return rows


class InstructionRegistry:
    """Ids for instruction texts, so evaluations are cached by (instruction_id, fidelity)."""

    def __init__(self, texts: list[str]):
        self.texts: list[str] = []
        self.ids: dict[str, int] = {}
        for text in texts:
            self.add(text)

    def add(self, text: str) -> int:
        if text not in self.ids:
            self.ids[text] = len(self.texts)
            self.texts.append(text)
        return self.ids[text]


def plot_progress(run: Run, hyperband_history: list[dict], inference_history: list[dict],
                  filename: str = "lipo_progress.png"):
    """Best validation error vs LLM calls: Hyperband stages, then InvBO iterations."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    hb = [(h["llm_calls"], h["best_error"]) for h in hyperband_history if h["best_error"] is not None]
    if hb:
        ax.step(*zip(*hb, strict=True), where="post", label="Hyperband (+BO)", lw=1.6)
    inf = [(h["llm_calls"], h["best_error"]) for h in inference_history]
    if inf:
        ax.step(*zip(*inf, strict=True), where="post", label="InvBO inference", lw=1.6)
        ax.scatter([h["llm_calls"] for h in inference_history], [h["error"] for h in inference_history], s=14,
                   c="tab:red", label="InvBO proposals", zorder=3)
    ax.set_xlabel("LLM calls (questions answered)")
    ax.set_ylabel("best validation error")
    ax.grid(alpha=0.3)
    ax.legend()
    return run.save_figure(fig, filename)


def run_lipo(config: LIPOConfig, run: Run, mode: str = "standard", quiet: bool = False,
             load_grid_path: str | None = None, hyperband_evals_path: str | None = None, data_dir: str | None = None,
             encoder: GTRInstructionEncoder | None = None) -> dict[str, Any]:
    """Run the pipeline; writes result.json (the seed's format), metrics.jsonl, checkpoints and plots."""
    if mode not in MODES:
        raise DataError(f"unknown mode {mode!r}; expected one of {MODES}")
    torch.manual_seed(config.seed)
    started = time.strftime("%Y%m%d_%H%M%S")
    evaluator = build_task_evaluator(config, run.path / "llm_cache.jsonl", data_dir)
    writer = build_writer_client(config, run.path / "ape_llm_cache.jsonl")

    # Phase 1: instructions (APE, a grid or earlier evaluations) and their embeddings
    preloaded: list[dict] = []
    if mode == "load_grid":
        if not load_grid_path:
            raise DataError("mode load_grid needs --load-grid FILE.jsonl")
        preloaded = load_grid(load_grid_path)
        pool = [r["text"] for r in preloaded]
    elif mode == "skip_hbbops":
        if not hyperband_evals_path:
            raise DataError("--skip-hbbops needs --hyperband-evals-path (hyperband_evals.json of an earlier run)")
        preloaded = load_evaluations(hyperband_evals_path)
        pool = [r["text"] for r in preloaded]
    else:
        cache_path = Path(config.ape_cache_path) if config.ape_cache_path else run.path / "ape_instructions.json"
        ape = APEGenerator(writer, config.ape_num_instructions, config.ape_batch_size, config.ape_max_tokens,
                           config.ape_max_length, cache_path, seed=config.seed)
        pool = [item["text"] for item in ape.generate(quiet=quiet)]
    encoder = encoder or GTRInstructionEncoder(config.encoder_model)
    embeddings = encoder.encode_batch_tensor(pool)  # (N, E)
    if embeddings.shape[1] != config.embedding_dim:
        log.info("embedding_dim %d -> %d (from %s)", config.embedding_dim, embeddings.shape[1], config.encoder_model)
        config = config.replace(embedding_dim=int(embeddings.shape[1]))
    run.write_config({**config.to_dict(), "mode": mode})

    # Phase 2: VAE
    torch.manual_seed(config.seed)  # its initialisation too: a run is reproducible
    vae = InstructionVAE(config)
    vae_training = train_vae(vae, embeddings, config, run=run, quiet=quiet)
    quality = vae_quality_metrics(vae, embeddings)
    vae.save(run.checkpoints_dir / "vae", metadata={"vae_training": vae_training, "quality": quality})
    with torch.no_grad():
        latents = vae.encode_mu(embeddings).double()  # (N, latent)
    # the GP's inputs: the latents (the seed) or the embeddings themselves (config.gp_input)
    gp_features = embeddings.double() if config.gp_input == "embedding" else latents  # (N, D)
    gp_dim = int(gp_features.shape[1])

    # Phase 3: Hyperband (or the loaded evaluations)
    registry = InstructionRegistry(pool)
    cache = EvaluationCache(lambda i, start, stop: evaluator.evaluate_range(registry.texts[i], start, stop))
    nvalid = config.validation_size
    adapter_model = VAEWithAdapter(vae, config.gp_latent_dim)
    hyperband_section: dict[str, Any] = {}
    hyperband_history: list[dict] = []
    if mode in ("standard", "hyperband_only"):
        hb = LIPOHyperband(gp_features, cache.evaluate_range, nvalid, config.bmin, config.eta,
                           config.random_interleaving_prob, config.min_fidelity_pct, config.for_hyperband_gp(),
                           cache=cache, seed=config.seed, gp_fidelity=config.gp_fidelity,
                           gp_factory=lambda: GPWithEI(gp_dim, config.gp_latent_dim, seed=config.seed,
                                                       **config.gp_options()))
        result = hb.run(quiet=quiet)
        hyperband_history = result.history
        for step, h in enumerate(hyperband_history):
            run.log(step, hyperband_llm_calls=h["llm_calls"], hyperband_best_error=h["best_error"])
        hyperband_section = {"best_instruction": pool[result.best_id], "best_error": result.best_error,
                             "llm_calls": result.llm_calls, "instructions_evaluated": len({i for i, _ in cache.errors})}
        evaluations = []
        for i in sorted({i for i, _ in cache.errors}):
            fidelity, error = cache.highest(i)
            evaluations.append({"text": pool[i], "error": error, "fidelity": fidelity})
        (run.path / "hyperband_evals.json").write_text(json.dumps({"nvalid": nvalid, "instructions": evaluations},
                                                                  indent=1))
        observed_ids, observed_errors, observed_var = hb.gp_data()
    else:
        rows = sorted(preloaded, key=lambda r: r["error"])
        if mode == "load_grid":
            rows = rows[: config.top_k]
        observed_ids = [registry.ids[r["text"]] for r in rows]
        observed_errors = [r["error"] for r in rows]
        observed_var = [0.0] * len(rows)
        for i, e in zip(observed_ids, observed_errors, strict=True):
            cache.errors[(i, nvalid)] = e  # loaded results count as full-fidelity evaluations
        hyperband_section = {"best_instruction": rows[0]["text"], "best_error": rows[0]["error"], "llm_calls": 0,
                             "loaded_from": str(load_grid_path or hyperband_evals_path)}

    output: dict[str, Any] = {
        "timestamp": started, "vae_quality_metrics": quality,
        "config": {"mode": mode, **config.to_dict()}, "vae_training": vae_training, "hyperband": hyperband_section,
    }
    inference_history: list[dict] = []
    if mode != "hyperband_only":
        # Phase 4: GP on what Hyperband's GP saw (hb.gp_data: the high-fidelity data, or every fidelity), then InvBO
        adapter = adapter_model.adapter if config.gp_input == "latent" else None  # None: a fresh E -> k adapter
        gp = GPWithEI(gp_dim, config.gp_latent_dim, adapter=adapter, seed=config.seed, **config.gp_options())
        gp.set_data(gp_features[observed_ids], torch.tensor(observed_errors), torch.tensor(observed_var))
        gp.fit(config.gp_epochs, config.gp_lr, config.gp_patience)
        inverter = make_inverter(config.inverter, pool, embeddings, encoder, config.inversion_rewrite,
                                 config.inversion_neighbours, client=writer, model_type=config.vec2text_model,
                                 beam_width=config.vec2text_beam)
        calls_before = cache.calls

        def evaluate_text(text: str) -> float:
            return cache.evaluate(registry.add(text), nvalid)

        # what counts as evaluated (and as the incumbent): the full-fidelity errors, whatever the GP was trained on
        known = {registry.texts[i]: e for (i, f), e in cache.errors.items() if f >= nvalid}
        inference = LIPOInference(vae, gp, encoder, inverter, evaluate_text, config, known=known,
                                  calls=lambda: cache.calls, pool=pool, pool_features=gp_features,
                                  evaluate_at=lambda text, questions: cache.evaluate(registry.add(text), questions))
        offset = len(hyperband_history)

        def log_step(record: dict) -> None:
            run.log(offset + record["iteration"], inference_error=record["error"],
                    inference_best_error=record["best_error"], inference_gap=record["gap"],
                    inference_llm_calls=record["llm_calls"])

        inference_result = inference.run(quiet=quiet, on_step=log_step)
        inference_history = inference_result["history"]
        start_best = hyperband_section["best_error"]
        output["inference"] = {
            "best_instruction": inference_result["best_instruction"], "best_error": inference_result["best_error"],
            "improvement": start_best - inference_result["best_error"], "iterations": inference_result["iterations"],
            "llm_calls": cache.calls - calls_before, "history": inference_history,
        }
    # final test-set check of the best instructions (separate LLM calls, reported apart)
    if config.test_size > 0 and evaluator.test:
        best_texts = {"hyperband": hyperband_section["best_instruction"]}
        if "inference" in output:
            best_texts["inference"] = output["inference"]["best_instruction"]
        output["test_error"] = {k: evaluator.evaluate_test(t) for k, t in best_texts.items()}
    output["total_llm_calls"] = cache.calls
    output["llm_requests_made"] = evaluator.client.stats.calls + writer.stats.calls
    output["task_model"] = {"backend": config.task_backend, "model": config.task_model,
                            "simulated": config.task_backend == "simulated"}
    text = json.dumps(output, indent=2, default=float)
    (run.path / f"result_{started}.json").write_text(text)
    (run.path / "result.json").write_text(text)
    plots = [plot_progress(run, hyperband_history, inference_history)]
    vae_plot = run.plot_metrics(["vae_recon_loss", "vae_kl_loss"], "vae_loss.png", title="InstructionVAE")
    if vae_plot is not None:
        plots.append(vae_plot)
    output["plots"] = [str(p) for p in plots]
    return output
