"""Batched PUCT Monte Carlo tree search over next tokens.

Priors come from the model's top-k next-token logits, leaf values from its value head (or, at a terminal
node, from a verifier `reward_fn` when the task has one), and transitions either from the learned latent
dynamics (`transition="dynamics"`, the fast path: one small MLP per step) or from real backbone steps with
the recurrent cache (`transition="backbone"`, exact). Each round selects up to `batch` leaves with virtual
loss and evaluates them in one batched call.

The model is duck-typed: it needs `logits(latent)`, `value(latent)`, `step(token, caches)`,
`dynamics_step(latent, token)` and `eos_id`, so tests can search a toy tree with a known best move.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

import torch

RewardFn = Callable[[list[int]], float | None]


@dataclasses.dataclass(eq=False)
class Node:
    """One tree node: the token that led here, its prior, visit statistics and its (lazily computed) state."""

    token: int | None
    prior: float
    parent: Node | None = None
    depth: int = 0
    latent: torch.Tensor | None = None  # (D,)
    caches: list | None = None  # per layer (conv (1, ED, K-1), ssm (1, ED, N)) for exact transitions
    visits: int = 0
    value_sum: float = 0.0
    virtual: int = 0
    terminal: bool = False
    terminal_value: float = 0.0
    children: list[Node] = dataclasses.field(default_factory=list)

    @property
    def expanded(self) -> bool:
        return self.latent is not None

    def q(self, default: float) -> float:
        n = self.visits + self.virtual
        return (self.value_sum - self.virtual) / n if n else default

    def tokens_from_root(self) -> list[int]:
        out, node = [], self
        while node.parent is not None:
            out.append(node.token)
            node = node.parent
        return out[::-1]


@dataclasses.dataclass
class SearchResult:
    """Statistics of the root's children after a search."""

    actions: list[int]
    visits: list[int]
    q_values: list[float]
    priors: list[float]
    root_latent: torch.Tensor  # (D,)
    future_latents: torch.Tensor  # (K, D): latent at the end of each child's most-visited line
    simulations: int
    seconds: float

    @property
    def best_action(self) -> int:
        return self.actions[max(range(len(self.actions)), key=lambda i: (self.visits[i], self.q_values[i]))]

    @property
    def policy(self) -> torch.Tensor:
        """Visit distribution over the root's children (K,)."""
        v = torch.tensor(self.visits, dtype=torch.float32)
        return v / v.sum().clamp(min=1)


