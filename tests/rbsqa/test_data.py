import json
import random

import pytest

from latentspace.core.backbones import load_tokenizer
from latentspace.core.errors import DataError
from latentspace.rbsqa.config import RBSQAConfig
from latentspace.rbsqa.data import (
    build_documents,
    encode_document,
    generate_fact_paragraphs,
    generate_story,
    load_babi,
    load_squad,
    long_documents,
    parse_squad,
)

FIXTURES = __import__("pathlib").Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("all-MiniLM-L6-v2")


def test_story_events_follow_the_person():
    doc = generate_story(random.Random(3), 16)
    person = doc.question.removeprefix("Where is ").rstrip("?")
    moves = [s for s in doc.context.split(". ") if s.startswith(person) and " to the " in s]
    assert [e.text for e in doc.events] == [s.rstrip(".").split()[-1] for s in moves]
    for event in doc.events:
        assert doc.context[event.char_start : event.char_end] == event.text
    assert sum(a.text != b.text for a, b in zip(doc.events, doc.events[1:], strict=False)) >= 2


def test_object_story_answer_follows_the_carrier():
    doc = generate_story(random.Random(1), 16, object_question=True)
    assert doc.question.startswith("Where is the ")
    assert all(doc.context[e.char_start : e.char_end] == e.text for e in doc.events)


def test_encode_document_gold_spans_and_revision_points(tokenizer):
    config = RBSQAConfig()
    doc = generate_story(random.Random(0), 16)
    enc = encode_document(doc, tokenizer, config)
    assert enc.input_ids.shape == (enc.num_segments, config.seq_len)
    assert enc.states[-1] == doc.answer
    for s in range(enc.num_segments):
        if int(enc.gold_start[s]):
            text = tokenizer.decode(enc.input_ids[s, enc.gold_start[s] : enc.gold_end[s] + 1])
            assert text == enc.states[s]
            local = int(enc.gold_start[s]) - config.context_start
            assert enc.span_text((enc.offsets[s] + local, enc.offsets[s] + local)) == enc.states[s]
    for p in enc.revision_points:
        assert enc.states[p] != enc.states[p - 1] and enc.states[p - 1] is not None
        assert int(enc.gold_start[p]) > 0  # the change is visible in the segment where it happens
    # consecutive segments overlap by segment_len - segment_stride tokens
    assert enc.offsets[1] - enc.offsets[0] == config.segment_stride


def test_babi_loader_on_fixture():
    docs = load_babi(FIXTURES / "qa1_tiny_train.txt")
    assert [d.answer for d in docs] == ["bathroom", "office", "kitchen"]
    assert [e.text for e in docs[1].events] == ["bathroom", "office"]
    assert docs[2].context.startswith("Sandra journeyed")


def test_squad_loader_on_fixture_skips_unanswerable():
    docs = load_squad(FIXTURES / "squad_tiny.json")
    assert [d.answer for d in docs] == ["Norway", "1299"]
    assert all(d.context[d.events[0].char_start : d.events[0].char_end] == d.answer for d in docs)


def test_loaders_reject_bad_input(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_squad(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="not JSON"):
        load_squad(bad)
    with pytest.raises(DataError, match="not at char"):
        parse_squad({"data": [{"paragraphs": [{"context": "abc def", "qas": [
            {"id": "x", "question": "q", "answers": [{"text": "def", "answer_start": 0}]}]}]}]})
    babi = tmp_path / "b.txt"
    babi.write_text("no number here\n")
    with pytest.raises(DataError, match="expected 'N text'"):
        load_babi(babi)


def test_long_documents_shift_answers_and_real_files_are_used(tmp_path):
    base = parse_squad(generate_fact_paragraphs(8, random.Random(0)))
    docs = long_documents(base[:3], 4, random.Random(0), pool_docs=base)
    for doc, src in zip(docs, base[:3], strict=True):
        assert doc.context[doc.events[0].char_start : doc.events[0].char_end] == src.answer
        assert src.context in doc.context and doc.context.count(". ") >= 4 * 3
    (tmp_path / "squad").mkdir()
    obj = generate_fact_paragraphs(40, random.Random(5))
    obj["data"][0]["paragraphs"][0]["qas"][0]["id"] = "real-file-marker"
    (tmp_path / "squad" / "train.json").write_text(json.dumps(obj))
    config = RBSQAConfig(task="facts", data_dir=str(tmp_path), train_docs=4, distractors=2)
    assert "real-file-marker" in [d.doc_id for d in build_documents(config, "train")]
