"""The file helpers of core/data.py: read_jsonl, looks_binary, atomic_write, atomic_folder."""

import os

import pytest

from latentspace.core.data import atomic_folder, atomic_write, looks_binary, read_jsonl
from latentspace.core.errors import DataError


def test_read_jsonl_numbers_records_and_skips_blank_lines(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"a": 1}\n\n  \n{"a": 2, "b": "caf\\u00e9"}\n')
    assert list(read_jsonl(path)) == [(1, {"a": 1}), (4, {"a": 2, "b": "café"})]


@pytest.mark.parametrize("line, problem", [
    ('{"a": 1', "not valid JSON"),
    ("[1, 2]", "expected a JSON object, got list"),
    (b"\xff\xfe{}", "not UTF-8"),
])
def test_read_jsonl_names_the_malformed_line(tmp_path, line, problem):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"ok": true}\n' + (line if isinstance(line, bytes) else line.encode()) + b"\n")
    with pytest.raises(DataError, match=f"bad.jsonl:2: {problem}"):
        list(read_jsonl(path))


def test_looks_binary_on_bytes_and_files(tmp_path):
    assert not looks_binary(b"def f():\n\treturn 1\r\n\x0c")
    assert not looks_binary(b"")
    assert looks_binary(b"text\x00more")
    assert looks_binary(b"\x01\x02\x03" * 10 + b"some text")  # mostly control bytes
    assert not looks_binary(b"x" * 8192 + b"\x00")  # only the first 8 KiB are looked at
    (tmp_path / "elf").write_bytes(b"\x7fELF\x00\x00\x01" * 100)
    (tmp_path / "log").write_text("2024-01-01 INFO started\n" * 100)
    assert looks_binary(tmp_path / "elf") and not looks_binary(str(tmp_path / "log"))


def test_atomic_write_replaces_whole_files_and_leaves_nothing_on_error(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "f.json"
    atomic_write(path, "first")
    atomic_write(path, b"second")
    assert path.read_text() == "second"

    def crash(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", crash)  # written but not yet on disk
    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, "third")
    assert path.read_text() == "second" and os.listdir(path.parent) == ["f.json"]


def test_atomic_folder_swaps_in_a_complete_folder_or_nothing(tmp_path):
    target = tmp_path / "ckpt"
    with atomic_folder(target) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(RuntimeError), atomic_folder(target) as tmp:
        (tmp / "a").write_text("2")
        raise RuntimeError("crash mid-write")
    assert (target / "a").read_text() == "1" and sorted(os.listdir(tmp_path)) == ["ckpt"]
    with atomic_folder(target) as tmp:
        (tmp / "b").write_text("3")
    assert os.listdir(target) == ["b"] and sorted(os.listdir(tmp_path)) == ["ckpt"]


def test_atomic_folder_swaps_and_recover_folder_restores_a_folder_left_aside(tmp_path):
    from latentspace.core.data import atomic_folder, recover_folder

    target = tmp_path / "last"
    for content in ("one", "two"):
        with atomic_folder(target) as tmp:
            (tmp / "f").write_text(content)
    assert (target / "f").read_text() == "two" and [p.name for p in tmp_path.iterdir()] == ["last"]
    # a kill between the two renames of the fallback swap: the previous folder is aside, a new one half-written
    target.rename(tmp_path / ".last.old-123")
    (tmp_path / ".last.tmp-abc").mkdir()
    assert recover_folder(target) and (target / "f").read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["last"]
    assert not recover_folder(target)
