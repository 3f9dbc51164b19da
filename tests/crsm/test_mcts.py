import torch

from latentspace.crsm.mcts import MCTS

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
