"""The planner: MCTS results turned into state deltas, and the background planner's interface (thread backend here).

`_compute_delta_from_mcts` is the visit-weighted difference between the best future states found by the
search and the current state. A background planner searches while generation goes on: the generating thread
`submit`s a snapshot of its state at each token boundary and `poll`s for finished results without ever
waiting; a finished result's delta is applied to the canonical state (`CRSM.apply_state_delta`) at the
next token boundary, and its chosen token is used when it is for the position being decoded. Each search
is bounded (simulations and seconds), and `close()` stops the planner cleanly.

Two planners share that interface (`Planner`):

- `AsyncPlanner` (here): the search on a thread of the generating process: no start-up and any `reward_fn`, but
  every Python step of the search holds the GIL the generating thread needs.
- `ProcessPlanner` (`planner_process.py`, the default of `generate(planner="async")`): the search in a child
  process, so its Python does not compete with generation for the GIL.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from typing import Protocol

import torch

from .mcts import MCTS, SearchResult

RewardFn = Callable[[list[int]], float | None]


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


class Planner(Protocol):
    """A background planner, as `generate` drives it: `AsyncPlanner` (a thread) or `ProcessPlanner` (a process)."""

    searches: int  # searches finished (for this generation)

    def start(self) -> Planner:
        """Begin planning; returns at once."""

    def submit(self, position: int, latent: torch.Tensor, caches, prefix: list[int]) -> None:
        """Ask for a search from this state (replacing any request not yet started); returns at once."""

    def poll(self) -> PlanResult | None:
        """The newest finished result not yet taken, or None; never waits for a search."""

    def close(self, timeout: float = 10.0) -> bool:
        """Stop planning after the search in progress; True when it is over."""

    @property
    def alive(self) -> bool: ...

    @property
    def error(self) -> BaseException | None:
        """What ended the planner's searches, if anything did (generation goes on without plans)."""


def search_settings(model, reward_fn: RewardFn | None = None, transition: str | None = None, **overrides) -> dict:
    """The MCTS settings of the model's config (top_k, c_puct, batch, max_depth, transition), with overrides."""
    c = model.config
    settings = dict(top_k=c.mcts_top_k, c_puct=c.mcts_c_puct, batch=c.mcts_batch, max_depth=c.mcts_max_depth,
                    transition=transition or c.transition, reward_fn=reward_fn)
    settings.update(overrides)
    return settings


def make_mcts(model, reward_fn: RewardFn | None = None, transition: str | None = None, **overrides) -> MCTS:
    """An MCTS with the model's configured search settings (overridable)."""
    return MCTS(model, **search_settings(model, reward_fn, transition, **overrides))


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
