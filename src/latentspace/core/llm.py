"""Text generation for every family: an OpenAI-compatible HTTP client or local HF transformers.

`LLMClient.generate(prompts, params)` returns one completion per prompt. It

- asks the backend only for prompts it has not answered before: answers live in an append-only JSONL
  cache keyed by sha256 of (model, prompt, params); each answer is appended and flushed the moment it
  arrives, so a crash loses nothing already paid for and a rerun repeats no call (a torn last line
  is skipped on load);
- sends HTTP requests concurrently (a thread pool of `max_concurrency`), retrying transient failures
  (connection errors, timeouts, 408/409/429/5xx) with exponential backoff and jitter;
- counts calls, cache hits, retries and failures, and refuses to start calls past `budget`.

Backends: `OpenAIBackend` (vLLM, llama.cpp server, Ollama, hosted APIs; `/v1/chat/completions` or
`/v1/completions` through urllib, no extra dependency), `HFBackend` (a local transformers causal LM,
batched generation) and `CallableBackend` (a Python function: simulated task models, tests).
`MockOpenAIServer` is a threaded local server speaking the same protocol, with injectable failures and
delays, for tests and benchmarks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from .errors import LatentspaceError

log = logging.getLogger("latentspace")

RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class LLMError(LatentspaceError):
    """An LLM endpoint is unreachable, refuses a request, or keeps failing after every retry."""


class LLMBudgetExceeded(LLMError):
    """More LLM calls were asked for than the client's budget allows (answers so far are cached)."""


class TransientLLMError(Exception):
    """A failure worth retrying (timeout, connection reset, 429, 5xx)."""


@dataclasses.dataclass(frozen=True)
class GenerationParams:
    """Sampling settings; part of the cache key, so two settings never share an answer."""

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "stop": list(self.stop)}


