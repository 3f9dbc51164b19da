"""Tasks: the path-star graph task (Bachmann & Nagarajan, 2024) and language modelling on Python's own source.

Path-star G(degree, length): a start node with `degree` arms of `length` nodes each; the prompt lists the
edges (shuffled), the start and the goal (the last node of one arm); the answer is the path from start to
goal. Teacher forcing teaches the easy "follow the edge from the previous node" rule but not the choice of
arm, so greedy decoding picks the right arm about 1/degree of the time; the outcome is verifiable, which
gives the value head its targets and the search its terminal reward.
"""

from __future__ import annotations

import dataclasses
import random
import string
import sysconfig
from pathlib import Path

import torch

from ..core.errors import DataError
from .tokenizer import tokenizer_from_json, tokenizer_to_json

ALPHABET = string.ascii_letters  # node labels, one byte each


@dataclasses.dataclass
class PathStarTask:
    degree: int = 2
    length: int = 4

    def __post_init__(self):
        if 1 + self.degree * self.length > len(ALPHABET):
            raise DataError(f"path-star G({self.degree}, {self.length}) needs more than {len(ALPHABET)} node labels")

    def sample(self, rng: random.Random) -> tuple[str, str]:
        """One graph: (prompt "ab,bc,...|sg=", answer "s...g")."""
        labels = rng.sample(ALPHABET, 1 + self.degree * self.length)
        start = labels[0]
        arms = [labels[1 + i * self.length : 1 + (i + 1) * self.length] for i in range(self.degree)]
        edges = [start + arm[0] for arm in arms]
        edges += [a + b for arm in arms for a, b in zip(arm[:-1], arm[1:], strict=True)]
        rng.shuffle(edges)
        goal_arm = arms[rng.randrange(self.degree)]
        return ",".join(edges) + "|" + start + goal_arm[-1] + "=", start + "".join(goal_arm)

    @staticmethod
    def solve(prompt: str) -> str:
        """The true path of a prompt (by walking the edges back from the goal)."""
        edges, query = prompt.rstrip("=").split("|")
        start, goal = query[0], query[1]
        parent = {e[1]: e[0] for e in edges.split(",")}
        path = [goal]
        while path[-1] != start:
            path.append(parent[path[-1]])
        return "".join(reversed(path))

    def verify(self, prompt: str, completion: str) -> bool:
        return completion == self.solve(prompt)

    def reward_fn(self, model, prompt: str) -> PathStarReward:
        """tokens generated after the prompt -> 1.0 if they spell the true path then <eos>, else 0.0."""
        return PathStarReward(self.solve(prompt), model.eos_id, model.tokenizer)

    def batch(self, model, batch_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forcing batch: tokens (B, T) and a loss mask (B, T-1) on the answer and <eos> only."""
        rng = random.Random(seed)
        rows, masks = [], []
        for _ in range(batch_size):
            prompt, answer = self.sample(rng)
            p, a = model.encode(prompt), model.encode(answer) + [model.eos_id]
            rows.append(p + a)
            masks.append([0] * (len(p) - 1) + [1] * len(a))
        return torch.tensor(rows), torch.tensor(masks, dtype=torch.float32)


def stdlib_corpus(max_bytes: int = 400_000) -> str:
    """Python standard-library source (top-level modules, sorted) up to max_bytes: a real corpus every install has."""
    root = Path(sysconfig.get_paths()["stdlib"])
    parts, total = [], 0
    for path in sorted(root.glob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        parts.append(text)
        total += len(text)
        if total >= max_bytes:
            break
    corpus = "".join(parts)[:max_bytes]
    if len(corpus) < 10_000:
        raise DataError(f"the Python standard library at {root} holds too little source for a corpus")
    return corpus


def split_tokens(ids: list[int], val_frac: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    cut = int(len(ids) * (1 - val_frac))
    return torch.tensor(ids[:cut]), torch.tensor(ids[cut:])


def lm_batch(tokens: torch.Tensor, batch_size: int, seq_len: int, seed: int) -> torch.Tensor:
    """Random windows (B, seq_len + 1) of a token stream, addressed by seed (deterministic resume)."""
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(tokens) - seq_len - 1, (batch_size,), generator=g)
    return torch.stack([tokens[s : s + seq_len + 1] for s in starts.tolist()])


@torch.no_grad()
def perplexity(logits_fn, tokens: torch.Tensor, seq_len: int, max_windows: int = 64, batch_size: int = 16) -> float:
    """exp(mean next-token NLL) over consecutive windows of a token stream; logits_fn (B, T) -> (B, T, V)."""
    n = min(max_windows, (len(tokens) - 1) // seq_len)
    if n < 1:
        raise DataError("the validation split is shorter than one window")
    windows = torch.stack([tokens[i * seq_len : i * seq_len + seq_len + 1] for i in range(n)])
    total, count = 0.0, 0
    for i in range(0, n, batch_size):
        w = windows[i : i + batch_size]
        logits = logits_fn(w[:, :-1]).float()
        targets = w[:, 1:].reshape(-1).to(logits.device)
        total += torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets,
                                                   reduction="sum").item()
        count += w[:, 1:].numel()
    return float(torch.exp(torch.tensor(total / count)))


@torch.no_grad()
def greedy_pathstar(model, task: PathStarTask, prompts: list[str]) -> list[str]:
    """Batched greedy answers (all prompts of one task have one length): prefill, then recurrent steps."""
    tokens = torch.tensor([model.encode(p) for p in prompts])  # (B, T)
    latent, caches = model.prefill(tokens)
    out = []
    for _ in range(task.length + 2):
        token = model.logits(latent).argmax(-1)  # (B,)
        out.append(token)
        latent, caches = model.step(token, caches)
    ids = torch.stack(out, 1).tolist()  # (B, length + 2)
    answers = []
    for row in ids:
        row = row[: row.index(model.eos_id)] if model.eos_id in row else row
        answers.append(model.decode(row))
    return answers


class PathStarReward:
    """The verifier of one path-star prompt: generated tokens -> 1.0 if they decode to `answer` (then <eos>), else 0.0.

    Picklable (it carries its tokenizer as JSON), so a planner process can run it.
    """

    def __init__(self, answer: str, eos_id: int, tokenizer):
        self.answer, self.eos_id, self.tokenizer = answer, eos_id, tokenizer

    def __call__(self, tokens: list[int]) -> float:
        if tokens and tokens[-1] == self.eos_id:
            tokens = tokens[:-1]
        return float(self.tokenizer.decode([int(t) for t in tokens], skip_special_tokens=True) == self.answer)

    def __getstate__(self):
        return {"answer": self.answer, "eos_id": self.eos_id, "tokenizer": tokenizer_to_json(self.tokenizer),
                "size": len(self.tokenizer)}

    def __setstate__(self, state):
        self.answer, self.eos_id = state["answer"], state["eos_id"]
        self.tokenizer = tokenizer_from_json(state["tokenizer"], expected_size=state["size"])


def pathstar_accuracy(model, task: PathStarTask, n: int = 100, seed: int = 12345, planner: str = "off",
                      num_simulations: int | None = None, transition: str | None = None) -> float:
    """Fraction of n fresh graphs answered exactly, greedy (`off`) or with the synchronous planner."""
    from .generate import generate

    rng = random.Random(seed)
    samples = [task.sample(rng) for _ in range(n)]
    if planner == "off":
        answers = greedy_pathstar(model, task, [p for p, _ in samples])
        return sum(a == t for a, (_, t) in zip(answers, samples, strict=True)) / n
    correct = 0
    for prompt, answer in samples:
        gen = generate(model, model.encode(prompt), task.length + 2, planner=planner,
                       reward_fn=task.reward_fn(model, prompt), num_simulations=num_simulations,
                       transition=transition, time_budget=None if planner == "sync" else 0.05)
        correct += gen.text == answer
    return correct / n
