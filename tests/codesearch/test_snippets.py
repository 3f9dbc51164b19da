"""Walking (gitignore, filters, bad files) and tree-sitter snippet extraction per language."""

import os
from pathlib import Path

import pytest

from latentspace.codesearch.snippets import (
    clean_docstring,
    extract_snippets,
    first_sentence,
    line_windows,
    read_source,
    walk_files,
)

from .conftest import FILES


def _symbols(rel: str, language: str) -> dict[str, object]:
    return {s.symbol: s for s in extract_snippets(rel, FILES[rel], language) if s.symbol}


@pytest.mark.parametrize("rel, language, expected", [
    ("pkg/checksums.py", "python", {"compute_checksum": "function", "LRUCache": "class",
                                    "LRUCache.__init__": "method", "LRUCache.evict_oldest": "method"}),
    ("web/debounce.js", "javascript", {"debounce": "function", "sumArray": "function"}),
    ("web/dates.ts", "typescript", {"formatDate": "function", "Calendar": "class", "Calendar.addDays": "method"}),
    ("svc/config.go", "go", {"ParseConfig": "function", "Config": "class"}),
    ("core/math.rs", "rust", {"fibonacci": "function", "Point": "class"}),
    ("java/Stack.java", "java", {"Stack": "class", "Stack.push": "method"}),
    ("c/search.c", "c", {"binary_search": "function"}),
    ("cpp/matrix.cpp", "cpp", {"Matrix": "class", "Matrix.multiply": "method"}),
])
def test_extracts_definitions_per_language(rel, language, expected):
    found = _symbols(rel, language)
    for symbol, kind in expected.items():
        assert symbol in found, f"{symbol} not extracted from {rel}: {sorted(found)}"
        assert found[symbol].kind == kind
        assert found[symbol].language == language


def test_line_ranges_and_text_match_the_file():
    snippets = _symbols("pkg/checksums.py", "python")
    lines = FILES["pkg/checksums.py"].splitlines()
    s = snippets["compute_checksum"]
    assert lines[s.start_line - 1].startswith("def compute_checksum")
    assert s.text == "\n".join(lines[s.start_line - 1:s.end_line])
    assert lines[s.end_line - 1].strip() == "return value & 0xFFFFFFFF"


def test_python_docstring_is_split_from_code():
    s = _symbols("pkg/checksums.py", "python")["compute_checksum"]
    assert s.doc == "Compute the CRC32 checksum of a byte string."
    assert '"""' not in s.code and "zlib.crc32" in s.code and s.code.startswith("def compute_checksum")


@pytest.mark.parametrize("rel, language, symbol, doc", [
    ("web/debounce.js", "javascript", "debounce", "Delay calling fn until wait milliseconds"),
    ("svc/config.go", "go", "ParseConfig", "ParseConfig reads a YAML configuration file"),
    ("core/math.rs", "rust", "fibonacci", "Compute the n-th Fibonacci number iteratively."),
    ("c/search.c", "c", "binary_search", "Binary search for key in a sorted integer array"),
    ("java/Stack.java", "java", "Stack.push", "Push a value on top of the stack"),
])
def test_leading_comments_become_docs(rel, language, symbol, doc):
    s = _symbols(rel, language)[symbol]
    assert s.doc is not None and s.doc.startswith(doc)
    assert s.start_line == 1 or FILES[rel].splitlines()[s.start_line - 1].lstrip().startswith(("/", "*"))


def test_docstring_helpers():
    assert clean_docstring('"""Hello.\n\n    World."""') == "Hello.\n\n    World."
    assert clean_docstring("/** Format a date. */") == "Format a date."
    assert first_sentence("Return the sum. Then more.\n\nDetails.") == "Return the sum."
    assert first_sentence("A line\ncontinued here\n\nnext") == "A line continued here"


def test_line_windows_overlap_and_cover():
    lines = [f"line {i}" for i in range(1, 48)]
    windows = line_windows("f.txt", lines, "text", snippet_lines=20, overlap=5)
    assert [(w.start_line, w.end_line) for w in windows] == [(1, 20), (16, 35), (31, 47)]
    with pytest.raises(ValueError):
        line_windows("f.txt", lines, "text", snippet_lines=5, overlap=5)


def test_unknown_languages_and_module_code_fall_back_to_windows():
    windows = extract_snippets("README.md", FILES["README.md"], "text")
    assert windows and all(w.kind == "window" for w in windows)
    module = "import os\nA = 1\nB = 2\nC = 3\n\ndef f():\n    return A\n"
    kinds = [s.kind for s in extract_snippets("m.py", module, "python")]
    assert kinds == ["module", "function"]


def test_walk_respects_gitignore_vendored_binary_generated(repo):
    skipped = []
    walked = [p.relative_to(repo).as_posix() for p, _ in walk_files(repo, skipped=skipped)]
    readable = [p for p in walked if read_source(repo / p, 1_000_000, skipped) is not None]
    assert "pkg/checksums.py" in readable and "c/search.c" in readable and "README.md" in readable
    for left_out in ("ignored/secret.py", "debug.log", "node_modules/lib/index.js", "pkg/blob.py",
                     "pkg/messages_pb2.py"):
        assert left_out not in readable
    reasons = {Path(s.path).name: s.reason for s in skipped}
    assert reasons["blob.py"] == "binary" and reasons["messages_pb2.py"] == "generated"


def test_size_limit_invalid_utf8_and_unreadable(tmp_path, monkeypatch):
    big = tmp_path / "big.py"
    big.write_text("x = 1\n" * 1000)
    bad = tmp_path / "bad.py"
    bad.write_bytes(b"def f():\n    return '\xff\xfe'\n")
    locked = tmp_path / "locked.py"
    locked.write_text("def g():\n    pass\n")
    original = Path.read_bytes

    def read_bytes(self):
        if self.name == "locked.py":
            raise PermissionError(13, "Permission denied")
        return original(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    skipped = []
    assert read_source(big, 100, skipped) is None
    text, _ = read_source(bad, 10_000, skipped)
    assert "def f" in text and "\ufffd" in text
    assert read_source(locked, 10_000, skipped) is None
    reasons = {Path(s.path).name: s.reason for s in skipped}
    assert "larger than 100 bytes" in reasons["big.py"]
    assert "invalid UTF-8" in reasons["bad.py"]
    assert "Permission denied" in reasons["locked.py"]


def test_symlink_loop_and_empty_dirs(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "empty").mkdir()
    (tmp_path / "a" / "b" / "code.py").write_text("def f():\n    return 1\n")
    os.symlink(tmp_path / "a", tmp_path / "a" / "b" / "loop")
    os.symlink(tmp_path / "missing", tmp_path / "dangling.py")
    skipped = []
    files = [p.name for p, _ in walk_files(tmp_path, skipped=skipped)]
    assert files == ["code.py"]
    reasons = [s.reason for s in skipped]
    assert any("symlink loop" in r for r in reasons) and "broken symlink" in reasons
    assert list(walk_files(tmp_path / "empty")) == []
