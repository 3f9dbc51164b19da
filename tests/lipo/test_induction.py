"""Instruction induction: the scoring rule on known answers, task splits, the crash-safe answer cache, batching."""

import json

import numpy as np
import pytest

from latentspace.core.errors import DataError
from latentspace.lipo.induction import (
    AnswerCache,
    Example,
    LLMTaskModel,
    answer_all,
    clean_instruction,
    instruction_pool,
    is_correct,
    load_task,
    outcomes,
    read_table,
    write_table,
)


@pytest.mark.parametrize("answer, example, expected", [
    ("The opposite of fortunate is unfortunate.", Example("fortunate", "unfortunate"), True),
    ("fortunate", Example("fortunate", "unfortunate"), False),  # the input echoed
    ("The opposite of taxable is non-taxable.", Example("taxable", "nontaxable"), True),
    ("Positive", Example("great film", "positive", ("negative",)), True),
    ("positive or negative", Example("great film", "positive", ("negative",)), False),  # a hedge
    ("The larger animal is the brown bear.", Example("ant, brown bear", "brown bear", ("ant",)), True),
    ("ant, brown bear", Example("ant, brown bear", "brown bear", ("ant",)), False),
    ("The first letter of mountain is m.", Example("mountain", "m"), True),
    ("Admission is a legal term.", Example("admission", "a"), False),  # "a" the article, not the answer
    ("m", Example("mountain", "m"), True),
    ("47\nand more text", Example("0 47", "47"), True),
    ("", Example("x", "y"), False),
])
def test_contains_rule_on_known_answers(answer, example, expected):
    assert is_correct(answer, example, "contains") is expected


def test_exact_rule_and_unknown_rule():
    assert is_correct(" Unfortunate.\nmore", Example("fortunate", "unfortunate"), "exact")
    assert not is_correct("The opposite is unfortunate", Example("fortunate", "unfortunate"), "exact")
    with pytest.raises(DataError, match="unknown scoring rule"):
        is_correct("x", Example("a", "b"), "fuzzy")


def test_task_splits_are_disjoint_and_seeded():
    task = load_task("sentiment")  # the embedded sample carries the six development tasks
    assert len(task.selection) == 100 and len(task.credit) == 100 and task.annotations
    selection = {(e.input, e.output) for e in task.selection}
    assert not selection & {(e.input, e.output) for e in task.demos}  # APE never sees a selection example
    assert all(set(e.competitors) == {"positive", "negative"} - {e.output} for e in task.credit)
    assert [e.input for e in load_task("sentiment").selection] == [e.input for e in task.selection]
    assert [e.input for e in load_task("sentiment", seed=1).selection] != [e.input for e in task.selection]
    animal = load_task("larger_animal").credit[0]
    assert animal.output in animal.input and len(animal.competitors) == 1
    with pytest.raises(DataError, match="does not exist"):
        load_task("no_such_task")


def test_clean_instruction_and_pool():
    assert clean_instruction('The instruction was: "Write the antonym."\nmore') == "Write the antonym."
    task = load_task("antonyms")
    pool = instruction_pool(task, ["Write the antonym of the word.", task.annotations[0]])
    sources = [s for _, s in pool]
    assert sources[0] == "human" and sources.count("ape") == 1  # the duplicate of a human one is dropped
    assert len({text.lower() for text, _ in pool}) == len(pool)


def test_answer_cache_survives_a_torn_last_line(tmp_path):
    path = tmp_path / "answers.jsonl"
    cache = AnswerCache(path)
    cache.add({"k1": "one", "k2": "two"})
    with open(path, "a") as handle:  # a crash in the middle of the next batch's write
        handle.write('{"k": "k3", "a": "thr')
    again = AnswerCache(path)
    assert again.answers == {"k1": "one", "k2": "two"}


class _Tokenizer:
    """The parts of a tokenizer that make_prompt's plain format and LLMTaskModel's bookkeeping need."""

    pad_token_id = 0
    eos_token = "<eos>"


class _CountingModel(LLMTaskModel):
    """A task model whose 'LLM' answers by rule, counting what it is asked (no torch model needed)."""

    def __init__(self):
        self.tokenizer, self.model_id, self.calls = _Tokenizer(), "rule", 0

    def generate(self, prompts, **kwargs):
        self.calls += len(prompts)
        return [p.split("Input: ")[1].split("\n")[0] * 2 if "Double" in p else "no" for p in prompts]


