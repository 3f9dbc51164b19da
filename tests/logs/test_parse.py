import pandas as pd
import pytest

from latentspace.core.errors import DataError
from latentspace.logs.parse import (
    MAX_LINE_CHARS,
    LogTemplates,
    LogTokenizer,
    decode_line,
    log_words,
    mask_variables,
    prepare,
    read_log_file,
    split_level,
)


def test_decode_line_handles_bad_input():
    assert decode_line(b"hello world\n").text == "hello world"
    assert decode_line(b"\n").issue == "empty"
    assert decode_line(b"   \r\n").text is None
    assert decode_line(b"\x00\x01\x02binary").issue == "binary"
    assert decode_line(bytes(range(1, 30)) * 3).issue == "binary"
    latin = decode_line("caf\u00e9 r\u00e9ussi".encode("latin-1"))
    assert latin.text == "caf\u00e9 r\u00e9ussi" and latin.issue == "latin-1"
    huge = decode_line(b"x" * 1_000_000)
    assert len(huge.text) == MAX_LINE_CHARS and huge.issue == "truncated"


def test_read_log_file_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_log_file(tmp_path / "missing.log")
    (tmp_path / "bin.log").write_bytes(b"\x7fELF\x00\x00\x01" * 100)
    with pytest.raises(DataError, match="binary"):
        read_log_file(tmp_path / "bin.log")
    (tmp_path / "empty.log").write_bytes(b"\n\n  \n")
    with pytest.raises(DataError, match="no usable log line"):
        read_log_file(tmp_path / "empty.log")
    (tmp_path / "mixed.log").write_bytes(b"ok line\n\xff\xfe latin\n\n" + b"y" * 2_000_000 + b"\nlast")
    lines, issues = read_log_file(tmp_path / "mixed.log")
    assert lines[0] == "ok line" and lines[-1] == "last" and len(lines) == 4
    assert issues == {"latin-1": 1, "empty": 1, "truncated": 1}


def test_masking_and_tokenizer():
    text = "conn from 10.1.2.3:8080 at 0x7fed806e file /var/log/a.log took 12.5 ms node r02-m1"
    masked = mask_variables(text)
    assert "<ip>" in masked and "<hex>" in masked and "<path>" in masked and "<num>" in masked
    assert "10.1" not in masked and "/var" not in masked
    assert log_words("Error 12 34 56 done") == ["error", "<num>", "done"]
    tok = LogTokenizer(hash_buckets=64, max_len=6)
    ids = tok.encode(text)
    assert ids[0] == tok.CLS and len(ids) == 6 and all(0 < i < tok.vocab_size for i in ids)
    assert tok.encode("took 1 ms") == tok.encode("took 999 ms")  # variables do not change the ids
    tokens, mask = tok.pad([ids, tok.encode("x")])
    assert tokens.shape == (2, 6) and mask.sum().item() == 8


def test_split_level_and_prepare():
    line = "2015-10-18 18:01:47,978 WARN [main] disk slow"
    assert split_level(line) == ("WARN", "2015-10-18 18:01:47,978 [main] disk slow")
    assert split_level("[Sun Dec 04 04:47:44 2005] [error] mod_jk child")[0] == "ERROR"
    assert split_level("03-17 16:13:38.811  1702  2395 D WindowManager: x")[0] == "DEBUG"
    assert split_level("no level here at all")[0] is None
    label, text = prepare("KERNDTLB 1117838570 2005.06.03 R02 RAS KERNEL FATAL data TLB error", "bgl_alert")
    assert label == "alert" and not text.startswith("KERNDTLB")
    assert prepare("- 1117838570 RAS KERNEL INFO ok", "bgl_alert") == ("normal", "1117838570 RAS KERNEL INFO ok")
    label, text = prepare("081109 203615 148 INFO dfs.DataNode: x", "severity")
    assert label == "INFO" and "INFO" not in text


@pytest.mark.parametrize("system", ["HDFS", "Hadoop", "Apache", "Android", "OpenStack", "Zookeeper", "BGL"])
def test_levels_match_loghub_ground_truth(loghub_full, system):
    raw = (loghub_full / system / f"{system}_2k.log").read_text(errors="replace").splitlines()
    truth = pd.read_csv(loghub_full / system / f"{system}_2k.log_structured.csv")["Level"].astype(str)
    mapping = {"I": "INFO", "D": "DEBUG", "V": "DEBUG", "W": "WARN", "E": "ERROR", "notice": "INFO",
               "error": "ERROR", "FATAL": "ERROR", "SEVERE": "ERROR", "WARNING": "WARN"}
    found = [split_level(line)[0] for line in raw]
    expected = [mapping.get(level, level.upper()) for level in truth]
    assert found == expected


def test_templates_json_round_trip(tmp_path):
    templates = LogTemplates()
    for i in range(20):
        templates.add(f"user u{i} logged in from 10.0.0.{i}")
        templates.add(f"disk {i} failed with code {i * 7}")
    assert len(templates) == 2
    templates.save(tmp_path / "t.json")
    loaded = LogTemplates.load(tmp_path / "t.json")
    assert loaded.to_dict() == templates.to_dict()
    assert loaded.match("disk 99 failed with code 3") == templates.match("disk 99 failed with code 3")
    assert loaded.match("disk 99 failed with code 3")[0] != -1
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError):
        LogTemplates.load(tmp_path / "bad.json")


def test_log_words_fast_path_agrees_with_reference(loghub):
    from latentspace.logs.parse import log_words_reference

    for system in ("BGL", "OpenStack", "Windows", "Android"):
        for line in (loghub / system / f"{system}_2k.log").read_text(errors="replace").splitlines()[:300]:
            assert log_words(line) == log_words_reference(line)


def test_tokenizer_chunk_cache_agrees_with_whole_line_masking(loghub):
    tok = LogTokenizer(hash_buckets=256, max_len=12)
    tricky = ["path /10.0.0.1/foo/bar ip 10.0.0.1:80/x hex 0xdeadbeef abc123def x\x1cy",
              "  a  a 1 2 b b /u/v /u/v", "Ünïcödé İstanbul 1.2.3.4 c:/x/y", ""]
    lines = tricky
    for system in ("BGL", "HDFS", "Android", "Windows", "Apache", "Linux", "Mac"):
        lines = lines + (loghub / system / f"{system}_2k.log").read_text(errors="replace").splitlines()[::4]
    for _ in range(2):  # cold, then from the chunk cache
        for line in lines:
            words = tok.words_reference(line)
            assert tok.words(line) == words
            ids = tok.encode(line)
            assert ids == (tok.CLS, *[tok.word_id(w) for w in words[: tok.max_len - 1]])
