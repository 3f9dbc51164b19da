"""core.llm: the OpenAI-compatible client against a local mock server, the crash-safe cache, budget, HF backend."""

import json
import time

import pytest

from latentspace.core.errors import LatentspaceError
from latentspace.core.llm import (
    CallableBackend,
    GenerationParams,
    HFBackend,
    LLMBudgetExceeded,
    LLMClient,
    LLMError,
    MockOpenAIServer,
    OpenAIBackend,
    ResponseCache,
    cache_key,
    make_client,
)


def test_chat_and_completions_endpoints_answer_in_order():
    with MockOpenAIServer(responder=lambda p: p.upper()) as server:
        for chat in (True, False):
            client = LLMClient(OpenAIBackend(server.url, "m", chat=chat), max_concurrency=4)
            assert client.generate(["a", "b", "c"]) == ["A", "B", "C"]
            assert client.calls == 3


def test_retries_injected_failures_with_backoff():
    with MockOpenAIServer(fail_first={"x": 2, "y": 1}, fail_status=503) as server:
        client = LLMClient(OpenAIBackend(server.url, "m"), backoff=0.01, max_retries=3)
        assert client.generate(["x", "y", "z"]) == ["echo: x", "echo: y", "echo: z"]
        assert server.requests == {"x": 3, "y": 2, "z": 1}
        assert client.stats.retries == 3 and client.stats.failures == 0


def test_gives_up_after_retries_and_keeps_finished_answers(tmp_path):
    with MockOpenAIServer(fail_first={"bad": 100}, fail_status=429) as server:
        client = LLMClient(OpenAIBackend(server.url, "m"), cache=tmp_path / "c.jsonl", backoff=0.01, max_retries=2)
        with pytest.raises(LLMError, match="after 3 attempts"):
            client.generate(["ok1", "bad", "ok2"])
        assert server.requests["bad"] == 3
        assert client.stats.failures == 1
        again = LLMClient(OpenAIBackend(server.url, "m"), cache=tmp_path / "c.jsonl")
        assert again.generate(["ok1", "ok2"]) == ["echo: ok1", "echo: ok2"]
        assert again.calls == 0  # both came from the cache


def test_timeout_is_retried_then_reported():
    with MockOpenAIServer(hang=["slow"], hang_seconds=1.0) as server:
        client = LLMClient(OpenAIBackend(server.url, "m"), timeout=0.2, max_retries=1, backoff=0.01)
        start = time.time()
        with pytest.raises(LLMError, match="failed after 2 attempts"):
            client.generate_one("slow")
        assert time.time() - start < 1.5
        assert client.stats.retries == 1


def test_client_error_is_not_retried():
    with MockOpenAIServer(fail_first={"q": 5}, fail_status=400) as server:
        client = LLMClient(OpenAIBackend(server.url, "m"), backoff=0.01)
        with pytest.raises(LLMError, match="HTTP 400"):
            client.generate_one("q")
        assert server.requests["q"] == 1


def test_unreachable_endpoint_is_a_clear_error():
    client = LLMClient(OpenAIBackend("http://127.0.0.1:9/v1", "m"), max_retries=1, backoff=0.01, timeout=1)
    with pytest.raises(LatentspaceError, match="127.0.0.1:9"):
        client.generate_one("hello")


def test_concurrency_overlaps_requests():
    # overlap is asserted from the server's side (requests served at once), not from wall time, which a
    # loaded CI machine makes flaky; the speedup itself is measured in benchmarks/lipo.py
    with MockOpenAIServer(delay=0.2) as server:
        client = LLMClient(OpenAIBackend(server.url, "m"), max_concurrency=8)
        out = client.generate([f"p{i}" for i in range(16)])
    assert out == [f"echo: p{i}" for i in range(16)]
    assert 4 <= server.max_in_flight <= 8  # overlapping, and never more than the configured concurrency
    with MockOpenAIServer(delay=0.05) as server:
        LLMClient(OpenAIBackend(server.url, "m"), max_concurrency=1).generate([f"q{i}" for i in range(4)])
    assert server.max_in_flight == 1


def test_cache_key_depends_on_model_prompt_and_params():
    base = cache_key("m", "p", GenerationParams())
    assert base == cache_key("m", "p", GenerationParams())
    assert base != cache_key("m2", "p", GenerationParams())
    assert base != cache_key("m", "p2", GenerationParams())
    assert base != cache_key("m", "p", GenerationParams(temperature=0.5))


def test_cache_survives_a_simulated_crash(tmp_path):
    path = tmp_path / "cache.jsonl"
    with MockOpenAIServer() as server:
        client = LLMClient(OpenAIBackend(server.url, "m"), cache=path)
        client.generate(["a", "b", "c"])
        # a crash in the middle of writing the next answer leaves a torn last line
        with open(path, "a") as handle:
            handle.write('{"key": "deadbeef", "text": "tor')
        reopened = ResponseCache(path)
        assert len(reopened) == 3 and reopened.skipped_lines == 1
        client2 = LLMClient(OpenAIBackend(server.url, "m"), cache=path)
        assert client2.generate(["a", "b", "c", "d"]) == ["echo: a", "echo: b", "echo: c", "echo: d"]
        assert client2.calls == 1 and server.requests == {"a": 1, "b": 1, "c": 1, "d": 1}
    # the answer written after the torn line starts on its own line and is readable
    assert len(ResponseCache(path)) == 4
    for line in path.read_text().splitlines()[:3]:
        assert json.loads(line)["model"] == "m"


def test_duplicates_cost_one_call_and_budget_is_enforced():
    calls = []
    client = LLMClient(CallableBackend(lambda p, params: calls.append(p) or p[::-1]), budget=3)
    assert client.generate(["ab", "ab", "cd"]) == ["ba", "ba", "dc"]
    assert client.calls == 2 and client.stats.cache_hits == 0
    assert client.generate(["ab"]) == ["ba"] and client.stats.cache_hits == 1
    with pytest.raises(LLMBudgetExceeded):
        client.generate(["x", "y"])
    assert calls == ["ab", "cd"]


def test_hf_backend_generates_in_batches():
    from latentspace.core.backbones import tiny_causal_lm

    backend = HFBackend(model_and_tokenizer=tiny_causal_lm(hidden_size=32, layers=1), batch_size=2)
    client = LLMClient(backend)
    outs = client.generate(["hello", "a longer prompt", "x"], GenerationParams(max_tokens=4))
    assert len(outs) == 3 and all(isinstance(o, str) for o in outs)
    # greedy decoding of the same prompt is the same alone and inside a padded batch
    assert HFBackend(model_and_tokenizer=(backend.lm, backend.tokenizer)).complete_batch(
        ["x"], GenerationParams(max_tokens=4))[0] == outs[2]


def test_make_client_rejects_unknown_backend_and_missing_url():
    with pytest.raises(LLMError, match="unknown LLM backend"):
        make_client("carrier-pigeon")
    with pytest.raises(LLMError, match="base-url"):
        make_client("vllm", model="m")