def cache_key(model: str, prompt: str, params: GenerationParams) -> str:
    """sha256 of the canonical JSON of (model, prompt, params)."""
    blob = json.dumps({"model": model, "prompt": prompt, "params": params.to_dict()}, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ResponseCache:
    """Append-only JSONL cache: one line {"key", "model", "prompt", "params", "text", "time"} per answer.

    Every `put` appends, flushes and fsyncs one full line under a lock, so the file holds every answer
    received before a crash; on load a torn or corrupt line is skipped (and counted in `skipped_lines`).

    Args:
        path: the JSONL file (created with its folder); None keeps answers in memory only.
    """

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else None
        self._store: dict[str, str] = {}
        self._lock = threading.Lock()
        self.skipped_lines = 0
        if self.path is not None and self.path.exists():
            with open(self.path, encoding="utf-8", errors="replace") as handle:
                for line in handle:
                    try:
                        record = json.loads(line)
                        self._store[record["key"]] = record["text"]
                    except (json.JSONDecodeError, KeyError, TypeError):
                        self.skipped_lines += 1
            if self.skipped_lines:
                log.warning("LLM cache %s: skipped %d torn or corrupt line(s)", self.path, self.skipped_lines)

    def __len__(self) -> int:
        return len(self._store)

    def __contains__(self, key: str) -> bool:
        return key in self._store

    def get(self, key: str) -> str | None:
        return self._store.get(key)

    def put(self, key: str, text: str, model: str = "", prompt: str = "", params: dict | None = None) -> None:
        with self._lock:
            self._store[key] = text
            if self.path is None:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            record = {"key": key, "model": model, "prompt": prompt, "params": params or {}, "text": text,
                      "time": round(time.time(), 3)}
            # A previous crash may have left a torn line without "\n": start on a fresh line.
            prefix = ""
            if self.path.exists() and self.path.stat().st_size > 0:
                with open(self.path, "rb") as handle:
                    handle.seek(-1, os.SEEK_END)
                    prefix = "" if handle.read(1) == b"\n" else "\n"
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(prefix + json.dumps(record, ensure_ascii=False) + "\n")
                handle.flush()
                os.fsync(handle.fileno())


# ---- backends ---------------------------------------------------------------------------------------


class CallableBackend:
    """A Python function `fn(prompt, params) -> text` as a backend (simulated models, tests)."""

    concurrent = False

    def __init__(self, fn: Callable[[str, GenerationParams], str], model: str = "callable"):
        self.fn = fn
        self.model = model

    def complete(self, prompt: str, params: GenerationParams, timeout: float) -> str:
        return self.fn(prompt, params)


class OpenAIBackend:
    """An OpenAI-compatible server: vLLM (`/v1`), llama.cpp server, Ollama (`:11434/v1`), hosted APIs.

    Args:
        base_url: e.g. "http://127.0.0.1:8000/v1".
        model: the model name the server expects.
        api_key: bearer token (default: $OPENAI_API_KEY, else none).
        chat: use /chat/completions with one user message (True) or /completions (False).
    """

    concurrent = True

    def __init__(self, base_url: str, model: str, api_key: str | None = None, chat: bool = True):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY", "")
        self.chat = chat

    def _payload(self, prompt: str, params: GenerationParams) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "max_tokens": params.max_tokens,
                                "temperature": params.temperature, "top_p": params.top_p}
        if params.stop:
            body["stop"] = list(params.stop)
        if params.seed is not None:
            body["seed"] = params.seed
        if self.chat:
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        return body

    def complete(self, prompt: str, params: GenerationParams, timeout: float) -> str:
        url = f"{self.base_url}/{'chat/completions' if self.chat else 'completions'}"
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(url, data=json.dumps(self._payload(prompt, params)).encode("utf-8"),
                                         headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                data = json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as err:
            detail = err.read().decode("utf-8", errors="replace")[:200]
            if err.code in RETRY_STATUS:
                raise TransientLLMError(f"HTTP {err.code} from {url}: {detail}") from None
            raise LLMError(f"LLM endpoint {url} refused the request: HTTP {err.code}: {detail}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
            raise TransientLLMError(f"{url}: {getattr(err, 'reason', err)}") from None
        except json.JSONDecodeError as err:
            raise TransientLLMError(f"{url} answered with invalid JSON ({err})") from None
        try:
            choice = data["choices"][0]
            return choice["message"]["content"] if self.chat else choice["text"]
        except (KeyError, IndexError, TypeError):
            raise LLMError(f"{url} answered without choices[0] text: {str(data)[:200]}") from None


class HFBackend:
    """A local Hugging Face causal LM (hub id or path via `core.backbones`), batched greedy/sampled generation.

    Args:
        model: hub id or local folder, or None with `model_and_tokenizer` given.
        model_and_tokenizer: an already loaded (model, tokenizer), e.g. `backbones.tiny_causal_lm()`.
        batch_size: prompts per forward pass.
    """

    concurrent = False

    def __init__(self, model: str | None = None, model_and_tokenizer=None, batch_size: int = 8,
                 device: str | None = None):
        if model_and_tokenizer is None:
            from .backbones import load_causal_lm

            if model is None:
                raise LLMError("HFBackend needs a model id/path or a loaded (model, tokenizer)")
            model_and_tokenizer = load_causal_lm(model, device=device)
        self.lm, self.tokenizer = model_and_tokenizer
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "left"  # generation continues from the right end of every row
        self.model = model or getattr(self.lm.config, "_name_or_path", "") or "hf-local"
        self.batch_size = batch_size

    def complete_batch(self, prompts: Sequence[str], params: GenerationParams) -> list[str]:
        import torch

        out: list[str] = []
        for start in range(0, len(prompts), self.batch_size):
            chunk = list(prompts[start:start + self.batch_size])
            enc = self.tokenizer(chunk, return_tensors="pt", padding=True).to(self.lm.device)
            kwargs: dict[str, Any] = {"max_new_tokens": params.max_tokens,
                                      "pad_token_id": self.tokenizer.pad_token_id}
            if params.temperature > 0:
                kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p)
                if params.seed is not None:
                    torch.manual_seed(params.seed)
            else:
                kwargs["do_sample"] = False
            with torch.no_grad():
                generated = self.lm.generate(**enc, **kwargs)  # (B, T_prompt + T_new)
            new_tokens = generated[:, enc["input_ids"].shape[1]:]
            for text in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True):
                for stop in params.stop:
                    text = text.split(stop)[0]
                out.append(text)
        return out

    def complete(self, prompt: str, params: GenerationParams, timeout: float) -> str:
        return self.complete_batch([prompt], params)[0]