def test_answer_all_pays_each_answer_once_and_held_out_credit_is_separate(tmp_path):
    model = _CountingModel()
    selection = [Example("ab", "abab"), Example("cd", "cdcd")]
    credit = [Example("ef", "efef"), Example("gh", "ghgh"), Example("ij", "nope")]
    cache = AnswerCache(tmp_path / "a.jsonl")
    instructions = ["Double the input.", "Whisper the input."]
    sel = answer_all(model, "plain", instructions, selection, cache)
    assert model.calls == 4
    assert answer_all(model, "plain", instructions, selection, AnswerCache(tmp_path / "a.jsonl")) == sel
    assert model.calls == 4  # all from the cache, also in a new process's cache
    cred = answer_all(model, "plain", instructions, credit, cache)
    assert model.calls == 4 + 6
    task = load_task("sum")
    task.selection, task.credit = selection, credit
    write_table(tmp_path / "t.json", task, [(i, "human") for i in instructions], "plain", "contains", "rule",
                outcomes(sel, selection, "contains"), outcomes(cred, credit, "contains"))
    table = read_table(tmp_path / "t.json")
    assert table["selection"].tolist() == [[1, 1], [0, 0]] and table["credit"].tolist() == [[1, 1, 0], [0, 0, 0]]
    assert table["selection_inputs"] == ["ab", "cd"] and table["credit_inputs"] == ["ef", "gh", "ij"]
    raw = json.loads((tmp_path / "t.json").read_text())
    raw["credit"] = raw["credit"][:1]
    (tmp_path / "bad.json").write_text(json.dumps(raw))
    with pytest.raises(DataError, match="one equal-length outcome string per instruction"):
        read_table(tmp_path / "bad.json")


def test_batched_generation_equals_one_at_a_time():
    from latentspace.core.backbones import tiny_causal_lm

    model, tokenizer = tiny_causal_lm(seed=3)
    llm = LLMTaskModel(model, tokenizer, max_new_tokens=5, batch_size=4)
    prompts = ["Instruction: a\nInput: x\nOutput:", "Instruction: longer one\nInput: yy\nOutput:",
               "Instruction: b\nInput: zzz zz\nOutput:", "short", "Instruction: c\nInput: w\nOutput:"]
    assert llm.generate(prompts) == llm.generate_one_by_one(prompts)


def test_committed_tables_are_well_formed():
    """The development tables: every instruction scored on every selection and credit example."""
    from pathlib import Path

    folder = Path(__file__).resolve().parents[2] / "benchmarks" / "tables" / "lipo_ii"
    for name in ("antonyms", "sentiment", "larger_animal", "first_word_letter", "singular_to_plural", "sum"):
        table = read_table(folder / f"{name}.json")
        n = len(table["instructions"])
        assert n >= 200 and table["selection"].shape == (n, 100) and table["credit"].shape == (n, 100)
        assert table["sources"].count("ape") >= 200 and "human" in table["sources"]
        assert not set(table["selection_inputs"]) & set(table["credit_inputs"])  # credit inputs never selected on
        assert np.corrcoef(table["selection"].mean(1), table["credit"].mean(1))[0, 1] > 0.5


def test_benchmark_credits_the_pick_on_held_out_examples_only():
    """The optimisers see selection outcomes; the incumbent is credited with its credit accuracy, never selection."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import lipo as bench
    from lipo_ii import final_error

    selection = (np.arange(25)[None, :] < np.arange(1, 21)[:, None]).astype(float)  # row i: i + 1 of 25 right
    credit_error = np.linspace(0.0, 0.95, 20)  # ... and the better on selection, the worse on credit
    curve = bench.run_random(1.0 - selection, credit_error, 25, horizon=25 * 20, seed=0)
    # every row evaluated: the pick is row 19, the best by selection, credited with its held-out error
    assert final_error(curve, 25 * 20, 1.0) == credit_error[19] == 0.95
    assert final_error([], 100, 0.7) == 0.7  # nothing evaluated at full fidelity yet: the worst pool error
