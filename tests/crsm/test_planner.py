import threading

import torch

from latentspace.crsm.mcts import MCTS, SearchResult
from latentspace.crsm.planner import AsyncPlanner, _compute_delta_from_mcts, make_mcts, search_settings

from .conftest import planner_model, wait_result


def test_delta_is_visit_weighted_difference_to_future_states():
    result = SearchResult(actions=[1, 2], visits=[3, 1], q_values=[0.5, 0.5], priors=[0.5, 0.5],
                          root_latent=torch.tensor([1.0, 1.0]), future_latents=torch.tensor([[3.0, 1.0], [1.0, 5.0]]),
                          simulations=4, seconds=0.0)
    torch.testing.assert_close(_compute_delta_from_mcts(result), torch.tensor([1.5, 1.0]))


def test_apply_state_delta_is_thread_safe():
    model = planner_model()
    model.set_latent_state(torch.zeros(1, 32))
    delta = torch.ones(1, 32)
    threads = [threading.Thread(target=lambda: [model.apply_state_delta(delta, 0.5) for _ in range(200)])
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    torch.testing.assert_close(model.get_latent_state(), torch.full((1, 32), 400.0))


def test_async_results_arrive_and_planner_closes_cleanly():
    model = planner_model()
    planner = AsyncPlanner(MCTS(model, batch=4, max_depth=3), num_simulations=8, time_budget=None).start()
    latent, caches = model.prefill(torch.tensor([model.encode("ab")]))
    planner.submit(0, latent[0], caches, [])
    result = wait_result(planner, 10)
    assert result is not None and result.position == 0 and result.delta.shape == (32,)
    assert planner.poll() is None  # taken once
    assert planner.close(timeout=5) and not planner.alive


def test_make_mcts_takes_the_models_search_settings_with_overrides():
    model = planner_model()
    mcts = make_mcts(model, transition="dynamics", batch=2)
    c = model.config
    assert (mcts.top_k, mcts.c_puct, mcts.batch, mcts.max_depth, mcts.transition) == (
        c.mcts_top_k, c.mcts_c_puct, 2, c.mcts_max_depth, "dynamics")
    assert search_settings(model)["transition"] == c.transition
