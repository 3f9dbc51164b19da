import pytest

from latentspace.core.data import find_dataset
from latentspace.core.errors import DataError
from latentspace.core.llm import CallableBackend, LLMClient, MockOpenAIServer, OpenAIBackend
from latentspace.lipo.evaluate import (
    GSM8KEvaluator,
    SimulatedTaskModel,
    extract_answer,
    instruction_quality,
    is_correct,
    load_gsm8k,
)


@pytest.mark.parametrize(("text", "value"), [
    ("so 3 + 4 = 7\n#### 7", 7.0), ("The answer is $1,250.", 1250.0), ("x = 2, y = 5. Final: 12", 12.0),
    ("\\boxed{-3.5}", -3.5), ("no number here", None), ("The answer is 18. Check: 9 * 2 = 18", 18.0),
])
def test_extract_answer(text, value):
    assert extract_answer(text) == value


def test_is_correct_exact_match():
    assert is_correct("The answer is 18.", 18.0) and not is_correct("The answer is 19.", 18.0)


@pytest.mark.skipif(find_dataset("gsm8k", required=False, sample=False) is None,
                    reason="GSM8K not found: run `latentspace data fetch gsm8k` or set $LATENTSPACE_DATA")
def test_load_gsm8k_real_data():
    test = load_gsm8k("test")
    assert len(test) == 1319 and test[0].target == 18.0 and test[0].steps == 2


def test_load_gsm8k_falls_back_to_the_embedded_sample(tmp_path, monkeypatch):
    monkeypatch.delenv("LATENTSPACE_DATA", raising=False)
    monkeypatch.setenv("LATENTSPACE_CACHE", str(tmp_path))
    train, test = load_gsm8k("train"), load_gsm8k("test")
    assert (len(train), len(test)) == (200, 100) and test[0].target == 18.0


def test_malformed_data_is_named(tmp_path):
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "test.jsonl").write_text('{"question": "q", "answer": "no final"}\n')
    with pytest.raises(DataError, match="test.jsonl:1"):
        load_gsm8k("test", tmp_path)


def test_simulated_model_is_deterministic_and_prefers_reasoning_instructions():
    examples = load_gsm8k("train")[:300]
    sim = SimulatedTaskModel(examples)
    good = "Let's think step by step, show your work, double-check the arithmetic and give the final answer."
    bad = "Guess quickly."
    assert instruction_quality(good) > instruction_quality(bad)
    assert sim.true_error(good, examples) < sim.true_error(bad, examples) - 0.2
    assert sim(GSM8KEvaluator.prompt(good, examples[0].question)) == sim(GSM8KEvaluator.prompt(good,
                                                                                                examples[0].question))
    assert sim("unrelated prompt") == "I cannot answer that."


def test_evaluator_through_http_matches_the_simulation():
    examples = load_gsm8k("train")[:40]
    sim = SimulatedTaskModel(examples)
    instruction = "Work through the problem one step at a time."
    with MockOpenAIServer(responder=sim) as server:
        evaluator = GSM8KEvaluator(LLMClient(OpenAIBackend(server.url, "sim"), max_concurrency=8), examples[:30],
                                   examples[30:])
        assert evaluator.evaluate_range(instruction, 0, 30) == pytest.approx(sim.true_error(instruction, examples[:30]))
        assert evaluator.evaluate_test(instruction) == pytest.approx(sim.true_error(instruction, examples[30:]))
        assert evaluator.client.calls == 40
    local = GSM8KEvaluator(LLMClient(CallableBackend(sim)), examples[:30])
    assert local.evaluate_range(instruction, 10, 30) == pytest.approx(sim.true_error(instruction, examples[10:30]))
    with pytest.raises(DataError):
        local.evaluate_range(instruction, 0, 31)
    with pytest.raises(DataError, match="test"):
        local.evaluate_test(instruction)


def test_from_data_samples_validation():
    ev = GSM8KEvaluator.from_data(LLMClient(CallableBackend(lambda p, s: "0")), validation_size=20, test_size=5)
    assert len(ev.validation) == 20 and len(ev.test) == 5
    with pytest.raises(DataError, match="exceeds"):
        GSM8KEvaluator.from_data(LLMClient(CallableBackend(lambda p, s: "0")), validation_size=10**6, test_size=0)
