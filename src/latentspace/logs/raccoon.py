"""Raccoon continual learning (ltt.md, "Continuous Learning with Raccoon"): SDE latent dynamics, a
quality-prioritised experience-replay memory with a size cap, and the continuous update rule.

- `LatentSDE`: dz = f(z, t) dt + sigma(z, t) dW on t in [0, 1], integrated by `core.dynamics.integrate`
  (Euler-Maruyama while learning, the drift alone when classifying, so predictions are deterministic).
- `RaccoonMemory`: experiences (token ids, label, quality); `sample` draws proportionally to quality**alpha;
  at the cap the lowest-quality experience of the most frequent label is evicted, so old classes and
  systems keep their share. Saved as one safetensors file written atomically (never a pickle).
- `RaccoonLearner.continuous_update`: `update_steps` small optimiser steps on the new data, each mixed with
  a fresh draw of replayed memories (`replay_ratio` of the batch), with the replayed logits kept close to
  those stored (`distill_weight`, dark experience replay, Buzzega et al. 2020) where the stored logits gave
  the right label: a stored answer that was wrong is only a pull back toward the old mistake, so those
  memories are replayed by their label alone. `replay_ratio=0` is naive fine-tuning (the same steps without
  replay), `frozen=True` never updates.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes
from torch import nn

from ..core.data import atomic_write
from ..core.dynamics import integrate
from ..core.errors import CheckpointError


class LatentSDE(nn.Module):
    """Latent SDE dz = drift(z, t) dt + diffusion(z, t) dW over t in [0, 1] (diagonal noise).

    Args:
        latent_dim: D.
        hidden: width of the drift and diffusion MLPs.
        sigma: scale of the diffusion (its MLP output is squashed into (0, sigma)).
        steps: Euler(-Maruyama) steps over [0, 1].
    """

    def __init__(self, latent_dim: int, hidden: int = 64, sigma: float = 0.1, steps: int = 4):
        super().__init__()
        self.sigma = sigma
        self.steps = steps
        self.drift_net = nn.Sequential(nn.Linear(latent_dim + 1, hidden), nn.SiLU(), nn.Linear(hidden, latent_dim))
        self.diffusion_net = nn.Sequential(nn.Linear(latent_dim + 1, hidden), nn.SiLU(), nn.Linear(hidden, latent_dim))

    def _with_time(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return torch.cat([z, t.reshape(1, 1).expand(z.shape[0], 1).to(z)], dim=-1)  # (B, D + 1)

    def drift(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """f(z, t): (B, D) -> (B, D)."""
        return self.drift_net(self._with_time(t, z))

    def diffusion(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """sigma(z, t): (B, D) -> (B, D), in (0, sigma)."""
        return self.sigma * torch.sigmoid(self.diffusion_net(self._with_time(t, z)))

    def forward(self, z0: torch.Tensor, stochastic: bool = False) -> torch.Tensor:
        """Evolve z0 (B, D) from t = 0 to 1; returns z1 (B, D). Stochastic: Euler-Maruyama; else the drift."""
        times = torch.tensor([0.0, 1.0], dtype=z0.dtype)
        dt = 1.0 / self.steps
        if stochastic and self.sigma > 0:
            return integrate(self.drift, z0, times, method="euler", diffusion=self.diffusion, dt=dt)[-1]
        return integrate(self.drift, z0, times, method="euler", dt=dt)[-1]

    def forward_reference(self, z0: torch.Tensor) -> torch.Tensor:
        """The deterministic path by a hand-written Euler loop (reference for `forward(stochastic=False)`)."""
        z = z0
        dt = 1.0 / self.steps
        for i in range(self.steps):
            t = torch.tensor(i * dt)
            z = z + dt * self.drift(t, z)
        return z


class RaccoonMemory:
    """Experience replay with quality-prioritised sampling and a size cap.

    Experiences are padded token ids (N, T) int32, labels (N,) int64, qualities (N,) float32 and the logits
    (N, C) the model gave them when stored (replayed as a distillation target, as in dark experience replay).

    Args:
        max_size: the cap.
        max_len: T, ids per experience.
        alpha: sampling priority exponent (0: uniform, 1: proportional to quality).
    """

    FORMAT = 1

    def __init__(self, max_size: int, max_len: int, alpha: float = 1.0):
        if max_size < 1:
            raise ValueError("memory max_size must be >= 1")
        self.max_size = max_size
        self.max_len = max_len
        self.alpha = alpha
        self.tokens = torch.zeros(0, max_len, dtype=torch.int32)  # (N, T)
        self.labels = torch.zeros(0, dtype=torch.long)  # (N,)
        self.quality = torch.zeros(0, dtype=torch.float32)  # (N,)
        self.logits = torch.zeros(0, 0, dtype=torch.float32)  # (N, C)
        self.added = 0

    def __len__(self) -> int:
        return self.labels.shape[0]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.tokens, self.labels, self.quality, self.logits))

    def add(self, tokens: torch.Tensor, labels: torch.Tensor, quality: torch.Tensor, logits: torch.Tensor) -> None:
        """Add experiences: tokens (B, <=T) ids, labels (B,), quality (B,) > 0, logits (B, C); evicts past the cap."""
        padded = torch.zeros(tokens.shape[0], self.max_len, dtype=torch.int32)
        width = min(self.max_len, tokens.shape[1])
        padded[:, :width] = tokens[:, :width].to(torch.int32)
        self.tokens = torch.cat([self.tokens, padded])
        self.labels = torch.cat([self.labels, labels.to(torch.long)])
        self.quality = torch.cat([self.quality, quality.to(torch.float32).clamp_min(1e-6)])
        if self.logits.numel() == 0:
            self.logits = torch.zeros(0, logits.shape[1])
        self.logits = torch.cat([self.logits, logits.detach().to(torch.float32)])
        self.added += int(labels.shape[0])
        overflow = len(self) - self.max_size
        if overflow > 0:
            self._evict(overflow)

    def _evict(self, count: int) -> None:
        """Drop `count` experiences: each time the lowest-quality one of the most frequent label."""
        keep = torch.ones(len(self), dtype=torch.bool)
        counts = torch.bincount(self.labels, minlength=int(self.labels.max()) + 1)
        for _ in range(count):
            label = int(counts.argmax())
            candidates = torch.nonzero(keep & (self.labels == label)).squeeze(1)
            victim = candidates[self.quality[candidates].argmin()]
            keep[victim] = False
            counts[label] -= 1
        self.tokens, self.labels, self.quality = self.tokens[keep], self.labels[keep], self.quality[keep]
        self.logits = self.logits[keep]

    def sample(self, n: int, generator: torch.Generator | None = None):
        """Draw n experiences with probability proportional to quality**alpha.

        Returns:
            tokens (n, T), labels (n,), stored logits (n, C).
        """
        if len(self) == 0 or n <= 0:
            return (torch.zeros(0, self.max_len, dtype=torch.long), torch.zeros(0, dtype=torch.long),
                    torch.zeros(0, self.logits.shape[1] if self.logits.dim() == 2 else 0))
        weights = self.quality.pow(self.alpha)
        index = torch.multinomial(weights, n, replacement=n > len(self), generator=generator)
        return self.tokens[index].long(), self.labels[index], self.logits[index]

    def to_bytes(self) -> bytes:
        meta = {"format": str(self.FORMAT), "kind": "latentspace.logs.RaccoonMemory",
                "config": json.dumps({"max_size": self.max_size, "max_len": self.max_len, "alpha": self.alpha,
                                      "added": self.added})}
        tensors = {"tokens": self.tokens.contiguous(), "labels": self.labels.contiguous(),
                   "quality": self.quality.contiguous(), "logits": self.logits.contiguous()}
        return save_safetensors_bytes(tensors, metadata=meta)

    def save(self, path: str | Path) -> Path:
        """Write the memory to one safetensors file atomically (a crash leaves the previous file intact)."""
        path = Path(path)
        atomic_write(path, self.to_bytes())
        return path

    @classmethod
    def load(cls, path: str | Path) -> RaccoonMemory:
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"replay memory {path} does not exist")
        data = path.read_bytes()
        try:
            tensors = load_safetensors_bytes(data)
            header_len = int.from_bytes(data[:8], "little")
            meta = json.loads(data[8: 8 + header_len])["__metadata__"]
            if meta.get("kind") != "latentspace.logs.RaccoonMemory":
                raise CheckpointError(f"{path} is a safetensors file but not a Raccoon replay memory")
            config = json.loads(meta["config"])
        except (SafetensorError, ValueError, KeyError, json.JSONDecodeError) as err:
            raise CheckpointError(f"{path} is truncated or not a replay memory file ({err})") from None
        memory = cls(int(config["max_size"]), int(config["max_len"]), float(config["alpha"]))
        memory.tokens, memory.labels, memory.quality = tensors["tokens"], tensors["labels"], tensors["quality"]
        memory.logits = tensors["logits"]
        memory.added = int(config["added"])
        return memory


class RaccoonLearner:
    """The continuous update rule around a `LogClassifier` and its `RaccoonMemory`.

    Args:
        model: a LogClassifier (has `tokenizer`, `logits(tokens, mask, stochastic)`, `config`).
        memory: the replay memory (a new one from the model's config when None).
        replay_ratio: share of each update batch drawn from memory (0 = naive fine-tuning).
        lr: the small learning rate of continual updates.
        steps: optimiser steps per continuous update.
        frozen: never update (the frozen-model baseline).
    """

    def __init__(self, model, memory: RaccoonMemory | None = None, replay_ratio: float | None = None,
                 lr: float | None = None, frozen: bool = False, seed: int = 0, steps: int | None = None):
        config = model.config
        self.model = model
        self.memory = memory or RaccoonMemory(config.memory_size, config.max_len, config.quality_alpha)
        self.replay_ratio = config.replay_ratio if replay_ratio is None else replay_ratio
        self.lr = config.update_lr if lr is None else lr
        self.steps = config.update_steps if steps is None else steps
        if self.steps < 1:
            raise ValueError(f"RaccoonLearner: steps must be >= 1, got {self.steps}")
        self.frozen = frozen
        self.optimizer = torch.optim.Adam(model.parameters(), lr=self.lr)
        self.generator = torch.Generator().manual_seed(seed)
        self.distill_weight = config.distill_weight
        self.updates = 0

    @torch.no_grad()
    def quality_of(self, tokens: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor):
        """Quality of new experiences, 0.2 + (1 - p(true label)), so what the model still gets wrong is
        replayed more (prioritised replay); returns quality (B,) and the model's logits (B, C)."""
        was_training = self.model.training
        self.model.eval()
        logits = self.model.logits(tokens, mask)  # (B, C)
        self.model.train(was_training)
        return 0.2 + (1.0 - logits.softmax(-1).gather(1, labels[:, None]).squeeze(1)), logits

    def continuous_update(self, tokens: torch.Tensor, labels: torch.Tensor) -> float:
        """Learn from new labelled experiences tokens (B, T), labels (B,): `steps` small steps, each on the new
        lines mixed with a fresh replay draw, then store them in memory. Returns the last loss (0.0 when frozen)."""
        if self.frozen or tokens.shape[0] == 0:
            return 0.0
        pad = self.model.tokenizer.PAD
        new_mask = tokens != pad
        quality, _ = self.quality_of(tokens, new_mask, labels)
        n_replay = 0
        if self.replay_ratio > 0 and len(self.memory):
            n_replay = max(1, round(tokens.shape[0] * self.replay_ratio / (1.0 - self.replay_ratio)))
        self.model.train()
        for _ in range(self.steps):
            loss = self._step(tokens, labels, n_replay)
        self.model.eval()
        self.model.invalidate_cache()
        if self.replay_ratio > 0:
            # store the logits of the updated model: replaying the pre-update ones would pull it back to
            # its old (wrong) answers on exactly the lines it has just been taught
            with torch.no_grad():
                new_logits = self.model.logits(tokens, new_mask)  # (B, C)
            self.memory.add(tokens, labels, quality, new_logits)
        self.updates += 1
        return loss

    def _step(self, tokens: torch.Tensor, labels: torch.Tensor, n_replay: int) -> float:
        """One optimiser step on new tokens (B, T) + n_replay memories: cross-entropy + masked logit distillation."""
        pad = self.model.tokenizer.PAD
        old_tokens, old_labels, old_logits = self.memory.sample(n_replay, self.generator)
        width = max(tokens.shape[1], old_tokens.shape[1] if n_replay else 0)
        batch = torch.zeros(tokens.shape[0] + old_tokens.shape[0], width, dtype=torch.long)  # (B + R, T)
        batch[: tokens.shape[0], : tokens.shape[1]] = tokens
        if n_replay:
            batch[tokens.shape[0]:, : old_tokens.shape[1]] = old_tokens
        batch_labels = torch.cat([labels, old_labels])
        mask = batch != pad
        keep = mask.any(0)
        batch, mask = batch[:, keep], mask[:, keep]
        logits = self.model.logits(batch, mask, stochastic=True)  # (B + R, C)
        loss = F.cross_entropy(logits, batch_labels)
        if n_replay and self.distill_weight > 0:
            right = (old_logits.argmax(-1) == old_labels).unsqueeze(-1)  # (R, 1): stored answer was right
            squared = (logits[tokens.shape[0]:] - old_logits).pow(2) * right  # (R, C)
            loss = loss + self.distill_weight * squared.sum() / (right.sum() * old_logits.shape[1]).clamp_min(1)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        return float(loss.detach())

    def save(self, directory: str | Path) -> Path:
        """Persist model, memory and counters so a restart continues where this one stopped."""
        directory = Path(directory)
        self.model.save(directory / "model", metadata={"updates": self.updates})
        self.memory.save(directory / "memory.safetensors")
        atomic_write(directory / "learner.json", json.dumps(
            {"updates": self.updates, "replay_ratio": self.replay_ratio, "lr": self.lr, "frozen": self.frozen,
             "steps": self.steps}))
        return directory

    @classmethod
    def load(cls, directory: str | Path, model_class) -> RaccoonLearner:
        directory = Path(directory)
        model = model_class.load(directory / "model")
        memory = RaccoonMemory.load(directory / "memory.safetensors")
        try:
            state = json.loads((directory / "learner.json").read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise CheckpointError(f"{directory}/learner.json is missing or not JSON ({err})") from None
        learner = cls(model, memory, replay_ratio=state["replay_ratio"], lr=state["lr"], frozen=state["frozen"],
                      steps=state.get("steps"))
        learner.updates = int(state["updates"])
        return learner
