"""Generation with the planner: greedy decoding, the planner off, synchronous or in the background.

With the planner on, each token boundary hands the current latent state to a search (`planner.py`); a search's
delta moves the canonical state (`CRSM.apply_state_delta`) and its most-visited move is the token when it is for
the position being decoded.
"""

from __future__ import annotations

import dataclasses
import time

import torch

from .planner import AsyncPlanner, Planner, RewardFn, _compute_delta_from_mcts, make_mcts
from .planner_process import ProcessPlanner


@dataclasses.dataclass
class Generation:
    tokens: list[int]
    text: str
    seconds: float
    searches: int = 0
    deltas_applied: int = 0
    planned_tokens: int = 0

    @property
    def tokens_per_s(self) -> float:
        return len(self.tokens) / max(self.seconds, 1e-9)


@torch.no_grad()
def generate(model, prompt: list[int], max_new_tokens: int = 64, planner: str = "off",
             reward_fn: RewardFn | None = None, num_simulations: int | None = None,
             transition: str | None = None, time_budget: float | None = None, stop_at_eos: bool = True,
             planner_backend: str = "process", planner_nice: int = 19) -> Generation:
    """Greedy decoding from `prompt` with the planner off, synchronous (search, then decode) or asynchronous.

    Args:
        model: a CRSM.
        prompt: token ids (at least one).
        planner: "off", "sync" (each token is the search's most-visited move; its delta is applied first)
            or "async" (a background search per token boundary; deltas applied when ready).
        reward_fn: the task's verifier of a finished continuation (generated tokens -> value), if any.
        planner_backend: where the async search runs: "process" (`ProcessPlanner`, no GIL contention; needs a
            picklable `reward_fn`; CPU models only, a model on another device uses the thread) or "thread"
            (`AsyncPlanner`).
        planner_nice: the planner process's CPU niceness.
    """
    if planner not in ("off", "sync", "async"):
        raise ValueError(f"planner={planner!r}: expected off, sync or async")
    if planner_backend not in ("process", "thread"):
        raise ValueError(f"planner_backend={planner_backend!r}: expected process or thread")
    if not prompt:
        raise ValueError("generate needs a non-empty prompt")
    model.eval()
    device = next(model.parameters()).device
    sims = num_simulations or model.config.mcts_simulations
    budget = model.config.planner_budget_s if time_budget is None else time_budget
    if device.type != "cpu":
        planner_backend = "thread"  # the process planner shares CPU memory only
    start = time.perf_counter()
    background: Planner | None = None
    if planner == "async" and planner_backend == "process":  # the model's planner process, started on first use
        background = ProcessPlanner(model, sims, budget, reward_fn=reward_fn, transition=transition,
                                    nice=planner_nice)
    latent, caches = model.prefill(torch.tensor([prompt], device=device))
    model.set_latent_state(latent)  # (1, D)
    out: list[int] = []
    stats = {"searches": 0, "deltas_applied": 0, "planned_tokens": 0}
    mcts = make_mcts(model, reward_fn, transition) if planner == "sync" or planner_backend == "thread" else None
    if planner == "async":
        background = (background or AsyncPlanner(mcts, sims, budget)).start()
    try:
        for position in range(max_new_tokens):
            token = None
            if planner == "sync":
                search = mcts.search(model.get_latent_state(), caches, sims, prefix=out)
                model.apply_state_delta(_compute_delta_from_mcts(search).unsqueeze(0))
                stats["searches"] += 1
                stats["deltas_applied"] += 1
                stats["planned_tokens"] += 1
                token = search.best_action
            elif planner == "async":
                result = background.poll()
                if result is not None:
                    model.apply_state_delta(result.delta.unsqueeze(0))
                    stats["deltas_applied"] += 1
                    if result.position == position:
                        token = result.action
                        stats["planned_tokens"] += 1
                background.submit(position, model.get_latent_state(), caches, out)
            if token is None:
                token = int(model.logits(model.get_latent_state()).argmax(-1))
            out.append(token)
            if stop_at_eos and token == model.eos_id:
                break
            latent, caches = model.step(torch.tensor([token], device=device), caches)
            model.set_latent_state(latent)
    finally:
        if background is not None:
            background.close()
            stats["searches"] = background.searches
    return Generation(out, model.decode(out), time.perf_counter() - start, **stats)
