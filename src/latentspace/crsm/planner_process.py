"""The process planner: the search in a long-lived child process, so its Python does not take generation's GIL.

`ProcessPlanner` (the default of `generate(planner="async")`) has the interface of `planner.AsyncPlanner`. The
model's weights are in shared memory (no copy); the request (latent, caches, position, prefix) and the result
(delta, action, the root's statistics) go through small preallocated shared-memory tensors (`_Arena`) under an
inter-process lock that the generating side only ever *tries* to take (a busy lock means "not now": the request
is kept for the next token boundary, a result is picked up at the next poll), so generation never waits on the
child. The child runs at a low CPU priority (`nice`, default 19): on a free core it searches at full speed, on a
busy machine it yields to the generating process instead of taking its core. The child is forked from a
forkserver that has torch and this module imported (started once per interpreter, `warm_up()`), so starting a
planner costs ~no import time, and it is started from a helper thread, so even the first start does not hold up
generation (plans just begin later). One child per model and niceness (`planner_worker`) serves one generation
after another (`ProcessPlanner` sessions) until `shutdown_planners()`. The search and the reward function run in
the child: `reward_fn` must be picklable.
"""

from __future__ import annotations

import atexit
import math
import multiprocessing
import os
import pickle
import threading
import time
import traceback
from pathlib import Path

import torch
import torch.multiprocessing  # noqa: F401  (registers the shared-memory tensor reductions with the pickler)

from .kernels import search_kernels
from .mcts import MCTS, SearchResult
from .planner import PlanResult, RewardFn, _compute_delta_from_mcts, search_settings
from .tokenizer import tokenizer_to_json

# slots of the shared control tensor (int64)
(_REQ_SEQ, _REQ_SESSION, _REQ_POS, _REQ_LEN, _RES_SEQ, _RES_SESSION, _RES_POS, _RES_ACTION, _RES_SIMS, _RES_ROUNDS,
 _RES_EVALUATED, _RES_K, _SEARCHES, _SEARCH_SESSION, _ACTIVE, _STOP, _READY, _FAILED, _CFG_SESSION,
 _CFG_LEN) = range(20)
_N_CTRL = 20
_CONFIG_BYTES = 1 << 20  # most bytes of one session's pickled settings (its reward_fn included)
_CONTEXT = None


def _context():
    """The forkserver context. Its server preloads what a planner child needs, so a child starts in milliseconds:
    torch, this module, the tokenizer class and torch._dynamo (which building a model on the meta device imports).
    """
    global _CONTEXT
    if _CONTEXT is None:
        from transformers import PreTrainedTokenizerFast

        _CONTEXT = multiprocessing.get_context("forkserver")
        _CONTEXT.set_forkserver_preload(["torch", "torch.multiprocessing", "torch._dynamo", "latentspace.crsm.model",
                                         "latentspace.crsm.planner_process", PreTrainedTokenizerFast.__module__])
    return _CONTEXT


def warm_up() -> None:
    """Start the planner processes' forkserver now (it imports torch once), so no later start waits for it."""
    _context()
    from multiprocessing import forkserver

    forkserver.ensure_running()


class _Arena:
    """Typed tensors carved out of one shared-memory buffer per dtype, rebuilt in the child from their layout.

    Every shared tensor crosses to the child as a file descriptor fetched from the parent, so the planner sends a
    handful of flat buffers (weights, float32, int64, float64) instead of one per tensor.
    """

    def __init__(self, shapes: dict[str, tuple[tuple[int, ...], torch.dtype]]):
        self.layout: dict[str, tuple[torch.dtype, int, tuple[int, ...]]] = {}
        sizes: dict[torch.dtype, int] = {}
        for name, (shape, dtype) in shapes.items():
            self.layout[name] = (dtype, sizes.get(dtype, 0), shape)
            sizes[dtype] = sizes.get(dtype, 0) + math.prod(shape)
        self.buffers = {dtype: torch.zeros(n, dtype=dtype).share_memory_() for dtype, n in sizes.items()}
        self.views = self._views()

    def _views(self) -> dict[str, torch.Tensor]:
        return {name: self.buffers[dtype][offset : offset + math.prod(shape)].view(shape)
                for name, (dtype, offset, shape) in self.layout.items()}

    def __getstate__(self):
        return {"layout": self.layout, "buffers": self.buffers}

    def __setstate__(self, state):
        self.layout, self.buffers = state["layout"], state["buffers"]
        self.views = self._views()


