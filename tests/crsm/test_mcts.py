import math

import torch

from latentspace.crsm.kernels import search_kernels
from latentspace.crsm.mcts import MCTS

from .conftest import tiny_crsm

EOS = 3
VALUES = {-1: 0.5, 0: 0.2, 1: 0.9, 2: 0.1}


class ToyModel:
    """A 3-token tree: the first move decides the value (move 1 is best) while the prior favours move 0."""

    eos_id = EOS

    def _next(self, latent, token):  # latent: (N, 2) = [depth, first move]
        first = torch.where(latent[:, 0] == 0, token.float(), latent[:, 1])
        return torch.stack([latent[:, 0] + 1, first], -1)

    def logits(self, latent):
        return torch.tensor([[3.0, 1.0, 1.0, -9.0]]).expand(len(latent), -1)

    def value(self, latent):
        return torch.tensor([VALUES[int(f)] for f in latent[:, 1]])

    def step(self, token, caches):
        latent = self._next(caches[0][0], token)
        return latent, [(latent, caches[0][1])]

    def dynamics_step(self, latent, token):
        return self._next(latent, token)


def _root():
    latent = torch.tensor([[0.0, -1.0]])
    return latent, [(latent, torch.zeros(1, 1))]


def test_search_finds_the_best_move_against_the_prior():
    for transition in ("backbone", "dynamics"):
        mcts = MCTS(ToyModel(), top_k=3, c_puct=1.0, batch=4, max_depth=4, transition=transition)
        latent, caches = _root()
        result = mcts.search(latent, caches, num_simulations=200)
        assert result.best_action == 1
        assert result.visits[result.actions.index(1)] > result.visits[result.actions.index(0)]
        assert result.simulations == 200
        assert abs(result.q_values[result.actions.index(1)] - 0.9) < 1e-6


def test_verifier_reward_overrides_value_at_terminal_nodes():
    def reward(tokens):  # only the line 2, 2 is correct
        return float(tokens == [2, 2])

    mcts = MCTS(ToyModel(), top_k=3, c_puct=1.0, batch=4, max_depth=2, transition="dynamics", reward_fn=reward)
    latent, _ = _root()
    assert mcts.search(latent, num_simulations=400).best_action == 2


def test_time_budget_bounds_the_search():
    mcts = MCTS(ToyModel(), top_k=3, batch=1, max_depth=50, transition="dynamics")
    latent, _ = _root()
    result = mcts.search(latent, num_simulations=10**9, time_budget=0.05)
    assert result.seconds < 1.0 and result.simulations > 0


class RefNode:
    def __init__(self, token, prior, parent=None):
        self.token, self.prior, self.parent = token, prior, parent
        self.depth = 0 if parent is None else parent.depth + 1
        self.visits, self.value_sum, self.virtual = 0, 0.0, 0
        self.children, self.latent, self.caches, self.terminal, self.value = [], None, None, False, 0.0

    def q(self, default):
        n = self.visits + self.virtual
        return (self.value_sum - self.virtual) / n if n else default

    def line(self):
        node, out = self, []
        while node.parent is not None:
            out.append(node.token)
            node = node.parent
        return out[::-1]


