"""BM25 / dense / hybrid ranking on a fixture repo, incremental re-index, atomic and versioned storage."""

import json
import math
import shutil

import numpy as np
import pytest

from latentspace.codesearch.config import IndexConfig
from latentspace.codesearch.index import (
    BM25Part,
    CodeIndex,
    DensePart,
    IndexFormatError,
    build_index,
    reciprocal_rank_fusion,
    reciprocal_rank_fusion_reference,
    top_k,
)
from latentspace.codesearch.tokens import bm25_tokens
from latentspace.core.errors import DataError

BM25_ONLY = IndexConfig(encoders="")
KNOWN = {  # query -> the symbol that answers it
    "crc32 checksum of bytes": "compute_checksum",
    "fibonacci number": "fibonacci",
    "binary search in a sorted array": "binary_search",
    "read yaml configuration file": "ParseConfig",
    "multiply matrices": "Matrix.multiply",
}
SEMANTIC = {  # paraphrases with few shared words: the dense part must carry them
    "wait before invoking a callback again": "debounce",
    "drop the entry that was used longest ago": "LRUCache.evict_oldest",
    "total of all values": "sumArray",
    "shift a day forward by some amount": "Calendar.addDays",
}


def _top(index, query, parts=None):
    return index.search(query, 3, parts)[0].snippet.symbol


def test_bm25_finds_the_known_answers(repo):
    index = build_index(repo, BM25_ONLY)
    assert index.parts == ["bm25"]
    for query, symbol in KNOWN.items():
        assert _top(index, query) == symbol, query
    assert index.search("zzzz qqqq", 5) == []


def test_bm25_scores_match_the_lucene_formula():
    docs = ["parse the header line", "parse parse body", "write the footer", "header header header parse"]
    part = BM25Part.build(docs)
    terms = [bm25_tokens(d) for d in docs]
    avg = sum(map(len, terms)) / len(terms)
    query = "parse header"
    expected = []
    for doc in terms:
        score = 0.0
        for term in set(bm25_tokens(query)):
            df = sum(term in d for d in terms)
            tf = doc.count(term)
            idf = math.log(1 + (len(docs) - df + 0.5) / (df + 0.5))
            score += idf * tf / (tf + 1.5 * (1 - 0.75 + 0.75 * len(doc) / avg))
        expected.append(score)
    np.testing.assert_allclose(part.scores(query), expected, rtol=1e-5)


def test_dense_and_hybrid_find_paraphrases(repo, minilm):
    index = build_index(repo, IndexConfig(encoders="minilm"), loaded_encoders={"minilm": minilm})
    assert index.parts == ["bm25", "minilm"]
    for query, symbol in SEMANTIC.items():
        assert _top(index, query, ["minilm"]) == symbol, query
        assert _top(index, query) == symbol, query
    for query, symbol in KNOWN.items():
        assert _top(index, query) == symbol, query
    hits = index.search("fibonacci number", 5, ["bm25"])
    assert all(set(h.ranks) == {"bm25"} for h in hits)
    with pytest.raises(DataError, match="no part"):
        index.search("x", 3, ["ltt"])