def _shared_weights(model) -> tuple[torch.Tensor, dict[str, tuple[int, tuple[int, ...]]]]:
    """The model's weights as views of one shared buffer (made once, in place): (flat, name -> (offset, shape))."""
    cached = getattr(model, "_shared_weights", None)
    state = model.state_dict(keep_vars=True)
    if cached is not None:
        flat, layout = cached
        lo, hi = flat.data_ptr(), flat.data_ptr() + flat.numel() * flat.element_size()
        if set(layout) == set(state) and all(lo <= t.data_ptr() < hi for t in state.values()):
            return cached
    if len({t.dtype for t in state.values()}) != 1:
        raise ValueError("the process planner shares weights of one dtype; use planner_backend='thread' for this model")
    unique: dict[int, tuple[int, torch.Tensor]] = {}  # data_ptr -> (offset, tensor): tied weights once
    total = 0
    for t in state.values():
        if t.data_ptr() not in unique:
            unique[t.data_ptr()] = (total, t)
            total += t.numel()
    flat = torch.empty(total, dtype=next(iter(state.values())).dtype).share_memory_()
    with torch.no_grad():
        for offset, t in unique.values():
            view = flat[offset : offset + t.numel()].view(t.shape)
            view.copy_(t)
            t.data = view  # the parent's own weights now live in the shared buffer (in-place updates are seen)
    layout = {name: ((t.data_ptr() - flat.data_ptr()) // flat.element_size(), tuple(t.shape))
              for name, t in model.state_dict(keep_vars=True).items()}
    model._shared_weights = (flat, layout)
    return model._shared_weights


def _rebuild_model(cls, config, tokenizer_json: str, flat: torch.Tensor, layout: dict):
    """The child's copy of the model: built on the meta device, its weights views of the shared buffer."""
    from .tokenizer import tokenizer_from_json

    with torch.device("meta"):
        model = cls(config, tokenizer_from_json(tokenizer_json, expected_size=config.vocab_size))
    state = {name: flat[offset : offset + math.prod(shape)].view(shape) for name, (offset, shape) in layout.items()}
    model.load_state_dict(state, assign=True)
    return model.eval()


def _single_threaded_blas() -> None:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(1, user_api="blas")


def _worker_main(model_spec: tuple, arena: _Arena, lock, wake, errors, nice: int, n_layers: int) -> None:
    """The planner process: for each session (settings in shared memory), search from each request, publish results.

    Runs until told to stop or its parent is gone. A search stops early when its session is closed. `wake` is a
    semaphore the parent posts once per request (a post never waits, unlike an Event's set, which waits for the
    woken process to run); the child drains it.
    """
    threading.current_thread().name = "crsm-planner"
    io = arena.views
    ctrl = io["ctrl"]
    try:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, nice)
        except OSError:
            pass
        torch.set_num_threads(1)
        _single_threaded_blas()  # this process only searches: NumPy's small products too (see kernels.py)
        parent = multiprocessing.parent_process()
        model = _rebuild_model(*model_spec)
        caches_io = [(io[f"conv{i}"], io[f"ssm{i}"]) for i in range(n_layers)]
        ctrl[_READY] = 1
        session, mcts, sims, budget, seen = 0, None, 0, None, 0
        with torch.no_grad():
            while not ctrl[_STOP]:
                if int(ctrl[_REQ_SEQ]) == seen:
                    if wake.acquire(timeout=0.1):
                        while wake.acquire(False):  # drain the posts of requests already superseded
                            pass
                    elif parent is not None and not parent.is_alive():
                        break
                    continue
                with lock:
                    seen, want, position, n = (int(ctrl[_REQ_SEQ]), int(ctrl[_REQ_SESSION]), int(ctrl[_REQ_POS]),
                                               int(ctrl[_REQ_LEN]))
                    latent = io["latent"].clone()
                    prefix = io["prefix"][:n].tolist()
                    config = None
                    if want != session and int(ctrl[_CFG_SESSION]) == want:  # written with the session's 1st request
                        config = io["config"][: int(ctrl[_CFG_LEN])].numpy().tobytes()
                        ctrl[_SEARCHES], ctrl[_SEARCH_SESSION] = 0, want
                    caches = None  # the parent writes them for backbone transitions only
                    if config is not None or mcts is None or mcts.transition == "backbone":
                        caches = [(conv.clone(), ssm.clone()) for conv, ssm in caches_io]
                if config is not None:
                    settings, sims, budget = pickle.loads(config)
                    session = want
                    # the parent may have updated the shared weights since the last session: fused kernels anew
                    search_kernels(model, rebuild=True)
                    mcts = MCTS(model, **settings)
                if want != session or int(ctrl[_ACTIVE]) != session:
                    continue  # a request of a closed session
                search = mcts.search(latent, caches if mcts.transition == "backbone" else None, sims, budget,
                                     prefix=prefix,
                                     stop=lambda s=session: int(ctrl[_ACTIVE]) != s or bool(ctrl[_STOP]))
                delta = _compute_delta_from_mcts(search)
                k = len(search.actions)
                with lock:
                    io["delta"].copy_(delta)
                    io["actions"][:k] = torch.tensor(search.actions)
                    io["visits"][:k] = torch.tensor(search.visits)
                    io["q_values"][:k] = torch.tensor(search.q_values, dtype=torch.float64)
                    io["priors"][:k] = torch.tensor(search.priors, dtype=torch.float64)
                    io["futures"][:k] = search.future_latents
                    io["seconds"][0] = search.seconds
                    for slot, value in ((_RES_SESSION, session), (_RES_POS, position),
                                        (_RES_ACTION, search.best_action), (_RES_SIMS, search.simulations),
                                        (_RES_ROUNDS, search.rounds), (_RES_EVALUATED, search.evaluated), (_RES_K, k)):
                        ctrl[slot] = value
                    ctrl[_SEARCHES] += 1
                    ctrl[_RES_SEQ] += 1
    except BaseException:  # report to the parent; generation goes on without plans
        ctrl[_FAILED] = 1
        try:
            errors.send(traceback.format_exc())
        except OSError:
            pass
    os._exit(0)  # nothing to flush (the shared buffers are the parent's); skip the slow interpreter teardown


