"""The planner: MCTS results turned into state deltas, a background planner thread, and generation with it.

`_compute_delta_from_mcts` is the visit-weighted difference between the best future states found by the
search and the current state. `AsyncPlanner` runs searches on its own thread: the generating thread
`submit`s a snapshot of its state at each token boundary and `poll`s for finished results without ever
waiting; a finished result's delta is applied to the canonical state (`CRSM.apply_state_delta`) at the
next token boundary, and its chosen token is used when it is for the position being decoded. Each search
is bounded (simulations and seconds), and `close()` stops the thread cleanly.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable

import torch

from .mcts import MCTS, SearchResult


def _compute_delta_from_mcts(result: SearchResult) -> torch.Tensor:
    """delta = sum_a pi(a) (h_future(a) - h_root), pi the root's visit distribution: (D,)."""
    pi = result.policy.to(result.future_latents)  # (K,)
    return (pi.unsqueeze(-1) * (result.future_latents - result.root_latent.unsqueeze(0))).sum(0)


@dataclasses.dataclass
class PlanResult:
    position: int  # the generated-token index the search was rooted at
    action: int
    delta: torch.Tensor  # (D,)
    search: SearchResult


class AsyncPlanner:
    """A background thread that searches from the latest submitted state; never blocks its caller.

    Args:
        mcts: the search (owned by this thread once started).
        num_simulations, time_budget: the bound on one search.
    """

    def __init__(self, mcts: MCTS, num_simulations: int = 32, time_budget: float | None = 0.05):
        self.mcts = mcts
        self.num_simulations = num_simulations
        self.time_budget = time_budget
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._request: tuple | None = None
        self._result: PlanResult | None = None
        self._stop = False
        self.error: BaseException | None = None
        self.searches = 0
        self._thread = threading.Thread(target=self._run, name="crsm-planner", daemon=True)

    def start(self) -> AsyncPlanner:
        self._thread.start()
        return self

    def submit(self, position: int, latent: torch.Tensor, caches, prefix: list[int]) -> None:
        """Ask for a search from this state (replacing any request not yet started); returns at once."""
        with self._wake:
            self._request = (position, latent, caches, list(prefix))
            self._wake.notify()

    def poll(self) -> PlanResult | None:
        """The newest finished result not yet taken, or None; never waits for a search."""
        with self._lock:
            result, self._result = self._result, None
            return result

    def _run(self) -> None:
        while True:
            with self._wake:
                while self._request is None and not self._stop:
                    self._wake.wait()
                if self._stop:
                    return
                position, latent, caches, prefix = self._request
                self._request = None
            try:
                search = self.mcts.search(latent, caches, self.num_simulations, self.time_budget, prefix=prefix,
                                          stop=lambda: self._stop)
            except BaseException as err:  # keep the error for the caller; generation goes on without plans
                self.error = err
                return
            result = PlanResult(position, search.best_action, _compute_delta_from_mcts(search), search)
            with self._lock:
                self._result = result
                self.searches += 1

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self, timeout: float = 10.0) -> bool:
        """Stop the thread after its current search; True when it has ended."""
        with self._wake:
            self._stop = True
            self._wake.notify()
        if self._thread.ident is not None:
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def __enter__(self) -> AsyncPlanner:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


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


def make_mcts(model, reward_fn: Callable[[list[int]], float | None] | None = None, transition: str | None = None,
              **overrides) -> MCTS:
    """An MCTS with the model's configured search settings (overridable)."""
    c = model.config
    settings = dict(top_k=c.mcts_top_k, c_puct=c.mcts_c_puct, batch=c.mcts_batch, max_depth=c.mcts_max_depth,
                    transition=transition or c.transition, reward_fn=reward_fn)
    settings.update(overrides)
    return MCTS(model, **settings)


@torch.no_grad()
def generate(model, prompt: list[int], max_new_tokens: int = 64, planner: str = "off",
             reward_fn: Callable[[list[int]], float | None] | None = None, num_simulations: int | None = None,
             transition: str | None = None, time_budget: float | None = None, stop_at_eos: bool = True) -> Generation:
    """Greedy decoding from `prompt` with the planner off, synchronous (search, then decode) or asynchronous.

    Args:
        model: a CRSM.
        prompt: token ids (at least one).
        planner: "off", "sync" (each token is the search's most-visited move; its delta is applied first)
            or "async" (a background search per token boundary; deltas applied when ready).
        reward_fn: the task's verifier of a finished continuation (generated tokens -> value), if any.
    """
    if planner not in ("off", "sync", "async"):
        raise ValueError(f"planner={planner!r}: expected off, sync or async")
    if not prompt:
        raise ValueError("generate needs a non-empty prompt")
    model.eval()
    device = next(model.parameters()).device
    sims = num_simulations or model.config.mcts_simulations
    budget = model.config.planner_budget_s if time_budget is None else time_budget
    start = time.perf_counter()
    latent, caches = model.prefill(torch.tensor([prompt], device=device))
    model.set_latent_state(latent)  # (1, D)
    out: list[int] = []
    stats = {"searches": 0, "deltas_applied": 0, "planned_tokens": 0}
    mcts = make_mcts(model, reward_fn, transition) if planner != "off" else None
    background = AsyncPlanner(mcts, sims, budget).start() if planner == "async" else None
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
