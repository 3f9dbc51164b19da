import io
import json
import os

import pytest

from latentspace.logs.classify import LogClassifier
from latentspace.logs.raccoon import RaccoonLearner
from latentspace.logs.stream import LineReader, LogStream, parse_feedback


def _reader(tmp_path, data: bytes, **kwargs):
    path = tmp_path / "in.bin"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        reader = LineReader(fd, chunk=4096, **kwargs)
        lines = [line for batch in reader.batches() for line in batch]
    finally:
        os.close(fd)
    return reader, lines


def test_line_reader_cuts_huge_lines_and_keeps_unterminated_tail(tmp_path):
    reader, lines = _reader(tmp_path, b"a\n" + b"x" * 1_048_576 + b"\nb\nlast-without-newline", max_bytes=1000)
    assert lines[0] == b"a" and lines[1] == b"x" * 1000 and lines[2:] == [b"b", b"last-without-newline"]
    assert reader.cut == 1 and reader.unterminated


def test_parse_feedback():
    labels = ("DEBUG", "INFO", "WARN", "ERROR")
    assert parse_feedback("#label error disk failed", labels) == ("ERROR", "disk failed")
    assert parse_feedback("#label BOGUS x", labels) == (None, "x")
    assert parse_feedback("plain line", labels) is None


def test_stream_alerts_bad_input_feedback_and_restart(tiny_severity_model, tmp_path):
    model, test = tiny_severity_model
    learner = RaccoonLearner(model.__class__.load(_saved(model, tmp_path)), replay_ratio=0.5)
    out, err = io.StringIO(), io.StringIO()
    state = tmp_path / "state"
    stream = LogStream(learner, state, out=out, err=err, as_json=True, save_every=1)
    errors = [line for line, label in zip(test.lines, test.labels, strict=True) if label == "ERROR"][:5]
    raw = [line.encode() for line in errors] + [b"", b"\x00\x01junk", "caf\u00e9 ok".encode("latin-1"),
                                                b"#label NOPE foo"]
    raw += [f"#label {label} {line}".encode() for line, label in zip(test.lines[:40], test.labels[:40],
                                                                        strict=True)]
    stream.process(raw)
    stats = stream.finish()
    alerts = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(alerts) >= 3 and all("anomaly_score" in a for a in alerts)
    assert stats.skipped == {"empty": 1, "binary": 1, "latin-1": 1}
    assert stats.feedback == 40 and stats.bad_feedback == 1
    assert stats.updates == 3 and learner.updates == 3  # 40 feedback lines / update_batch 16, rest flushed
    assert "binary" in err.getvalue()
    restarted = RaccoonLearner.load(state, LogClassifier)
    assert restarted.updates == 3 and len(restarted.memory) == len(learner.memory)


def _saved(model, tmp_path):
    return model.save(tmp_path / "model")


@pytest.mark.parametrize("payload", [b"", b"\n\n\n", b"\xff\xfe\x00\x00garbage"])
def test_stream_survives_degenerate_input(tiny_severity_model, tmp_path, payload):
    model, _ = tiny_severity_model
    path = tmp_path / "in.bin"
    path.write_bytes(payload)
    fd = os.open(path, os.O_RDONLY)
    try:
        stats = LogStream(RaccoonLearner(model, frozen=True), None, out=io.StringIO(), err=io.StringIO()).run(fd)
    finally:
        os.close(fd)
    assert stats.alerts == 0 and stats.classified == 0