class PlannerWorker:
    """A long-lived planner process for one model; `ProcessPlanner` sessions (one per generation) run on it.

    The model's weights are views of one shared-memory buffer (the parent's own weights are moved there once, in
    place, so updates made in the parent are seen by the child). Starting the process happens on a helper thread,
    so the caller never waits for it; requests made before it is ready wait in shared memory.

    Args:
        model: a CRSM on the CPU.
        nice: the process's CPU niceness (0 = generation's priority, 19 = only CPU nobody else wants).
        max_prefix: most tokens before a root (a longer request is dropped).
    """

    def __init__(self, model, nice: int = 19, max_prefix: int = 4096):
        if next(model.parameters()).device.type != "cpu":
            raise ValueError("the process planner runs CPU models; use planner_backend='thread' on a GPU")
        c = model.config
        self.model, self.nice = model, nice
        self.weights, layout = _shared_weights(model)
        d, k = c.d_model, min(c.mcts_top_k, c.vocab_size)
        self.k = k
        i64, f64, f32 = torch.int64, torch.float64, self.weights.dtype
        shapes = {"ctrl": ((_N_CTRL,), i64), "config": ((_CONFIG_BYTES,), torch.uint8),
                  "prefix": ((max_prefix,), i64), "actions": ((k,), i64),
                  "visits": ((k,), i64), "q_values": ((k,), f64), "priors": ((k,), f64), "seconds": ((1,), f64),
                  "latent": ((d,), f32), "delta": ((d,), f32), "futures": ((k, d), f32)}
        for i, (conv, ssm) in enumerate(model.backbone.empty_caches(1)):
            shapes[f"conv{i}"], shapes[f"ssm{i}"] = (tuple(conv.shape), conv.dtype), (tuple(ssm.shape), ssm.dtype)
        self.arena = _Arena(shapes)
        self.io = self.arena.views
        ctx = _context()
        self.lock, self.wake = ctx.Lock(), ctx.Semaphore(0)
        self._errors, child_errors = ctx.Pipe(duplex=False)
        spec = (type(model), c, tokenizer_to_json(model.tokenizer), self.weights, layout)
        self.process = ctx.Process(target=_worker_main, name="crsm-planner", daemon=True, args=(
            spec, self.arena, self.lock, self.wake, child_errors, nice, c.n_layers))
        self._starter = threading.Thread(target=self._launch, name="crsm-planner-start", daemon=True)
        self._starter.start()
        self.sessions = 0
        self.session_lock = threading.Lock()  # one session at a time
        self._error: BaseException | None = None
        self._seq = 0  # requests written

    def _launch(self) -> None:
        try:
            self.process.start()
        except BaseException as err:
            self._error = err

    def fits(self, model, nice: int) -> bool:
        """Whether this worker can serve `model` now (alive, same weights buffer, same niceness)."""
        return (self.alive and self.error is None and nice == self.nice and self.model is model
                and getattr(model, "_shared_weights", (None,))[0] is self.weights
                and _shared_weights(model)[0] is self.weights)

    def cpu_seconds(self) -> float | None:
        """CPU time the process has used so far (user + system; Linux /proc), or None where unknown."""
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError, TypeError):
            return None

    @property
    def ready(self) -> bool:
        """Whether the process is up and has built its copy of the model."""
        return bool(self.io["ctrl"][_READY])

    @property
    def alive(self) -> bool:
        return self._starter.is_alive() or self.process.is_alive()

    @property
    def error(self) -> BaseException | None:
        if self._error is None and bool(self.io["ctrl"][_FAILED]) and self._errors.poll():
            self._error = RuntimeError(f"planner process failed:\n{self._errors.recv()}")
        return self._error

    def shutdown(self, timeout: float = 10.0) -> bool:
        """Stop the process after its current round; True when it has ended (killed if it outlives `timeout`)."""
        self.io["ctrl"][_STOP] = 1
        self.wake.release()
        deadline = time.monotonic() + timeout
        self._starter.join(timeout)
        if self.process.pid is not None:
            self.process.join(max(0.0, deadline - time.monotonic()))
            if self.process.is_alive():
                self.process.kill()
                self.process.join(1.0)
            self.error  # noqa: B018  (collect a failure report while the pipe is open)
        return not self.alive


