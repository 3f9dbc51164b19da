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
arithmetic costs less than one NumPy call, so the vectorised work is where it pays: one batched evaluation per
round through the search kernels (`kernels.py`: the transition reads its parents' rows of the state buffer and
writes the new states into it; the heads give the top-k and the values as lists). The descent is inlined in the
round loop (it is most of the tree's cost), and a node whose count is 1 (expanded, no child visited) goes to its
first, top-prior child without scoring, which is the loop's choice.

The model is duck-typed: it needs `logits(latent)`, `value(latent)`, `step(token, caches)`,
`dynamics_step(latent, token)` and `eos_id`, so tests can search a toy tree with a known best move.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable

import torch

from .kernels import SearchKernels, search_kernels

RewardFn = Callable[[list[int]], float | None]


class Tree:
    """The search tree as flat arrays; node 0 is the root.

    Per node (lists indexed by node id): the token that led to it, its prior, parent, depth, count (visits plus
    virtual visits: the N of PUCT), value sum, virtual loss (descents of this round through it not yet backed
    up), the id of its first child (-1 until expanded; its children are ids first..first+K-1), whether it is
    terminal, its own value (value head or verifier) and its state slot (-1 until evaluated).
    States live in tensors with one row per slot: latents (S, D) and, for exact transitions, each layer's
    caches (conv (S, ED, K-1), ssm (S, ED, N)); they grow by doubling and are kept for the next search
    (`reset`), so a search allocates no state tensors once the buffers are large enough.

    Args:
        latent: a latent (D,) giving the state width, dtype and device.
        caches: per-layer caches (batch 1) giving their shapes, or None.
        k: children per expanded node (min(top_k, vocabulary size)).
        capacity: initial number of state slots.
    """

    def __init__(self, latent: torch.Tensor, caches: list | None, k: int, capacity: int):
        self.k = k
        self.eos = -1  # the model's end-of-sequence token: a node it leads to is terminal
        self.latents = latent.new_empty(capacity, latent.shape[-1])  # (S, D)
        self.caches = None if caches is None else [
            (conv.new_empty((capacity, *conv.shape[1:])), ssm.new_empty((capacity, *ssm.shape[1:])))
            for conv, ssm in caches]  # per layer: (S, ED, K-1), (S, ED, N)
        self.reset(latent, caches)

    def fits(self, latent: torch.Tensor, caches: list | None, k: int) -> bool:
        """Whether this tree's buffers can hold a search from this root (same shapes, dtype, device)."""
        def same(a, b):
            return a.shape[1:] == b.shape[1:] and a.dtype == b.dtype and a.device == b.device

        if k != self.k or not same(self.latents, latent.reshape(1, -1)) or (caches is None) != (self.caches is None):
            return False
        return caches is None or (len(caches) == len(self.caches) and all(
            same(a, b) and same(c, d) for (a, c), (b, d) in zip(self.caches, caches, strict=True)))

    def reset(self, latent: torch.Tensor, caches: list | None) -> None:
        """Empty the tree and make `latent` (D,) (with `caches`) its root."""
        self.token: list[int] = [-1]
        self.prior: list[float] = [1.0]
        self.parent: list[int] = [-1]
        self.depth: list[int] = [0]
        self.count: list[int] = [0]  # visits + virtual; equal to the visits once a search ends
        self.value_sum: list[float] = [0.0]
        self.virtual: list[int] = [0]
        self.first_child: list[int] = [-1]
        self.terminal: list[bool] = [False]
        self.value: list[float] = [0.0]
        self.slot: list[int] = [-1]
        self.n_slots = 0
        rows = self.reserve([0])
        self.latents[rows] = latent.reshape(1, -1)
        if caches is not None:
            self.write_caches(rows, caches)

    def __len__(self) -> int:
        return len(self.token)

    def add_children(self, nodes: list[int], tokens: list[int], priors: list[float]) -> None:
        """Append K children to each of `nodes`: flat lists of their tokens and priors (len(nodes) * K each)."""
        k = self.k
        first = len(self.token)
        parents, depths = [], []
        first_child, depth = self.first_child, self.depth
        for node in nodes:
            first_child[node] = first
            first += k
            parents += [node] * k
            depths += [depth[node] + 1] * k
        m = len(nodes) * k
        self.token += tokens
        self.prior += priors
        self.parent += parents
        self.depth += depths
        self.count += [0] * m
        self.value_sum += [0.0] * m
        self.virtual += [0] * m
        first_child += [-1] * m
        self.terminal += [False] * m
        self.value += [0.0] * m
        self.slot += [-1] * m

    def reserve(self, nodes: list[int]) -> slice:
        """Give `nodes` the next slots (contiguous); the caller writes their states into those rows."""
        n = len(nodes)
        capacity = self.latents.shape[0]
        if self.n_slots + n > capacity:
            self._grow(max(2 * capacity, self.n_slots + n))
        first = self.n_slots
        slot = self.slot
        for j, node in enumerate(nodes):
            slot[node] = first + j
        self.n_slots += n
        return slice(first, first + n)

    def write_caches(self, rows: slice, caches: list) -> None:
        for (conv, ssm), (new_conv, new_ssm) in zip(self.caches, caches, strict=True):
            conv[rows] = new_conv
            ssm[rows] = new_ssm

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

    def visits(self, node: int) -> int:
        return self.count[node] - self.virtual[node]

    def q(self, node: int, default: float = 0.0) -> float:
        n = self.count[node]
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
        self._tree: Tree | None = None  # kept between searches (its state buffers are reused)
        self._tree_lock = threading.Lock()
        self._k: int | None = None  # children per node: min(top_k, vocabulary size)
        self._explore_table: tuple[float, list[float]] | None = None  # (c_puct, c_puct * sqrt(n + 1) by n)

    # ---- expansion -------------------------------------------------------------------------------
    def _expand(self, tree: Tree, nodes: list[int], latents: torch.Tensor, prefix: list[int],
                kernels: SearchKernels) -> list[float]:
        """Evaluate `nodes` from their latents (N, D) (one batched call to the heads), mark terminals, add children.

        Returns the nodes' values (value head, or the verifier's reward at a terminal node when there is one).
        """
        k = tree.k
        tokens, priors, out = kernels.heads(latents, k)
        eos, max_depth, token, depth = tree.eos, self.max_depth, tree.token, tree.depth
        ends = [j for j, node in enumerate(nodes) if token[node] == eos or depth[node] >= max_depth]
        if ends:  # rare: take the terminal rows out of the flat lists
            for j in ends:
                node = nodes[j]
                tree.terminal[node] = True
                if self.reward_fn is not None:
                    reward = self.reward_fn(prefix + tree.tokens_from_root(node))
                    if reward is not None:
                        out[j] = float(reward)
            keep = [j for j in range(len(nodes)) if not tree.terminal[nodes[j]]]
            tokens = [t for j in keep for t in tokens[j * k : (j + 1) * k]]
            priors = [p for j in keep for p in priors[j * k : (j + 1) * k]]
            expand = [nodes[j] for j in keep]
        else:
            expand = nodes
        tree.add_children(expand, tokens, priors)
        value = tree.value
        for node, v in zip(nodes, out, strict=True):
            value[node] = v
        return out

    def _evaluate(self, tree: Tree, leaves: list[int], prefix: list[int], kernels: SearchKernels) -> list[float]:
        """Compute every leaf's state from its parent's in one batched transition; return the leaves' values."""
        slot, parent = tree.slot, tree.parent
        parents = [slot[parent[leaf]] for leaf in leaves]
        token = tree.token
        tokens = [token[leaf] for leaf in leaves]
        rows = tree.reserve(leaves)
        if self.transition == "dynamics":
            latents = kernels.transition(tree.latents, parents, tokens, rows)
        else:
            index = torch.tensor(parents, device=tree.latents.device)
            caches = [(conv.index_select(0, index), ssm.index_select(0, index))
                      for conv, ssm in tree.caches]  # per layer: (N, ED, K-1), (N, ED, N_state)
            latents, caches = self.model.step(torch.tensor(tokens, device=tree.latents.device), caches)
            tree.latents[rows] = latents
            tree.write_caches(rows, caches)
        return self._expand(tree, leaves, latents, prefix, kernels)

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
        kernels = search_kernels(self.model)
        tree, kept = self._tree_for(latent, caches if self.transition == "backbone" else None, num_simulations)
        try:
            return self._search(tree, root, latent, kernels, num_simulations, time_budget, prefix, stop, start)
        finally:
            if kept:
                self._tree_lock.release()

    def _search(self, tree: Tree, root: torch.Tensor, latent: torch.Tensor, kernels: SearchKernels,
                num_simulations: int, time_budget: float | None, prefix: list[int], stop, start: float) -> SearchResult:
        tree.eos = self.model.eos_id  # read once per search (a tokenizer attribute is slow to reach)
        root_value = self._expand(tree, [0], root, prefix, kernels)[0]
        tree.count[0], tree.value_sum[0] = 1, root_value
        sims = rounds = evaluated = 0
        count, value_sum, virtual, prior = tree.count, tree.value_sum, tree.virtual, tree.prior
        first_child, terminal, value = tree.first_child, tree.terminal, tree.value
        k, c_puct, sqrt, inf = tree.k, self.c_puct, math.sqrt, math.inf
        explores = self._explores(num_simulations)  # explores[n] = c_puct * sqrt(n + 1), the same floats
        while sims < num_simulations:
            if time_budget is not None and time.perf_counter() - start > time_budget:
                break
            if stop is not None and stop():
                break
            want = min(self.batch, num_simulations - sims)
            fresh, fresh_paths, collided, done, taken = [], [], [], 0, 0  # taken = done + len(fresh)
            waiting: set[int] = set()
            for _ in range(2 * want):  # descents that collide are retried, at most `want` times per round
                if taken == want:
                    break
                # one descent by PUCT from the root to an unexpanded or terminal node, virtual loss applied on the way:
                # score(child) = Q(child) + c_puct * prior * sqrt(N(parent) + 1) / (1 + N(child)), N counting
                # virtual visits and Q counting each virtual visit as a loss; an unvisited child's Q is its
                # parent's. Inlined: this loop is most of the tree's cost. Children come in top-k order, so their
                # priors do not increase, and an unvisited child's score is default + explore * prior: of the
                # unvisited ones the first wins (ties keep the first). Hence the visited children (count > 0) are
                # always the first few (a collided descent's undo never takes a count to 0: it only passes nodes
                # an earlier descent of its round holds), and the scan stops at the first unvisited child: those
                # after it cannot win. An expanded node's count is 1 plus its children's (its own evaluation, then
                # one per descent through it), so count 1 means no child is visited: the first child wins.
                # (A node's virtual visit is added as the descent leaves it: its parent has read its numbers by then.)
                node, path = 0, [0]
                while True:
                    n = count[node]
                    first = first_child[node]
                    if first < 0 or n == 1:
                        count[node] = n + 1
                        virtual[node] += 1
                        if first < 0:
                            break
                        node = first
                        path.append(node)
                        continue
                    lost = virtual[node]
                    default = (value_sum[node] - lost) / n if n else 0.0
                    count[node], virtual[node] = n + 1, lost + 1
                    try:
                        explore = explores[n]
                    except IndexError:
                        explore = c_puct * sqrt(n + 1)
                    best, best_score = -1, -inf
                    for child in range(first, first + k):
                        n_child = count[child]
                        if not n_child:  # the first unvisited child: the last that can win (see above)
                            if default + explore * prior[child] > best_score:
                                best = child
                            break
                        score = (value_sum[child] - virtual[child]) / n_child + explore * prior[child] / (1 + n_child)
                        if score > best_score:
                            best, best_score = child, score
                    node = best
                    path.append(node)
                if terminal[node]:
                    v = value[node]
                    for step in path:  # back up at once: the virtual visit becomes a real one
                        virtual[step] -= 1
                        value_sum[step] += v
                    done += 1
                    taken += 1
                elif node in waiting:
                    collided.append(path)
                else:
                    waiting.add(node)
                    fresh.append(node)
                    fresh_paths.append(path)
                    taken += 1
            if fresh:
                for path, v in zip(fresh_paths, self._evaluate(tree, fresh, prefix, kernels), strict=True):
                    for step in path:  # back up: the virtual visit becomes a real one
                        virtual[step] -= 1
                        value_sum[step] += v
                rounds += 1
                evaluated += len(fresh)
            for path in collided:
                for step in path:
                    count[step] -= 1
                    virtual[step] -= 1
            sims += done + len(fresh)
        result = self._result(tree, latent, sims, time.perf_counter() - start)
        result.rounds, result.evaluated = rounds, evaluated
        return result

    def _explores(self, num_simulations: int) -> list[float]:
        """c_puct * sqrt(n + 1) for n < min(num_simulations, 4096) + 2 * batch + 2 (kept while c_puct stays)."""
        size = min(num_simulations, 4096) + 2 * self.batch + 2
        table = self._explore_table
        if table is None or table[0] != self.c_puct or len(table[1]) < size:
            c_puct, sqrt = self.c_puct, math.sqrt
            table = self._explore_table = (c_puct, [c_puct * sqrt(n + 1) for n in range(size)])
        return table[1]

    def _tree_for(self, latent: torch.Tensor, caches: list | None, num_simulations: int) -> tuple[Tree, bool]:
        """The tree of the last search, emptied and rooted at `latent`, or a new one when it cannot hold this one.

        The kept tree is lent to one search at a time; a concurrent search on the same MCTS gets a fresh tree.
        Returns the tree and whether it is the kept one (to hand back with `_tree_lock.release()`).
        """
        if self._k is None:
            self._k = min(self.top_k, self.model.logits(latent.unsqueeze(0)).shape[-1])
        if not self._tree_lock.acquire(blocking=False):
            return Tree(latent, caches, k=self._k, capacity=min(num_simulations, 256) + 1), False
        tree = self._tree
        if tree is not None and tree.fits(latent, caches, self._k):
            tree.reset(latent, caches)
        else:
            tree = self._tree = Tree(latent, caches, k=self._k, capacity=min(num_simulations, 256) + 1)
        return tree, True

    def _result(self, tree: Tree, latent: torch.Tensor, sims: int, seconds: float) -> SearchResult:
        # once a search ends no virtual loss is left: a node's count is its visits
        count, first_child, k = tree.count, tree.first_child, tree.k
        children = tree.children(0)
        slots = []
        for child in children:  # follow each root child's most-visited line to its end (ties keep the first)
            node = child
            first = first_child[node]
            while first >= 0:
                best, most = first, count[first]
                for other in range(first + 1, first + k):
                    if count[other] > most:
                        best, most = other, count[other]
                if most == 0:
                    break
                node = best
                first = first_child[node]
            slots.append(max(tree.slot[node], 0))  # slot 0 is the root: an unevaluated child keeps the root latent
        futures = (tree.latents.index_select(0, torch.tensor(slots, device=latent.device)) if slots
                   else latent.unsqueeze(0))  # (K, D)
        value_sum = tree.value_sum
        return SearchResult(
            actions=[tree.token[c] for c in children], visits=[count[c] for c in children],
            q_values=[value_sum[c] / count[c] if count[c] else 0.0 for c in children],
            priors=[tree.prior[c] for c in children], root_latent=latent, future_latents=futures, simulations=sims,
            seconds=seconds,
        )
