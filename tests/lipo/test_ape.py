import json

import pytest

from latentspace.core.errors import DataError
from latentspace.core.llm import CallableBackend, LLMClient, MockOpenAIServer, OpenAIBackend
from latentspace.lipo.ape import STYLE_CATEGORIES, APEGenerator, OfflineInstructionWriter, parse_numbered_list


def test_parse_numbered_list():
    text = 'Here you go:\n1. Solve it.\n2) "Think step by step."\n- Check.\n\nNot an item'
    assert parse_numbered_list(text) == ["Solve it.", "Think step by step.", "Check."]


def test_five_styles_batched_distinct_and_cached(tmp_path):
    assert set(STYLE_CATEGORIES) == {"minimalist", "direct_command", "chain_of_thought", "pedagogical", "analytical"}
    client = LLMClient(CallableBackend(OfflineInstructionWriter(), "offline"))
    cache = tmp_path / "ape.json"
    items = APEGenerator(client, num_instructions=60, batch_size=10, cache_path=cache).generate()
    assert len(items) == 60 and len({i["text"].lower() for i in items}) == 60
    assert {i["style"] for i in items} == set(STYLE_CATEGORIES)
    calls = client.calls
    assert calls >= 6  # one call per style per round, ten instructions each
    again = APEGenerator(client, num_instructions=60, cache_path=cache).generate()
    assert again == items and client.calls == calls  # served from the JSON cache
    assert json.loads(cache.read_text())["model"] == "offline"


def test_through_an_openai_compatible_server_with_max_length():
    writer = OfflineInstructionWriter(seed=3)
    with MockOpenAIServer(responder=lambda prompt: writer(prompt) + "\n11. " + "x" * 600) as server:
        client = LLMClient(OpenAIBackend(server.url, "writer"), max_concurrency=5)
        items = APEGenerator(client, num_instructions=20, max_length=500).generate()
    assert len(items) == 20 and all(len(i["text"]) <= 500 for i in items)


def test_bad_cache_and_useless_writer_are_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    client = LLMClient(CallableBackend(lambda p, s: "nothing useful", "w"))
    with pytest.raises(DataError, match="not an APE cache"):
        APEGenerator(client, 10, cache_path=bad).generate()
    with pytest.raises(DataError, match="distinct"):
        APEGenerator(client, 10).generate(max_rounds=2)