# ---- the client -------------------------------------------------------------------------------------


@dataclasses.dataclass
class LLMStats:
    """Counters of one client: backend calls made, answers from cache, retries, failed prompts."""

    calls: int = 0
    cache_hits: int = 0
    retries: int = 0
    failures: int = 0


class LLMClient:
    """Cached, budgeted, concurrent, retrying text generation over any backend.

    Args:
        backend: an OpenAIBackend, HFBackend or CallableBackend.
        cache: a ResponseCache, a path to the JSONL file, or None for an in-memory cache.
        max_concurrency: parallel HTTP requests (backends with `concurrent = True`).
        max_retries: retries per prompt after the first attempt.
        backoff: first retry delay in seconds; doubles each retry (with up to 25% jitter), capped at 30 s.
        timeout: per-request timeout in seconds.
        budget: the most backend calls this client may make (None: unlimited).
    """

    def __init__(self, backend, cache: ResponseCache | str | Path | None = None, max_concurrency: int = 16,
                 max_retries: int = 4, backoff: float = 0.5, timeout: float = 60.0, budget: int | None = None):
        self.backend = backend
        self.cache = cache if isinstance(cache, ResponseCache) else ResponseCache(cache)
        self.max_concurrency = max(1, int(max_concurrency))
        self.max_retries = max(0, int(max_retries))
        self.backoff = float(backoff)
        self.timeout = float(timeout)
        self.budget = budget
        self.stats = LLMStats()
        self._lock = threading.Lock()
        self._rng = random.Random(0)

    @property
    def model(self) -> str:
        return self.backend.model

    @property
    def calls(self) -> int:
        return self.stats.calls

    def _reserve(self, n: int) -> None:
        with self._lock:
            if self.budget is not None and self.stats.calls + n > self.budget:
                raise LLMBudgetExceeded(
                    f"LLM budget of {self.budget} calls would be exceeded ({self.stats.calls} made, {n} more "
                    f"asked); answers received so far are cached"
                )
            self.stats.calls += n

    def _complete_with_retries(self, prompt: str, params: GenerationParams) -> str:
        delay = self.backoff
        for attempt in range(self.max_retries + 1):
            try:
                return self.backend.complete(prompt, params, self.timeout)
            except TransientLLMError as err:
                if attempt == self.max_retries:
                    with self._lock:
                        self.stats.failures += 1
                    raise LLMError(f"LLM call failed after {self.max_retries + 1} attempts: {err}") from None
                with self._lock:
                    self.stats.retries += 1
                    jitter = 1.0 + 0.25 * self._rng.random()
                log.debug("retrying LLM call (attempt %d): %s", attempt + 1, err)
                time.sleep(min(30.0, delay * jitter))
                delay *= 2.0
        raise AssertionError("unreachable")

    def _store(self, key: str, prompt: str, params: GenerationParams, text: str) -> None:
        self.cache.put(key, text, model=self.model, prompt=prompt, params=params.to_dict())

    def generate(self, prompts: Sequence[str], params: GenerationParams | None = None) -> list[str]:
        """One completion per prompt, in order; duplicates and cached prompts cost no call.

        Raises:
            LLMBudgetExceeded before any call that would pass the budget.
            LLMError when a prompt still fails after all retries (finished answers stay cached).
        """
        params = params or GenerationParams()
        keys = [cache_key(self.model, p, params) for p in prompts]
        pending: dict[str, str] = {}
        for key, prompt in zip(keys, prompts, strict=True):
            if key in self.cache:
                self.stats.cache_hits += 1
            elif key not in pending:
                pending[key] = prompt
        if pending:
            self._reserve(len(pending))
            items = list(pending.items())
            if hasattr(self.backend, "complete_batch"):
                texts = self.backend.complete_batch([p for _, p in items], params)
                for (key, prompt), text in zip(items, texts, strict=True):
                    self._store(key, prompt, params, text)
            elif getattr(self.backend, "concurrent", False) and self.max_concurrency > 1 and len(items) > 1:
                def work(item: tuple[str, str]) -> None:
                    key, prompt = item
                    self._store(key, prompt, params, self._complete_with_retries(prompt, params))

                with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(items))) as pool:
                    futures = [pool.submit(work, item) for item in items]
                    errors = [f.exception() for f in futures if f.exception() is not None]
                if errors:
                    raise errors[0]
            else:
                for key, prompt in items:
                    self._store(key, prompt, params, self._complete_with_retries(prompt, params))
        return [self.cache.get(k) for k in keys]

    def generate_one(self, prompt: str, params: GenerationParams | None = None) -> str:
        return self.generate([prompt], params)[0]


