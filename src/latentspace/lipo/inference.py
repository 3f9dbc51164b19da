"""`LIPOInference`: the InvBO loop: qLogEI in the VAE latent -> decode -> invert to text -> re-invert -> evaluate.

One iteration (the seed's "Optimalizační tok"):
1. fit the GP on (latent, error) of every evaluated instruction; z_opt = argmax qLogEI in the 20%-margin box;
2. embedding = decoder(z_opt); text = inverter(embedding);
3. inversion loop: z_inv = argmin_z 1 - cos(decoder(z), encoder(text)) (Adam); gap = 1 - cos(decoder(z_opt),
   decoder(z_inv)); stop when gap <= gap_threshold, else re-decode from z_inv and re-invert (max iterations);
4. re-encode the text, predict its error with the GP, evaluate it on the validation set (LLM calls), add
   the observation and retrain the GP (gp_retrain_* settings).

With `gp_input="embedding"` the GP models the error on sentence embeddings: step 1 maximises
qLogEI(GP(decoder(z))) over z in the box around the observed instructions' latents (the seed's CompositeLogEI),
and step 4 predicts from and adds the re-encoded embedding itself. With `inversion_select="acquisition"` the
inverter's `inversion_neighbours` candidate texts for the last decoded embedding are re-encoded and the
unevaluated one of highest LogEI is evaluated (instead of the closest one, which may already be known). With
`inversion_select="union"` every not yet evaluated pool instruction joins those candidates: the snap from the
continuous optimum back to text then never evaluates a text the acquisition ranks below an available one (the
nearest neighbours of decoder(z_opt) are often poor by the GP's own LogEI), and inverted texts that score higher
than every pool instruction still win. Candidates are ranked by LogEI (`invbo_rank="log_ei"`, the default) or by the
GP's predicted error (`invbo_rank="mean"`): the InvBO step then evaluates the candidate most likely to beat the
incumbent, and exploration is left to Hyperband's BO proposals, which are screened at low fidelity.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..core.progress import progress_bar
from .config import LIPOConfig
from .encoder import GTRInstructionEncoder
from .gp import GPWithEI
from .inversion import invert_latent
from .vae import InstructionVAE

log = logging.getLogger("latentspace")


class LIPOInference:
    """InvBO inference over a trained VAE and a GP on its latents.

    Args:
        vae: the trained (frozen) InstructionVAE.
        gp: a GPWithEI on latent_dim inputs, holding the Hyperband observations.
        encoder: re-encodes texts.
        inverter: object with `invert(embeddings (B, E)) -> list[str]`.
        evaluate: fn(text) -> validation error (the LLM evaluation), or None to trust the GP prediction.
        config: LIPOConfig (iterations, acquisition, inversion and retrain settings).
        known: text -> error of instructions already evaluated (skips repeated evaluations).
        pool: instruction texts that `inversion_select="union"` adds to the inversion candidates (default: the
            inverter's pool, if it has one).
        pool_features: (N, D) GP inputs of `pool` (default: re-encoded on first use).
        evaluate_at: fn(text, questions) -> error on the first `questions` validation questions; with
            config.invbo_race_alpha > 0 proposals are raced (hyperband.race_to_full) through it.
    """

    def __init__(self, vae: InstructionVAE, gp: GPWithEI, encoder: GTRInstructionEncoder, inverter,
                 evaluate: Callable[[str], float] | None, config: LIPOConfig, known: dict[str, float] | None = None,
                 calls: Callable[[], int] | None = None, pool: list[str] | None = None,
                 pool_features: torch.Tensor | None = None,
                 evaluate_at: Callable[[str, int], float] | None = None):
        self.vae, self.gp, self.encoder, self.inverter = vae, gp, encoder, inverter
        self.evaluate = evaluate
        self.config = config
        self.known = dict(known or {})
        self.calls = calls or (lambda: 0)
        self.history: list[dict] = []
        self.evaluate_at = evaluate_at
        self.screened: dict[str, float] = {}  # raced out below full fidelity: text -> low-fidelity error
        self.pool = list(pool) if pool is not None else list(getattr(inverter, "pool", []))
        if pool_features is not None and len(pool_features) != len(self.pool):
            raise ValueError(f"pool_features has {len(pool_features)} rows for {len(self.pool)} pool texts")
        self._pool_features = None if pool_features is None else torch.as_tensor(pool_features, dtype=torch.float64)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z.float())

    def latent_of(self, text: str) -> torch.Tensor:
        """Re-encode a text: encoder -> VAE posterior mean, (latent_dim,)."""
        with torch.no_grad():
            return self.vae.encode_mu(self.encoder.encode_batch_tensor([text]))[0]

    def gp_input_of(self, text: str) -> torch.Tensor:
        """What the GP sees of a text: its VAE latent (latent_dim,) or its embedding (E,) (config.gp_input)."""
        if self.config.gp_input == "embedding":
            return self.encoder.encode_batch_tensor([text])[0].double()
        return self.latent_of(text).double()

    def gp_inputs_of(self, texts: list[str]) -> torch.Tensor:
        """What the GP sees of several texts: (B, D) embeddings or VAE latents (config.gp_input)."""
        with torch.no_grad():
            emb = self.encoder.encode_batch_tensor(texts)  # (B, E)
            return emb.double() if self.config.gp_input == "embedding" else self.vae.encode_mu(emb).double()

    def pool_features(self) -> torch.Tensor:
        """(N, D) GP inputs of the pool (computed once)."""
        if self._pool_features is None:
            self._pool_features = (self.gp_inputs_of(self.pool) if self.pool
                                   else torch.empty(0, self.gp.input_dim, dtype=torch.float64))
        return self._pool_features

    def select_candidate(self, embedding: torch.Tensor, fallback: str) -> str:
        """Of the inverter's `inversion_neighbours` candidates for a target embedding (E,), the not yet evaluated
        one of highest LogEI after re-encoding (every candidate is a text, so it is scored where it really lies);
        with inversion_select="union" every unevaluated pool instruction is a candidate too."""
        return self.select_with_source(embedding, fallback)[0]

    def score(self, features: torch.Tensor) -> torch.Tensor:
        """(B,) how the InvBO step ranks candidates of GP inputs (B, D), higher is better: their LogEI
        (invbo_rank="log_ei") or minus their predicted error (invbo_rank="mean")."""
        with torch.no_grad():
            if self.config.invbo_rank == "mean":
                return -self.gp.predict(features)[0]
            return self.gp.log_ei(features)

    def select_with_source(self, embedding: torch.Tensor, fallback: str) -> tuple[str, str]:
        """(text, source) of `select_candidate`; source: "inversion", "pool" or "fallback"."""
        candidates = self.inverter.candidates(embedding, k=self.config.inversion_neighbours)
        fresh = list(dict.fromkeys(c for c in candidates if c not in self.known and c not in self.screened))
        best: tuple[float, str, str] | None = None
        if fresh:
            scores = self.score(self.gp_inputs_of(fresh))
            k = int(scores.argmax())
            best = (float(scores[k]), fresh[k], "inversion")
        if self.config.inversion_select == "union":
            seen = set(fresh) | set(self.screened)
            rows = [i for i, t in enumerate(self.pool) if t not in self.known and t not in seen]
            if rows:
                scores = self.score(self.pool_features()[rows])
                k = int(scores.argmax())
                if best is None or float(scores[k]) > best[0]:
                    best = (float(scores[k]), self.pool[rows[k]], "pool")
        return (fallback, "fallback") if best is None else (best[1], best[2])

    def step(self, iteration: int) -> dict:
        cfg = self.config
        search = {}
        if cfg.gp_input == "embedding":  # qLogEI(GP(decoder(z))) over the latent box of the observed instructions
            with torch.no_grad():
                observed = self.vae.encode_mu(self.gp.X.float()).double()  # (N, latent)
            search = {"decode": lambda z: self.decode(z).to(z.dtype), "search_points": observed}
        z_opt, log_ei = self.gp.optimize(cfg.num_restarts, cfg.raw_samples, cfg.latent_margin, cfg.acq_maxiter,
                                         seed=cfg.seed + iteration, **search)
        with torch.no_grad():
            target = self.decode(z_opt.unsqueeze(0))  # (1, E)
        text = self.inverter.invert(target)[0]
        last_target = target  # the embedding the text was inverted from
        gap, inversion_iters = float("nan"), 0
        if cfg.use_inversion:
            for attempt in range(1, cfg.max_inversion_iters + 1):
                inversion_iters = attempt
                text_emb = self.encoder.encode_batch_tensor([text])  # (1, E)
                z_inv, _ = invert_latent(self.decode, z_opt.float().unsqueeze(0), text_emb, cfg.inversion_n_steps,
                                         cfg.inversion_lr, cfg.inversion_convergence_threshold)
                with torch.no_grad():
                    gap = 1.0 - float(F.cosine_similarity(target, self.decode(z_inv), dim=-1))
                if gap <= cfg.gap_threshold:
                    break
                with torch.no_grad():
                    redecoded = self.decode(z_inv)
                text = self.inverter.invert(redecoded)[0]
                last_target = redecoded
        source = "inversion"
        if cfg.inversion_select in ("acquisition", "union") and hasattr(self.inverter, "candidates"):
            text, source = self.select_with_source(last_target[0], text)
        z_text = self.gp_input_of(text)
        pred_mean, pred_std = self.gp.predict(z_text.unsqueeze(0))
        duplicate = text in self.known or text in self.screened
        raced_out, fidelity = False, cfg.validation_size
        if duplicate:
            error = self.known.get(text, self.screened.get(text))
        elif cfg.invbo_race_alpha > 0 and self.evaluate_at is not None and self.known:
            from .hyperband import race_fidelities, race_to_full

            error, fidelity, raced_out = race_to_full(
                lambda f: self.evaluate_at(text, f), cfg.validation_size, min(self.known.values()),
                race_fidelities(cfg.validation_size, cfg.bmin, cfg.eta, cfg.min_fidelity_pct), cfg.invbo_race_alpha)
        elif self.evaluate is not None:
            error = float(self.evaluate(text))
        else:
            error = float(pred_mean)
        if raced_out:  # significantly worse than the incumbent at low fidelity: not a GP observation (seed rule),
            self.screened[text] = error  # unless the GP takes noisy low-fidelity observations (gp_fidelity="all")
            if cfg.gp_fidelity == "all":
                from .hyperband import binomial_error_variance

                var = binomial_error_variance(torch.tensor([error]), torch.tensor([fidelity]), cfg.validation_size)
                self.gp.add_observation(z_text, error, float(var))
                self.gp.fit(cfg.gp_retrain_epochs, cfg.gp_retrain_lr, cfg.gp_retrain_patience)
        elif not duplicate:
            self.known[text] = error
            self.gp.add_observation(z_text, error)
            self.gp.fit(cfg.gp_retrain_epochs, cfg.gp_retrain_lr, cfg.gp_retrain_patience)
        record = {"iteration": iteration, "instruction": text, "error": error, "predicted_error": float(pred_mean),
                  "predicted_std": float(pred_std), "log_ei": log_ei, "gap": gap, "inversion_iters": inversion_iters,
                  "duplicate": duplicate, "evaluated": self.evaluate is not None and not duplicate, "source": source,
                  "fidelity": fidelity, "raced_out": raced_out,
                  "llm_calls": self.calls(), "best_error": min(self.known.values())}
        self.history.append(record)
        return record

    def run(self, iterations: int | None = None, quiet: bool = True,
            on_step: Callable[[dict], None] | None = None) -> dict:
        """Run the InvBO iterations; returns {"best_instruction", "best_error", "iterations", "history"}."""
        iterations = self.config.iterations if iterations is None else iterations
        if self.gp.model is None:
            self.gp.fit(self.config.gp_epochs, self.config.gp_lr, self.config.gp_patience)
        with progress_bar(quiet, unit="iter") as bar:
            task = bar.add_task("InvBO", total=iterations, info="")
            for iteration in range(iterations):
                record = self.step(iteration)
                if on_step is not None:
                    on_step(record)
                bar.update(task, advance=1, info=f"err {record['error']:.3f} best {record['best_error']:.3f}")
        best_text = min(self.known, key=self.known.get)
        return {"best_instruction": best_text, "best_error": self.known[best_text], "iterations": iterations,
                "history": self.history}