_WORKERS: dict[tuple[int, int], PlannerWorker] = {}  # (id(model), nice) -> worker (it holds the model: ids stay unique)
_RETIRED: list[PlannerWorker] = []  # told to stop, not yet reaped
_MAX_WORKERS = 4
_WORKERS_LOCK = threading.Lock()


def _retire(worker: PlannerWorker) -> None:
    worker.io["ctrl"][_STOP] = 1
    worker.wake.release()
    _RETIRED.append(worker)


def planner_worker(model, nice: int = 19) -> PlannerWorker:
    """The model's planner process at this niceness, started on first use (again if it died or the weights moved).

    At most `_MAX_WORKERS` are kept; starting one more retires the oldest (told to stop, without waiting for it).
    """
    with _WORKERS_LOCK:
        _RETIRED[:] = [w for w in _RETIRED if w.alive]
        key = (id(model), nice)
        worker = _WORKERS.get(key)
        if worker is not None and not worker.fits(model, nice):
            _retire(_WORKERS.pop(key))
            worker = None
        if worker is None:
            while len(_WORKERS) >= _MAX_WORKERS:
                _retire(_WORKERS.pop(next(iter(_WORKERS))))
            worker = _WORKERS[key] = PlannerWorker(model, nice)
        return worker


def shutdown_planners(timeout: float = 10.0) -> bool:
    """Stop every planner process (each after its current round); True when all have ended. Run at exit too."""
    with _WORKERS_LOCK:
        workers = list(_WORKERS.values()) + _RETIRED
        _WORKERS.clear()
        _RETIRED.clear()
    for worker in workers:
        _retire(worker)
    return all([worker.shutdown(timeout) for worker in workers])


atexit.register(shutdown_planners, 2.0)