def make_client(backend: str = "openai", model: str = "", base_url: str | None = None,
                cache_path: str | Path | None = None, **kwargs) -> LLMClient:
    """Build a client by backend name: "openai" (vllm/ollama/llama.cpp/hosted: base_url) or "hf" (local)."""
    if backend in ("openai", "vllm", "ollama", "llamacpp", "deepinfra"):
        if not base_url:
            raise LLMError(f"backend {backend!r} needs --base-url (e.g. http://127.0.0.1:8000/v1)")
        return LLMClient(OpenAIBackend(base_url, model), cache=cache_path, **kwargs)
    if backend == "hf":
        return LLMClient(HFBackend(model), cache=cache_path, **kwargs)
    raise LLMError(f"unknown LLM backend {backend!r}: expected openai, vllm, ollama, llamacpp, deepinfra or hf")


# ---- a local mock server ----------------------------------------------------------------------------


class MockOpenAIServer:
    """A threaded OpenAI-compatible server on 127.0.0.1 for tests and benchmarks.

    Args:
        responder: fn(prompt) -> completion text (default: echoes "echo: <prompt>").
        delay: seconds every request sleeps before answering (simulated inference latency).
        fail_first: prompt -> how many first requests for it answer with `fail_status`.
        fail_status: the HTTP status of injected failures (500, 429, ...).
        hang: prompts whose requests sleep `hang_seconds` (to trip client timeouts).

    Use as a context manager; `url` is the base URL ("http://127.0.0.1:PORT/v1"); `requests` counts
    requests per prompt; `max_in_flight` is the most requests it was serving at one time.
    """

    def __init__(self, responder: Callable[[str], str] | None = None, delay: float = 0.0,
                 fail_first: dict[str, int] | None = None, fail_status: int = 500,
                 hang: Sequence[str] = (), hang_seconds: float = 5.0):
        self.responder = responder or (lambda prompt: f"echo: {prompt}")
        self.delay = delay
        self.fail_first = dict(fail_first or {})
        self.fail_status = fail_status
        self.hang = set(hang)
        self.hang_seconds = hang_seconds
        self.requests: dict[str, int] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                return

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                chat = self.path.endswith("/chat/completions")
                prompt = body["messages"][-1]["content"] if chat else body.get("prompt", "")
                with server._lock:
                    server.requests[prompt] = server.requests.get(prompt, 0) + 1
                    count = server.requests[prompt]
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    status, payload = self._answer(prompt, count, chat, body)
                finally:
                    # out of flight *before* the answer is written: a sequential client may send its next request
                    # the moment it has read this one, and must not be counted as two requests at once
                    with server._lock:
                        server.in_flight -= 1
                self._send(status, payload)

            def _answer(self, prompt: str, count: int, chat: bool, body: dict) -> tuple[int, dict]:
                if prompt in server.hang:
                    time.sleep(server.hang_seconds)
                if server.delay:
                    time.sleep(server.delay)
                if count <= server.fail_first.get(prompt, 0):
                    return server.fail_status, {"error": {"message": "injected failure"}}
                text = server.responder(prompt)
                choice = {"index": 0, "finish_reason": "stop"}
                choice.update({"message": {"role": "assistant", "content": text}} if chat else {"text": text})
                return 200, {"id": "mock", "object": "chat.completion", "model": body.get("model", ""),
                             "choices": [choice]}

            def _send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode("utf-8")
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def total_requests(self) -> int:
        return sum(self.requests.values())

    def __enter__(self) -> MockOpenAIServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
