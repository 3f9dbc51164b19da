import threading
import time

import pytest
import torch

from latentspace.crsm.config import CRSMConfig
from latentspace.crsm.generate import generate
from latentspace.crsm.model import CRSM
from latentspace.crsm.planner_process import planner_worker, shutdown_planners, warm_up

from .conftest import planner_model, planner_processes, wait_ready


class SlowModel(CRSM):
    """Backbone steps inside the search are slow (as a big model's would be); generation's own steps are not."""

    def value(self, latent):
        if threading.current_thread().name == "crsm-planner":
            time.sleep(0.2)
        return super().value(latent)


@pytest.mark.parametrize("backend", ["process", "thread"])
def test_async_planner_never_blocks_generation_and_shuts_down(backend):
    torch.manual_seed(0)
    model = SlowModel(CRSMConfig.preset("tiny").replace(mcts_batch=1)).eval()
    prompt = model.encode("hello")
    if backend == "process":  # the child is up and searching (slowly) while generation runs
        warm_up()
        wait_ready(planner_worker(model))
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
        assert planner_worker(model).process.pid in [p.pid for p in planner_processes()]  # kept for reuse
        start = time.perf_counter()
        assert shutdown_planners(timeout=10.0)  # stops mid-search (after the leaf in progress)
        assert time.perf_counter() - start < 5.0
        assert not planner_processes()


def test_sync_and_off_generation_agree_in_length_and_planner_modes_work():
    model = planner_model()
    prompt = model.encode("x = ")
    off = generate(model, prompt, 5, planner="off", stop_at_eos=False)
    sync = generate(model, prompt, 5, planner="sync", stop_at_eos=False, transition="dynamics")
    assert len(off.tokens) == len(sync.tokens) == 5
    assert sync.searches == 5 and sync.deltas_applied == 5
