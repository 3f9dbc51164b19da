import threading
import time

import torch

from latentspace.crsm.config import CRSMConfig
from latentspace.crsm.mcts import MCTS, SearchResult
from latentspace.crsm.model import CRSM
from latentspace.crsm.planner import AsyncPlanner, _compute_delta_from_mcts, generate


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


def test_async_planner_never_blocks_generation_and_shuts_down():
    torch.manual_seed(0)
    model = SlowModel(CRSMConfig.preset("tiny").replace(mcts_batch=1)).eval()
    prompt = model.encode("hello")
    start = time.perf_counter()
    out = generate(model, prompt, 20, planner="async", num_simulations=50, time_budget=10.0, stop_at_eos=False)
    assert len(out.tokens) == 20
    # one search needs 50 leaves x 0.2 s = 10 s, so waiting for searches would take >= 200 s for 20 tokens;
    # generation (close() included, which waits only for the leaf in progress) took a few seconds at most
    assert out.seconds < 4.0, out.seconds
    assert time.perf_counter() - start < 5.0
    assert not any(t.name == "crsm-planner" for t in threading.enumerate())


def test_async_results_arrive_and_planner_closes_cleanly():
    model = _model()
    planner = AsyncPlanner(MCTS(model, batch=4, max_depth=3), num_simulations=8, time_budget=None).start()
    latent, caches = model.prefill(torch.tensor([model.encode("ab")]))
    planner.submit(0, latent[0], caches, [])
    deadline = time.time() + 10
    result = None
    while result is None and time.time() < deadline:
        result = planner.poll()
        time.sleep(0.01)
    assert result is not None and result.position == 0 and result.delta.shape == (32,)
    assert planner.poll() is None  # taken once
    assert planner.close(timeout=5) and not planner.alive


def test_sync_and_off_generation_agree_in_length_and_planner_modes_work():
    model = _model()
    prompt = model.encode("x = ")
    off = generate(model, prompt, 5, planner="off", stop_at_eos=False)
    sync = generate(model, prompt, 5, planner="sync", stop_at_eos=False, transition="dynamics")
    assert len(off.tokens) == len(sync.tokens) == 5
    assert sync.searches == 5 and sync.deltas_applied == 5