def test_faiss_search_matches_numpy_reference():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(500, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    part = DensePart(vectors)
    for query in vectors[:5] + 0.1:
        np.testing.assert_array_equal(part.rank(query, 20), part.rank_reference(query, 20))


def test_rrf_matches_reference_and_top_k():
    rng = np.random.default_rng(1)
    rankings = [list(rng.permutation(40)[:15]) for _ in range(3)]
    fast = reciprocal_rank_fusion(rankings, weights=[1.0, 0.5, 2.0])
    slow = reciprocal_rank_fusion_reference(rankings, 40, weights=[1.0, 0.5, 2.0])
    assert [d for d, _ in fast] == [d for d, _ in slow]
    np.testing.assert_allclose([s for _, s in fast], [s for _, s in slow])
    scores = rng.normal(size=100)
    assert list(top_k(scores, 7)) == list(np.argsort(-scores)[:7])


def test_similar_excludes_itself(repo):
    index = build_index(repo, BM25_ONLY)
    source, hits = index.similar("pkg/checksums.py", 7, top_k=5)
    assert source.symbol == "compute_checksum"
    assert all(not (h.snippet.path == source.path and h.snippet.start_line <= source.end_line
                    and source.start_line <= h.snippet.end_line) for h in hits)
    with pytest.raises(DataError, match="not in the index"):
        index.similar("nope.py", 1)


def test_incremental_update_reuses_unchanged_files(repo, tmp_path, minilm):
    out = tmp_path / "index"
    first = build_index(repo, IndexConfig(encoders="minilm"), loaded_encoders={"minilm": minilm})
    first.save(out)
    previous = CodeIndex.load(out)
    (repo / "c" / "search.c").write_text("/* Reverse a linked list in place. */\n"
                                         "node *reverse_list(node *head) {\n  return head;\n}\n")
    (repo / "pkg" / "strings.py").write_text('def slugify(title):\n    """Make a URL slug."""\n'
                                             '    return title.lower().replace(" ", "-")\n')
    (repo / "java" / "Stack.java").unlink()
    calls = []
    real_encode = minilm.encode_code

    def counting(texts):
        calls.append(len(texts))
        return real_encode(texts)

    minilm.encode_code = counting
    try:
        second = build_index(repo, IndexConfig(encoders="minilm"), previous=previous,
                             loaded_encoders={"minilm": minilm})
    finally:
        del minilm.encode_code
    assert second.stats["n_files_changed"] == 2 and second.stats["n_files_removed"] == 1
    unchanged = [s for s in first.snippets if s.path not in ("c/search.c", "java/Stack.java")]
    assert second.stats["n_snippets_reused"] == len(unchanged)
    assert calls == [len(second) - len(unchanged)]  # only new snippets were embedded
    old_rows = {(s.path, s.start_line, s.end_line): i for i, s in enumerate(previous.snippets)}
    for i, s in enumerate(second.snippets):
        key = (s.path, s.start_line, s.end_line)
        if s.path not in ("c/search.c", "pkg/strings.py"):
            np.testing.assert_array_equal(second.vectors["minilm"][i], previous.vectors["minilm"][old_rows[key]])
    assert _top(second, "reverse linked list") == "reverse_list"
    assert _top(second, "url slug") == "slugify"
    assert not any(s.symbol == "Stack.push" for s in second.snippets)


def test_save_load_round_trip(repo, tmp_path):
    index = build_index(repo, BM25_ONLY)
    index.save(tmp_path / "idx")
    loaded = CodeIndex.load(tmp_path / "idx")
    assert [s.to_dict() for s in loaded.snippets] == [s.to_dict() for s in index.snippets]
    for query in KNOWN:
        assert [h.snippet.symbol for h in loaded.search(query, 5)] == [h.snippet.symbol for h in index.search(query, 5)]


def _crash():
    raise KeyboardInterrupt("simulated crash")


def test_crash_mid_write_keeps_the_previous_index(repo, tmp_path, monkeypatch):
    out = tmp_path / "idx"
    build_index(repo, BM25_ONLY).save(out)
    before = (out / "CURRENT").read_text()
    (repo / "pkg" / "checksums.py").unlink()
    changed = build_index(repo, BM25_ONLY)
    with pytest.raises(KeyboardInterrupt):
        changed.save(out, crash_hook=_crash)  # files written, CURRENT not yet switched
    monkeypatch.setattr(BM25Part, "save", lambda self, d: _crash())
    with pytest.raises(KeyboardInterrupt):
        changed.save(out)  # crash while writing the files
    assert (out / "CURRENT").read_text() == before
    assert not list(out.glob(".*tmp*"))
    assert _top(CodeIndex.load(out), "crc32 checksum of bytes") == "compute_checksum"


def _manifest(out):
    return out / (out / "CURRENT").read_text().strip() / "manifest.json"


@pytest.mark.parametrize("damage, message", [
    (lambda out: _edit_manifest(out, format_version=0), "format version 0.*rebuild"),
    (lambda out: _edit_manifest(out, format_version=99), "format version 99.*upgrade"),
    (lambda out: _manifest(out).write_text("{not json"), "not JSON"),
    (lambda out: (out / "CURRENT").write_text("gen-999999"), "not a complete generation"),
    (lambda out: (_manifest(out).parent / "vectors.safetensors").write_bytes(b"\x00" * 10), "corrupt"),
    (lambda out: (_manifest(out).parent / "snippets.jsonl").write_text('{"path": "x"}\n'), "corrupt"),
    (lambda out: shutil.rmtree(_manifest(out).parent / "bm25"), "corrupt"),
])
def test_corrupt_or_old_index_gives_a_clear_error(repo, tmp_path, damage, message):
    out = tmp_path / "idx"
    build_index(repo, BM25_ONLY).save(out)
    damage(out)
    with pytest.raises(IndexFormatError, match=message):
        CodeIndex.load(out)


def _edit_manifest(out, **changes):
    path = _manifest(out)
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))


def test_empty_tree_and_missing_index(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no source files"):
        build_index(tmp_path / "empty", BM25_ONLY)
    with pytest.raises(IndexFormatError, match="no index"):
        CodeIndex.load(tmp_path / "nothing")
    with pytest.raises(IndexFormatError, match="not a codesearch index"):
        CodeIndex.load(tmp_path / "empty")
