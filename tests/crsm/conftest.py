import multiprocessing
import time

import torch


def tiny_crsm():
    """A tiny CRSM with peaked priors (descents collide, lines go deep), its root latent (D,) and caches."""
    from latentspace.crsm.config import CRSMConfig
    from latentspace.crsm.model import CRSM

    torch.manual_seed(0)
    model = CRSM(CRSMConfig.preset("tiny")).eval()
    with torch.no_grad():
        model.backbone.lm_head.weight.mul_(40.0)
    latent, caches = model.prefill(torch.tensor([model.encode("def f(x):")]))
    return model, latent[0], caches


def planner_model():
    """A tiny CRSM with small search settings (8 simulations, batch 4, depth 3)."""
    from latentspace.crsm.config import CRSMConfig
    from latentspace.crsm.model import CRSM

    torch.manual_seed(0)
    return CRSM(CRSMConfig.preset("tiny").replace(mcts_simulations=8, mcts_batch=4, mcts_max_depth=3)).eval()


def planner_processes():
    """The live planner child processes."""
    return [p for p in multiprocessing.active_children() if p.name == "crsm-planner"]


def wait_ready(worker, seconds=60.0):
    deadline = time.time() + seconds
    while not worker.ready and time.time() < deadline:
        assert worker.error is None, worker.error
        time.sleep(0.02)
    assert worker.ready, "the planner process did not start"


def wait_result(planner, seconds=30.0):
    deadline = time.time() + seconds
    result = None
    while result is None and time.time() < deadline:
        assert planner.error is None, planner.error
        result = planner.poll()
        time.sleep(0.01)
    return result
