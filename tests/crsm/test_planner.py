import multiprocessing
import pickle
import threading
import time

import pytest
import torch

from latentspace.crsm.config import CRSMConfig
from latentspace.crsm.mcts import MCTS, SearchResult
from latentspace.crsm.model import CRSM
from latentspace.crsm.planner import (
    AsyncPlanner,
    ProcessPlanner,
    _compute_delta_from_mcts,
    generate,
    planner_worker,
    shutdown_planners,
    warm_up,
)


def _model():
    torch.manual_seed(0)
    return CRSM(CRSMConfig.preset("tiny").replace(mcts_simulations=8, mcts_batch=4, mcts_max_depth=3)).eval()


def test_delta_is_visit_weighted_difference_to_future_states():
    result = SearchResult(actions=[1, 2], visits=[3, 1], q_values=[0.5, 0.5], priors=[0.5, 0.5],
                          root_latent=torch.tensor([1.0, 1.0]), future_latents=torch.tensor([[3.0, 1.0], [1.0, 5.0]]),
                          simulations=4, seconds=0.0)
    torch.testing.assert_close(_compute_delta_from_mcts(result), torch.tensor([1.5, 1.0]))


def test_apply_state_delta_is_thread_safe():
    model = _model()
    model.set_latent_state(torch.zeros(1, 32))
    delta = torch.ones(1, 32)
    threads = [threading.Thread(target=lambda: [model.apply_state_delta(delta, 0.5) for _ in range(200)])
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    torch.testing.assert_close(model.get_latent_state(), torch.full((1, 32), 400.0))


class SlowModel(CRSM):
    """Backbone steps inside the search are slow (as a big model's would be); generation's own steps are not."""

    def value(self, latent):
        if threading.current_thread().name == "crsm-planner":
            time.sleep(0.2)
        return super().value(latent)


def _planner_processes():
    return [p for p in multiprocessing.active_children() if p.name == "crsm-planner"]


def _wait_ready(worker, seconds=60.0):
    deadline = time.time() + seconds
    while not worker.ready and time.time() < deadline:
        assert worker.error is None, worker.error
        time.sleep(0.02)
    assert worker.ready, "the planner process did not start"


@pytest.mark.parametrize("backend", ["process", "thread"])
def test_async_planner_never_blocks_generation_and_shuts_down(backend):
    torch.manual_seed(0)
    model = SlowModel(CRSMConfig.preset("tiny").replace(mcts_batch=1)).eval()
    prompt = model.encode("hello")
    if backend == "process":  # the child is up and searching (slowly) while generation runs
        warm_up()
        _wait_ready(planner_worker(model))
    start = time.perf_counter()
    out = generate(model, prompt, 20, planner="async", num_simulations=50, time_budget=10.0, stop_at_eos=False,
                   planner_backend=backend)
    assert len(out.tokens) == 20
    # one search needs 50 leaves x 0.2 s = 10 s, so waiting for searches would take >= 200 s for 20 tokens;
    # generation (close() included, which waits only for the leaf in progress) took a few seconds at most
    assert out.seconds < 4.0, out.seconds
    assert time.perf_counter() - start < 5.0
    assert not any(t.name == "crsm-planner" for t in threading.enumerate())
    if backend == "process":
        assert planner_worker(model).process.pid in [p.pid for p in _planner_processes()]  # kept for reuse
        start = time.perf_counter()
        assert shutdown_planners(timeout=10.0)  # stops mid-search (after the leaf in progress)
        assert time.perf_counter() - start < 5.0
        assert not _planner_processes()


def _wait_result(planner, seconds=30.0):
    deadline = time.time() + seconds
    result = None
    while result is None and time.time() < deadline:
        assert planner.error is None, planner.error
        result = planner.poll()
        time.sleep(0.01)
    return result


def test_async_results_arrive_and_planner_closes_cleanly():
    model = _model()
    planner = AsyncPlanner(MCTS(model, batch=4, max_depth=3), num_simulations=8, time_budget=None).start()
    latent, caches = model.prefill(torch.tensor([model.encode("ab")]))
    planner.submit(0, latent[0], caches, [])
    result = _wait_result(planner, 10)
    assert result is not None and result.position == 0 and result.delta.shape == (32,)
    assert planner.poll() is None  # taken once
    assert planner.close(timeout=5) and not planner.alive


@pytest.mark.parametrize("transition", ["dynamics", "backbone"])
def test_process_planner_returns_the_same_search_as_in_process(transition):
    """The child searches the parent's weights (shared memory) from the submitted state, caches and prefix."""
    model = _model()
    warm_up()
    latent, caches = model.prefill(torch.tensor([model.encode("abc")]))
    prefix = [5, 6, 7]
    expected = MCTS(model, top_k=4, batch=4, max_depth=3, transition=transition).search(
        latent[0], caches, 24, prefix=prefix)
    planner = ProcessPlanner(model, num_simulations=24, time_budget=None, transition=transition, batch=4,
                             max_depth=3, nice=0).start()
    planner.submit(3, latent[0], caches, prefix)
    result = _wait_result(planner)
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
    result = _wait_result(planner)
    assert result is not None and result.search.q_values == pytest.approx(expected.q_values)
    torch.testing.assert_close(result.delta, _compute_delta_from_mcts(expected))
    planner.close()
    assert shutdown_planners(timeout=10.0) and not _planner_processes()


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
    _wait_ready(worker)
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
    assert shutdown_planners(timeout=10.0) and not _planner_processes()


def test_process_planner_refuses_an_unpicklable_reward():
    model = _model()
    with pytest.raises(ValueError, match="picklable"):
        ProcessPlanner(model, reward_fn=lambda tokens: 1.0)
    pickle.dumps(model)  # the model itself pickles (its lock is dropped and rebuilt)


def test_sync_and_off_generation_agree_in_length_and_planner_modes_work():
    model = _model()
    prompt = model.encode("x = ")
    off = generate(model, prompt, 5, planner="off", stop_at_eos=False)
    sync = generate(model, prompt, 5, planner="sync", stop_at_eos=False, transition="dynamics")
    assert len(off.tokens) == len(sync.tokens) == 5
    assert sync.searches == 5 and sync.deltas_applied == 5