class ProcessPlanner:
    """One generation's planning on the model's planner process; never blocks its caller.

    Same interface as `AsyncPlanner` (start, submit, poll, close, alive, searches, error). `start` sends the
    session's settings (a small pickle through a pipe); `close` ends the session (its search stops after the
    round in progress) without waiting for the process, which stays up for the next generation
    (`shutdown_planners()` ends it).

    Args:
        model: the CRSM.
        num_simulations, time_budget: the bound on one search.
        reward_fn: the verifier of terminal nodes (it must be picklable: it runs in the child), or None.
        transition: "dynamics" or "backbone" (default: the model's).
        nice: the planner process's CPU niceness.
        **overrides: other MCTS settings (c_puct, batch, max_depth; top_k up to the model's `mcts_top_k`).
    """

    def __init__(self, model, num_simulations: int = 32, time_budget: float | None = 0.05,
                 reward_fn: RewardFn | None = None, transition: str | None = None, nice: int = 19, **overrides):
        c = model.config
        self.settings = search_settings(model, reward_fn, transition, **overrides)
        if self.settings["top_k"] > c.mcts_top_k:
            raise ValueError(f"top_k={self.settings['top_k']} > the model's mcts_top_k={c.mcts_top_k}")
        self.num_simulations, self.time_budget = num_simulations, time_budget
        try:
            self._config = pickle.dumps((self.settings, num_simulations, time_budget))
        except Exception as err:
            raise ValueError(f"the process planner needs a picklable reward_fn ({err}); "
                             "use planner_backend='thread' for this one") from err
        if len(self._config) > _CONFIG_BYTES:
            raise ValueError(f"the planner's settings pickle to {len(self._config)} bytes (at most {_CONFIG_BYTES})")
        self._config_pending = False
        self.worker = planner_worker(model, nice)
        self.session = 0
        self._taken = 0
        self._pending: tuple | None = None
        self._prefix_written: list[int] = []
        self.dropped = 0

    def start(self) -> ProcessPlanner:
        """Open the session (waits for no one: a worker busy with another session drops it for this one).

        The settings go to shared memory with the session's first request.
        """
        worker = self.worker
        with worker.session_lock:
            worker.sessions += 1
            self.session = worker.sessions
            worker.io["ctrl"][_ACTIVE] = self.session
        self._config_pending = True
        self._taken = int(worker.io["ctrl"][_RES_SEQ])
        return self

    @property
    def ready(self) -> bool:
        return self.worker.ready

    def submit(self, position: int, latent: torch.Tensor, caches, prefix: list[int]) -> None:
        """Ask for a search from this state (replacing any request not yet started); returns at once."""
        self._pending = (position, latent, caches, prefix)
        self._flush()

    @torch.no_grad()
    def _flush(self) -> None:
        worker = self.worker
        if self._pending is None or not worker.lock.acquire(block=False):
            return  # the child is copying: the request waits for the next submit or poll
        try:
            position, latent, caches, prefix = self._pending
            self._pending = None
            io = worker.io
            if self._config_pending:
                io["config"][: len(self._config)] = torch.frombuffer(bytearray(self._config), dtype=torch.uint8)
                io["ctrl"][_CFG_LEN] = len(self._config)
                io["ctrl"][_CFG_SESSION] = self.session
                self._config_pending = False
            if len(prefix) > len(io["prefix"]):
                self.dropped += 1
                return
            written = self._prefix_written  # the prefix only grows during a generation: write what is new
            same = len(written) <= len(prefix) and prefix[: len(written)] == written
            start = len(written) if same else 0
            if len(prefix) > start:
                io["prefix"][start : len(prefix)] = torch.tensor(prefix[start:], dtype=torch.int64)
            self._prefix_written = list(prefix)
            io["latent"].copy_(latent.reshape(-1))
            if self.settings["transition"] == "backbone":
                for i, (conv, ssm) in enumerate(caches):
                    io[f"conv{i}"].copy_(conv)
                    io[f"ssm{i}"].copy_(ssm)
            ctrl = io["ctrl"]
            ctrl[_REQ_SESSION] = self.session
            ctrl[_REQ_POS] = position
            ctrl[_REQ_LEN] = len(prefix)
            worker._seq += 1
            ctrl[_REQ_SEQ] = worker._seq
        finally:
            worker.lock.release()
        worker.wake.release()

    @torch.no_grad()
    def poll(self) -> PlanResult | None:
        """The newest finished result not yet taken, or None; never waits for a search (nor for the lock)."""
        self._flush()
        worker = self.worker
        io = worker.io
        if int(io["ctrl"][_RES_SEQ]) == self._taken or not worker.lock.acquire(block=False):
            return None
        try:
            ctrl = io["ctrl"].tolist()
            self._taken = ctrl[_RES_SEQ]
            if ctrl[_RES_SESSION] != self.session:
                return None
            k = ctrl[_RES_K]
            search = SearchResult(
                actions=io["actions"][:k].tolist(), visits=io["visits"][:k].tolist(),
                q_values=io["q_values"][:k].tolist(), priors=io["priors"][:k].tolist(),
                root_latent=torch.empty(0), future_latents=io["futures"][:k].clone(), simulations=ctrl[_RES_SIMS],
                seconds=float(io["seconds"][0]), rounds=ctrl[_RES_ROUNDS], evaluated=ctrl[_RES_EVALUATED])
            return PlanResult(ctrl[_RES_POS], ctrl[_RES_ACTION], io["delta"].clone(), search)
        finally:
            worker.lock.release()

    @property
    def searches(self) -> int:
        """Searches this session has finished."""
        ctrl = self.worker.io["ctrl"].tolist()
        return ctrl[_SEARCHES] if ctrl[_SEARCH_SESSION] == self.session else 0

    @property
    def error(self) -> BaseException | None:
        return self.worker.error

    @property
    def alive(self) -> bool:
        """Whether the session is open on a live worker."""
        return self.worker.alive and int(self.worker.io["ctrl"][_ACTIVE]) == self.session

    def close(self, timeout: float = 10.0) -> bool:
        """End the session: its search stops after the round in progress. Never waits; True (the session is over)."""
        ctrl = self.worker.io["ctrl"]
        if int(ctrl[_ACTIVE]) == self.session:
            ctrl[_ACTIVE] = 0
        return True

    def __enter__(self) -> ProcessPlanner:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