class MCTS:
    """PUCT search.

    Args:
        model: a CRSM (or any object with the duck-typed interface above).
        top_k: children per node (the top-k tokens of the node's logits).
        c_puct: exploration constant.
        batch: leaves evaluated per round.
        max_depth: a node this deep below the root is terminal.
        transition: "dynamics" or "backbone".
        reward_fn: maps the search's `prefix` + the tokens from the root to a terminal node to a value in [0, 1],
            or None when the outcome is not verifiable (then the value head is used).
    """

    def __init__(self, model, top_k: int = 4, c_puct: float = 1.5, batch: int = 8, max_depth: int = 12,
                 transition: str = "backbone", reward_fn: RewardFn | None = None):
        if transition not in ("backbone", "dynamics"):
            raise ValueError(f"transition={transition!r}: expected backbone or dynamics")
        self.model = model
        self.top_k = top_k
        self.c_puct = c_puct
        self.batch = batch
        self.max_depth = max_depth
        self.transition = transition
        self.reward_fn = reward_fn
        self._prefix: list[int] = []

    # ---- expansion -------------------------------------------------------------------------------
    def _attach(self, nodes: list[Node], latents: torch.Tensor, values: torch.Tensor) -> list[float]:
        """Give nodes their latent (N, D), children from the top-k priors, and return their values."""
        logits = self.model.logits(latents).float()  # (N, V)
        probs = torch.softmax(logits, dim=-1)
        top_p, top_i = probs.topk(min(self.top_k, probs.shape[-1]), dim=-1)  # (N, K)
        top_p = top_p / top_p.sum(-1, keepdim=True)
        out = []
        eos = self.model.eos_id
        for j, node in enumerate(nodes):
            node.latent = latents[j]
            value = float(values[j])
            node.terminal = node.token == eos or node.depth >= self.max_depth
            if node.terminal and self.reward_fn is not None:
                reward = self.reward_fn(self._prefix + node.tokens_from_root())
                if reward is not None:
                    value = float(reward)
            if node.terminal:
                node.terminal_value = value
            else:
                node.children = [Node(int(t), float(p), parent=node, depth=node.depth + 1)
                                 for p, t in zip(top_p[j].tolist(), top_i[j].tolist(), strict=True)]
            out.append(value)
        return out

    def _evaluate(self, leaves: list[Node]) -> list[float]:
        """Compute the latent of every leaf from its parent in one batched transition; return leaf values."""
        tokens = torch.tensor([leaf.token for leaf in leaves], device=leaves[0].parent.latent.device)
        if self.transition == "dynamics":
            parents = torch.stack([leaf.parent.latent for leaf in leaves])  # (N, D)
            latents = self.model.dynamics_step(parents, tokens)  # (N, D)
        else:
            n_layers = len(leaves[0].parent.caches)
            caches = [tuple(torch.cat([leaf.parent.caches[i][k] for leaf in leaves]) for k in range(2))
                      for i in range(n_layers)]  # per layer: (N, ED, K-1), (N, ED, N_state)
            latents, new = self.model.step(tokens, caches)
            for j, leaf in enumerate(leaves):
                leaf.caches = [(c[j : j + 1], h[j : j + 1]) for c, h in new]
        values = self.model.value(latents)  # (N,)
        return self._attach(leaves, latents, values)

    # ---- selection -------------------------------------------------------------------------------
    def _select(self, root: Node) -> list[Node]:
        """Descend by PUCT from the root to a leaf; returns the path (virtual loss applied)."""
        node, path = root, [root]
        while node.expanded and not node.terminal:
            total = node.visits + node.virtual
            sqrt_total = math.sqrt(total + 1)
            default = node.q(0.0)
            node = max(node.children, key=lambda ch: ch.q(default)
                       + self.c_puct * ch.prior * sqrt_total / (1 + ch.visits + ch.virtual))
            path.append(node)
        for n in path:
            n.virtual += 1
        return path

    @staticmethod
    def _backup(path: list[Node], value: float) -> None:
        for n in path:
            n.virtual -= 1
            n.visits += 1
            n.value_sum += value

    @torch.no_grad()
    def search(self, latent: torch.Tensor, caches: list | None = None, num_simulations: int = 48,
               time_budget: float | None = None, prefix: list[int] = (),
               stop: Callable[[], bool] | None = None) -> SearchResult:
        """Search from one state.

        Args:
            latent: the root's latent state (D,) or (1, D).
            caches: the root's backbone caches (batch 1), needed for transition="backbone".
            num_simulations: leaf evaluations to run (each round evaluates up to `batch`).
            time_budget: seconds; the search stops after the round that passes it.
            prefix: tokens already generated before the root (passed to `reward_fn`).
            stop: polled between rounds; True ends the search early (the planner's shutdown).
        """
        start = time.perf_counter()
        self._prefix = list(prefix)
        latent = latent.reshape(-1)
        if self.transition == "backbone" and caches is None:
            raise ValueError("transition='backbone' needs the root's caches")
        root = Node(token=None, prior=1.0, caches=caches)
        root_value = self._attach([root], latent.unsqueeze(0), self.model.value(latent.unsqueeze(0)))[0]
        root.visits, root.value_sum = 1, root_value
        sims = 0
        while sims < num_simulations:
            if time_budget is not None and time.perf_counter() - start > time_budget:
                break
            if stop is not None and stop():
                break
            paths, fresh, seen = [], [], set()
            for _ in range(min(self.batch, num_simulations - sims)):
                path = self._select(root)
                leaf = path[-1]
                if leaf in seen:  # the same leaf twice in one round: evaluate once, undo the extra virtual loss
                    for n in path:
                        n.virtual -= 1
                    break
                seen.add(leaf)
                paths.append(path)
                if not leaf.expanded:
                    fresh.append(leaf)
            values = dict(zip(fresh, self._evaluate(fresh), strict=True)) if fresh else {}
            for path in paths:
                leaf = path[-1]
                self._backup(path, values.get(leaf, leaf.terminal_value))
            sims += len(paths)
            if not paths:
                break
        children = root.children
        futures = []
        for child in children:
            node = child
            while node.children and any(c.visits for c in node.children):
                node = max(node.children, key=lambda c: c.visits)
            futures.append(node.latent if node.latent is not None else latent)
        return SearchResult(
            actions=[c.token for c in children], visits=[c.visits for c in children],
            q_values=[c.q(0.0) for c in children], priors=[c.prior for c in children], root_latent=latent,
            future_latents=torch.stack(futures) if futures else latent.unsqueeze(0), simulations=sims,
            seconds=time.perf_counter() - start,
        )
