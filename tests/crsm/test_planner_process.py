import pickle
import threading
import time

import pytest
import torch

from latentspace.crsm.config import CRSMConfig
from latentspace.crsm.generate import generate
from latentspace.crsm.mcts import MCTS
from latentspace.crsm.model import CRSM
from latentspace.crsm.planner import _compute_delta_from_mcts
from latentspace.crsm.planner_process import ProcessPlanner, planner_worker, shutdown_planners, warm_up

from .conftest import planner_model, planner_processes, wait_ready, wait_result


@pytest.mark.parametrize("transition", ["dynamics", "backbone"])
def test_process_planner_returns_the_same_search_as_in_process(transition):
    """The child searches the parent's weights (shared memory) from the submitted state, caches and prefix."""
    model = planner_model()
    warm_up()
    latent, caches = model.prefill(torch.tensor([model.encode("abc")]))
    prefix = [5, 6, 7]
    expected = MCTS(model, top_k=4, batch=4, max_depth=3, transition=transition).search(
        latent[0], caches, 24, prefix=prefix)
    planner = ProcessPlanner(model, num_simulations=24, time_budget=None, transition=transition, batch=4,
                             max_depth=3, nice=0).start()
    planner.submit(3, latent[0], caches, prefix)
    result = wait_result(planner)
    assert result is not None and result.position == 3 and planner.searches == 1
    assert result.search.actions == expected.actions and result.search.visits == expected.visits
    torch.testing.assert_close(result.search.future_latents, expected.future_latents)
    torch.testing.assert_close(result.delta, _compute_delta_from_mcts(expected))
    assert result.action == expected.best_action
    assert planner.poll() is None  # taken once
    assert planner.close() and not planner.alive
    # a second session on the same process sees weights updated in the parent since the first
    with torch.no_grad():
        model.dynamics.net[4].bias.add_(0.5)
        model.value_head.net[2].bias.add_(1.0)
    expected = MCTS(model, top_k=4, batch=4, max_depth=3, transition=transition).search(
        latent[0], caches, 24, prefix=prefix)
    planner = ProcessPlanner(model, num_simulations=24, time_budget=None, transition=transition, batch=4,
                             max_depth=3, nice=0).start()
    assert planner.worker is planner_worker(model, nice=0)
    planner.submit(0, latent[0], caches, prefix)
    result = wait_result(planner)
    assert result is not None and result.search.q_values == pytest.approx(expected.q_values)
    torch.testing.assert_close(result.delta, _compute_delta_from_mcts(expected))
    planner.close()
    assert shutdown_planners(timeout=10.0) and not planner_processes()


class FailingModel(CRSM):
    def value(self, latent):
        if threading.current_thread().name == "crsm-planner":
            raise RuntimeError("value head broke")
        return super().value(latent)


def test_process_planner_failure_is_reported_and_generation_goes_on():
    torch.manual_seed(0)
    model = FailingModel(CRSMConfig.preset("tiny")).eval()
    warm_up()
    worker = planner_worker(model, nice=0)
    wait_ready(worker)
    # a short generation can end before the child gets CPU for its first search (a loaded machine): generate
    # again until the child has searched and failed; every generation must finish, with no delta applied
    deadline = time.time() + 60
    while worker.error is None and time.time() < deadline:
        out = generate(model, model.encode("hi"), 5, planner="async", stop_at_eos=False, planner_nice=0)
        assert len(out.tokens) == 5 and out.deltas_applied == 0
        for _ in range(25):
            if worker.error is not None:
                break
            time.sleep(0.02)
    assert "value head broke" in str(worker.error)
    assert shutdown_planners(timeout=10.0) and not planner_processes()


def test_process_planner_refuses_an_unpicklable_reward():
    model = planner_model()
    with pytest.raises(ValueError, match="picklable"):
        ProcessPlanner(model, reward_fn=lambda tokens: 1.0)
    pickle.dumps(model)  # the model itself pickles (its lock is dropped and rebuilt)
