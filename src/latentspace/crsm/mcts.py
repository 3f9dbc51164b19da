"""Batched PUCT Monte Carlo tree search over next tokens, on an array-based tree.

Priors come from the model's top-k next-token logits, leaf values from its value head (or, at a terminal
node, from a verifier `reward_fn` when the task has one), and transitions either from the learned latent
dynamics (`transition="dynamics"`, the fast path: one small MLP per step) or from real backbone steps with
the recurrent cache (`transition="backbone"`, exact).

A round descends from the root `batch` times by PUCT with virtual loss, then evaluates every new leaf of the
round in one batched call (transition, value head, LM head, top-k) and backs their values up. A descent that
ends at a terminal node is backed up at once (its value is known); one that ends at a leaf already waiting in
this round keeps its virtual loss until the round ends (so the following descents turn elsewhere) and is not
counted, so rounds stay full instead of stopping at the first collision.

The tree is flat (`Tree`): per-node statistics in Python lists indexed by node id, an expanded node's
children contiguous, node states in preallocated tensors indexed by slot. The descent is sequential (each
one sees the virtual loss of the previous ones) and reads ~K numbers per level; for K ~ 4, plain list
arithmetic is about ten times cheaper than one NumPy call, so the vectorised work is where it pays: one
batched evaluation, one top-k and one `tolist` per round, and one `index_select` per state tensor.

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


class Tree:
    """The search tree as flat arrays; node 0 is the root.

    Per node (lists indexed by node id): the token that led to it, its prior, parent, depth, visits, value
    sum, virtual loss, the id of its first child (-1 until expanded; its children are ids first..first+K-1),
    whether it is terminal, its own value (value head or verifier) and its state slot (-1 until evaluated).
    States live in tensors with one row per slot: latents (S, D) and, for exact transitions, each layer's
    caches (conv (S, ED, K-1), ssm (S, ED, N)); they grow by doubling.

    Args:
        latent: the root's latent (D,).
        caches: the root's per-layer caches (batch 1), or None.
        k: children per expanded node (min(top_k, vocabulary size)).
        capacity: initial number of state slots.
    """

    def __init__(self, latent: torch.Tensor, caches: list | None, k: int, capacity: int):
        self.k = k
        self.token: list[int] = [-1]
        self.prior: list[float] = [1.0]
        self.parent: list[int] = [-1]
        self.depth: list[int] = [0]
        self.visits: list[int] = [0]
        self.value_sum: list[float] = [0.0]
        self.virtual: list[int] = [0]
        self.first_child: list[int] = [-1]
        self.terminal: list[bool] = [False]
        self.value: list[float] = [0.0]
        self.slot: list[int] = [-1]
        self.latents = latent.new_empty(capacity, latent.shape[-1])  # (S, D)
        self.caches = None if caches is None else [
            (conv.new_empty((capacity, *conv.shape[1:])), ssm.new_empty((capacity, *ssm.shape[1:])))
            for conv, ssm in caches]  # per layer: (S, ED, K-1), (S, ED, N)
        self.n_slots = 0
        self.store([0], latent.reshape(1, -1), caches)

    def __len__(self) -> int:
        return len(self.token)

    def add_children(self, node: int, tokens: list[int], priors: list[float]) -> None:
        """Append the K children of `node` (its top-k tokens and their renormalised priors)."""
        first = len(self.token)
        k = self.k
        self.first_child[node] = first
        self.token += tokens
        self.prior += priors
        self.parent += [node] * k
        self.depth += [self.depth[node] + 1] * k
        self.visits += [0] * k
        self.value_sum += [0.0] * k
        self.virtual += [0] * k
        self.first_child += [-1] * k
        self.terminal += [False] * k
        self.value += [0.0] * k
        self.slot += [-1] * k

    def store(self, nodes: list[int], latents: torch.Tensor, caches: list | None) -> None:
        """Give `nodes` the next slots and write their latents (N, D) and caches (per layer, batch N)."""
        n = len(nodes)
        if self.n_slots + n > len(self.latents):
            self._grow(max(2 * len(self.latents), self.n_slots + n))
        rows = slice(self.n_slots, self.n_slots + n)
        self.latents[rows] = latents
        if self.caches is not None:
            for (conv, ssm), (new_conv, new_ssm) in zip(self.caches, caches, strict=True):
                conv[rows] = new_conv
                ssm[rows] = new_ssm
        for j, node in enumerate(nodes):
            self.slot[node] = self.n_slots + j
        self.n_slots += n

    def _grow(self, capacity: int) -> None:
        def grown(t):
            out = t.new_empty((capacity, *t.shape[1:]))
            out[: self.n_slots] = t[: self.n_slots]
            return out

        self.latents = grown(self.latents)
        if self.caches is not None:
            self.caches = [(grown(conv), grown(ssm)) for conv, ssm in self.caches]

    def tokens_from_root(self, node: int) -> list[int]:
        out = []
        while node > 0:
            out.append(self.token[node])
            node = self.parent[node]
        return out[::-1]

    def children(self, node: int) -> range:
        first = self.first_child[node]
        return range(first, first + self.k) if first >= 0 else range(0)

    def q(self, node: int, default: float = 0.0) -> float:
        n = self.visits[node] + self.virtual[node]
        return (self.value_sum[node] - self.virtual[node]) / n if n else default


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
    rounds: int = 0  # batched evaluations run
    evaluated: int = 0  # leaves evaluated (evaluated / rounds: the mean batch)

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

    # ---- expansion -------------------------------------------------------------------------------
    def _expand(self, tree: Tree, nodes: list[int], latents: torch.Tensor, values: torch.Tensor,
                prefix: list[int]) -> list[float]:
        """Set the values of evaluated `nodes` (latents (N, D), values (N,)), mark terminals, add children."""
        logits = self.model.logits(latents).float()  # (N, V)
        top_p, top_i = torch.softmax(logits, dim=-1).topk(tree.k, dim=-1)  # (N, K)
        top_p = (top_p / top_p.sum(-1, keepdim=True)).tolist()
        top_i = top_i.tolist()
        out = values.float().tolist()
        eos = self.model.eos_id
        for j, node in enumerate(nodes):
            if tree.token[node] == eos or tree.depth[node] >= self.max_depth:
                tree.terminal[node] = True
                if self.reward_fn is not None:
                    reward = self.reward_fn(prefix + tree.tokens_from_root(node))
                    if reward is not None:
                        out[j] = float(reward)
            else:
                tree.add_children(node, top_i[j], top_p[j])
            tree.value[node] = out[j]
        return out

    def _evaluate(self, tree: Tree, leaves: list[int], prefix: list[int]) -> list[float]:
        """Compute every leaf's state from its parent's in one batched transition; return the leaves' values."""
        device = tree.latents.device
        parents = torch.tensor([tree.slot[tree.parent[leaf]] for leaf in leaves], device=device)  # (N,)
        tokens = torch.tensor([tree.token[leaf] for leaf in leaves], device=device)  # (N,)
        if self.transition == "dynamics":
            latents = self.model.dynamics_step(tree.latents.index_select(0, parents), tokens)  # (N, D)
            caches = None
        else:
            caches = [(conv.index_select(0, parents), ssm.index_select(0, parents))
                      for conv, ssm in tree.caches]  # per layer: (N, ED, K-1), (N, ED, N_state)
            latents, caches = self.model.step(tokens, caches)
        tree.store(leaves, latents, caches)
        return self._expand(tree, leaves, latents, self.model.value(latents), prefix)

    # ---- selection and backup --------------------------------------------------------------------
    def _select(self, tree: Tree) -> list[int]:
        """Descend by PUCT from the root to an unexpanded or terminal node; returns the path (virtual loss applied).

        score(child) = Q(child) + c_puct * prior * sqrt(N(parent) + 1) / (1 + N(child)), N counting virtual
        visits and Q counting each virtual visit as a loss; an unvisited child's Q is its parent's Q.
        """
        visits, value_sum, virtual = tree.visits, tree.value_sum, tree.virtual
        prior, first_child, k, c_puct = tree.prior, tree.first_child, tree.k, self.c_puct
        node, path = 0, [0]
        while first_child[node] >= 0:
            n = visits[node] + virtual[node]
            default = (value_sum[node] - virtual[node]) / n if n else 0.0
            explore = c_puct * math.sqrt(n + 1)
            best, best_score = -1, -math.inf
            for child in range(first_child[node], first_child[node] + k):
                n_child = visits[child] + virtual[child]
                q = (value_sum[child] - virtual[child]) / n_child if n_child else default
                score = q + explore * prior[child] / (1 + n_child)
                if score > best_score:
                    best, best_score = child, score
            node = best
            path.append(node)
        for node in path:
            virtual[node] += 1
        return path

    @staticmethod
    def _backup(tree: Tree, path: list[int], value: float) -> None:
        visits, value_sum, virtual = tree.visits, tree.value_sum, tree.virtual
        for node in path:
            virtual[node] -= 1
            visits[node] += 1
            value_sum[node] += value

    @staticmethod
    def _undo_virtual(tree: Tree, path: list[int]) -> None:
        for node in path:
            tree.virtual[node] -= 1

    @torch.no_grad()
    def search(self, latent: torch.Tensor, caches: list | None = None, num_simulations: int = 48,
               time_budget: float | None = None, prefix: list[int] = (),
               stop: Callable[[], bool] | None = None) -> SearchResult:
        """Search from one state.

        Args:
            latent: the root's latent state (D,) or (1, D).
            caches: the root's backbone caches (batch 1), needed for transition="backbone".
            num_simulations: descents to back up (each round evaluates up to `batch` new leaves together).
            time_budget: seconds; the search stops after the round that passes it.
            prefix: tokens already generated before the root (passed to `reward_fn`).
            stop: polled between rounds; True ends the search early (the planner's shutdown).
        """
        start = time.perf_counter()
        prefix = list(prefix)
        latent = latent.reshape(-1)
        if self.transition == "backbone" and caches is None:
            raise ValueError("transition='backbone' needs the root's caches")
        root = latent.unsqueeze(0)  # (1, D)
        tree = Tree(latent, caches if self.transition == "backbone" else None,
                    k=min(self.top_k, self.model.logits(root).shape[-1]), capacity=min(num_simulations, 256) + 1)
        root_value = self._expand(tree, [0], root, self.model.value(root), prefix)[0]
        tree.visits[0], tree.value_sum[0] = 1, root_value
        sims = rounds = evaluated = 0
        while sims < num_simulations:
            if time_budget is not None and time.perf_counter() - start > time_budget:
                break
            if stop is not None and stop():
                break
            want = min(self.batch, num_simulations - sims)
            fresh, fresh_paths, collided, done = [], [], [], 0
            waiting: set[int] = set()
            for _ in range(2 * want):  # descents that collide are retried, at most `want` times per round
                if done + len(fresh) == want:
                    break
                path = self._select(tree)
                leaf = path[-1]
                if tree.terminal[leaf]:
                    self._backup(tree, path, tree.value[leaf])
                    done += 1
                elif leaf in waiting:
                    collided.append(path)
                else:
                    waiting.add(leaf)
                    fresh.append(leaf)
                    fresh_paths.append(path)
            if fresh:
                for path, value in zip(fresh_paths, self._evaluate(tree, fresh, prefix), strict=True):
                    self._backup(tree, path, value)
                rounds += 1
                evaluated += len(fresh)
            for path in collided:
                self._undo_virtual(tree, path)
            sims += done + len(fresh)
        result = self._result(tree, latent, sims, time.perf_counter() - start)
        result.rounds, result.evaluated = rounds, evaluated
        return result

    def _result(self, tree: Tree, latent: torch.Tensor, sims: int, seconds: float) -> SearchResult:
        children = tree.children(0)
        slots = []
        for child in children:  # follow each root child's most-visited line to its end
            node = child
            while tree.first_child[node] >= 0:
                best = max(tree.children(node), key=tree.visits.__getitem__)
                if tree.visits[best] == 0:
                    break
                node = best
            slots.append(max(tree.slot[node], 0))  # slot 0 is the root: an unevaluated child keeps the root latent
        futures = (tree.latents.index_select(0, torch.tensor(slots, device=latent.device)) if slots
                   else latent.unsqueeze(0))  # (K, D)
        return SearchResult(
            actions=[tree.token[c] for c in children], visits=[tree.visits[c] for c in children],
            q_values=[tree.q(c) for c in children], priors=[tree.prior[c] for c in children], root_latent=latent,
            future_latents=futures, simulations=sims, seconds=seconds,
        )