def reference_search(model, latent, caches, sims, top_k, c_puct, batch, max_depth, transition, reward_fn=None):
    """The search's documented rounds on a tree of node objects (slow, obviously correct).

    It evaluates states with the same per-round functions as the search (`search_kernels`: for a CRSM the fused
    dynamics and heads, tested against the reference kernels in test_kernels.py), so the comparison is of the tree.
    """
    kernels = search_kernels(model)
    k = min(top_k, model.logits(latent.reshape(1, -1)).shape[-1])

    def expand(nodes, latents):
        top_i, top_p, out = kernels.heads(latents, k)
        top_i = [top_i[j * k : (j + 1) * k] for j in range(len(nodes))]
        top_p = [top_p[j * k : (j + 1) * k] for j in range(len(nodes))]
        for j, node in enumerate(nodes):
            node.latent = latents[j]
            if node.token == model.eos_id or node.depth >= max_depth:
                node.terminal = True
                if reward_fn is not None and reward_fn(node.line()) is not None:
                    out[j] = float(reward_fn(node.line()))
            else:
                node.children = [RefNode(t, p, node) for p, t in zip(top_p[j], top_i[j], strict=True)]
            node.value = out[j]
        return out

    def select():
        node, path = root, [root]
        while node.children:
            n = node.visits + node.virtual
            default, explore = node.q(0.0), c_puct * math.sqrt(n + 1)
            node = max(node.children, key=lambda ch: ch.q(default) + explore * ch.prior / (1 + ch.visits + ch.virtual))
            path.append(node)
        for n in path:
            n.virtual += 1
        return path

    def backup(path, value):
        for n in path:
            n.virtual, n.visits, n.value_sum = n.virtual - 1, n.visits + 1, n.value_sum + value

    root = RefNode(-1, 1.0)
    root.caches = caches
    value = expand([root], latent.reshape(1, -1))[0]
    root.visits, root.value_sum = 1, value
    done = 0
    while done < sims:
        want = min(batch, sims - done)
        fresh, paths, collided, terminal = [], [], [], 0
        for _ in range(2 * want):
            if terminal + len(fresh) == want:
                break
            path = select()
            if path[-1].terminal:
                backup(path, path[-1].value)
                terminal += 1
            elif path[-1] in fresh:
                collided.append(path)
            else:
                fresh.append(path[-1])
                paths.append(path)
        if fresh:
            tokens = torch.tensor([leaf.token for leaf in fresh])
            if transition == "dynamics":
                latents = kernels.dynamics(torch.stack([leaf.parent.latent for leaf in fresh]), tokens)
            else:
                stacked = [tuple(torch.cat([leaf.parent.caches[i][k] for leaf in fresh]) for k in range(2))
                           for i in range(len(caches))]
                latents, new = model.step(tokens, stacked)
                for j, leaf in enumerate(fresh):
                    leaf.caches = [(c[j : j + 1], h[j : j + 1]) for c, h in new]
            for path, value in zip(paths, expand(fresh, latents), strict=True):
                backup(path, value)
        for path in collided:
            for n in path:
                n.virtual -= 1
        done += terminal + len(fresh)
    futures = []
    for child in root.children:
        node = child
        while node.children and any(c.visits for c in node.children):
            node = max(node.children, key=lambda c: c.visits)
        futures.append(node.latent if node.latent is not None else root.latent)
    return root, torch.stack(futures)


def test_array_tree_search_matches_the_object_reference():
    cases = [(ToyModel(), *_root(), 3, 4, 4, None), (*tiny_crsm(), 4, 8, 7, None),
             (ToyModel(), *_root(), 3, 4, 2, lambda tokens: float(tokens == [2, 2]))]
    for model, latent, caches, top_k, batch, max_depth, reward in cases:
        for transition in ("dynamics", "backbone"):
            settings = dict(top_k=top_k, c_puct=1.3, batch=batch, max_depth=max_depth, transition=transition)
            with torch.no_grad():
                result = MCTS(model, reward_fn=reward, **settings).search(latent, caches, num_simulations=150)
                root, futures = reference_search(model, latent, caches, 150, reward_fn=reward, **settings)
            assert result.actions == [c.token for c in root.children]
            assert result.visits == [c.visits for c in root.children]
            assert result.q_values == [c.q(0.0) for c in root.children]
            assert result.simulations == 150 and sum(result.visits) == 150
            torch.testing.assert_close(result.future_latents, futures, rtol=0, atol=0)


def test_tree_buffers_are_reused_between_searches_and_results_stay_intact():
    model, latent, caches = tiny_crsm()
    for transition in ("dynamics", "backbone"):
        mcts = MCTS(model, top_k=4, batch=8, max_depth=7, transition=transition)
        first = mcts.search(latent, caches, num_simulations=40)
        buffer = mcts._tree.latents
        kept = first.future_latents.clone()
        second = mcts.search(latent + 0.5, caches, num_simulations=40)
        assert mcts._tree.latents is buffer  # no new state tensors for a search that fits
        torch.testing.assert_close(first.future_latents, kept, rtol=0, atol=0)
        again = MCTS(model, top_k=4, batch=8, max_depth=7, transition=transition).search(latent + 0.5, caches, 40)
        assert second.visits == again.visits
        torch.testing.assert_close(second.future_latents, again.future_latents, rtol=0, atol=0)


def test_toy_search_keeps_the_visit_counts_of_the_list_tree_before_the_fast_paths():
    """Visit counts, rounds and leaves of the search before the inlined descent and the NumPy kernels (recorded)."""
    recorded = [(dict(top_k=3, c_puct=1.3, batch=4, max_depth=4), [17, 130, 3], 18, 41),
                (dict(top_k=3, c_puct=0.7, batch=16, max_depth=3), [10, 133, 7], 4, 30),
                (dict(top_k=3, c_puct=2.0, batch=1, max_depth=6), [26, 121, 3], 69, 69)]
    for transition in ("dynamics", "backbone"):
        for settings, visits, rounds, evaluated in recorded:
            latent, caches = _root()
            result = MCTS(ToyModel(), transition=transition, **settings).search(latent, caches, num_simulations=150)
            assert (result.actions, result.visits, result.rounds, result.evaluated) == ([0, 1, 2], visits, rounds,
                                                                                        evaluated)
