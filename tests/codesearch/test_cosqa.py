"""`codesearch evaluate --queries --codebase`: CoSQA-format retrieval on a tiny code base whose answers are known."""

import json

import pytest
from typer.testing import CliRunner

from latentspace import cli
from latentspace.codesearch.cli import app
from latentspace.codesearch.cosqa import code_snippet, load_cosqa
from latentspace.core.errors import DataError

runner = CliRunner()

FUNCTIONS = {
    'def crc_checksum(data):\n    """Compute the CRC32 checksum of a byte string."""\n    return zlib.crc32(data)': 10,
    'def read_yaml(path):\n    """Load a YAML configuration file from disk."""\n    with open(path) as f:\n'
    '        return yaml.safe_load(f)': 11,
    'def fibonacci(n):\n    """Return the n-th Fibonacci number iteratively."""\n    a, b = 0, 1\n'
    '    for _ in range(n):\n        a, b = b, a + b\n    return a': 12,
    'def is_iterable(obj):\n    """\n    Determine whether obj is iterable but not a string.\n    """\n'
    '    return hasattr(obj, "__iter__") and not isinstance(obj, str)': 13,
    'def flatten(nested):\n    """Flatten a list of lists into one list."""\n'
    '    return [x for xs in nested for x in xs]': 14,
    'def now_utc():\n    """Current time as a timezone-aware UTC datetime."""\n'
    '    return datetime.now(timezone.utc)': 15,
    'def md5_hex(text):\n    return hashlib.md5(text.encode()).hexdigest()': 16,
}
# three queries that are their function's exact docstring (BM25 ranks it first) and one that shares no word with
# the code base (nothing is ranked): MRR@10 = R@1 = R@10 = 3/4 for BM25
QUERIES = [
    {"doc": "Compute the CRC32 checksum of a byte string.", "retrieval_idx": 10},
    {"doc": "Return the n-th Fibonacci number iteratively.", "retrieval_idx": 12},
    {"doc": "Flatten a list of lists into one list.", "retrieval_idx": 14},
    {"doc": "zebra quokka", "retrieval_idx": 16},
]


@pytest.fixture
def cosqa_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the run folder goes under tmp_path/runs
    queries, codebase = tmp_path / "dev.json", tmp_path / "code_idx_map.json"
    queries.write_text(json.dumps(QUERIES))
    codebase.write_text(json.dumps(FUNCTIONS))
    return queries, codebase


def _evaluate(queries, codebase, *extra):
    result = runner.invoke(app, ["evaluate", "--queries", str(queries), "--codebase", str(codebase),
                                 "--methods", "bm25", "--quiet", *extra])
    assert result.exit_code == 0, result.output
    return result


def test_bm25_metrics_on_known_answers(cosqa_files, tmp_path):
    result = json.loads(_evaluate(*cosqa_files, "--json").output)
    m = result["metrics"]
    assert result["parts"] == ["bm25"] and result["default_parts"] == ["bm25"]
    for part in ("bm25", "fused", "default"):
        assert m[f"cosqa_dev_mrr10_{part}"] == pytest.approx(0.75)
        assert m[f"cosqa_dev_recall1_{part}"] == pytest.approx(0.75)
        assert m[f"cosqa_dev_recall10_{part}"] == pytest.approx(0.75)
    assert "cosqa_dev_mrr10_ltt" not in m and "cosqa_dev_mrr10_minilm" not in m
    assert result["sizes"] == {"queries": 4, "functions": 7, "functions_with_docstring": 6}
    assert result["index"]["snippets_per_s"] > 0 and 0 < result["query_ms"]["p50"] <= result["query_ms"]["p99"]
    assert (tmp_path / result["run"] / "result.json").exists()


def test_plain_output_and_split_name(cosqa_files):
    out = _evaluate(*cosqa_files, "--split", "test").output
    assert "MRR@10" in out and "bm25" in out and "fused" in out and "snippets/s" in out and "p99" in out
    result = json.loads(_evaluate(*cosqa_files, "--split", "test", "--json").output)
    assert "cosqa_test_mrr10_bm25" in result["metrics"]


def test_ltt_part_is_indexed_and_scored(cosqa_files):
    result = json.loads(_evaluate(*cosqa_files, "--methods", "bm25,ltt", "--preset", "tiny", "--ltt.train.steps",
                                  "3", "--json").output)
    assert result["parts"] == ["bm25", "ltt"] and result["default_parts"] == ["bm25", "ltt"]
    assert {"cosqa_dev_mrr10_bm25", "cosqa_dev_mrr10_ltt", "cosqa_dev_mrr10_fused",
            "cosqa_dev_mrr10_default"} <= set(result["metrics"])
    assert result["index"]["n_train_pairs"] >= 6


def test_snippet_keeps_the_whole_function_and_its_docstring():
    code = next(c for c, i in FUNCTIONS.items() if i == 13)
    snippet = code_snippet(code, 13)
    assert snippet.text == code and snippet.symbol == "is_iterable" and "iterable" in snippet.doc
    assert snippet.path == "cosqa/13.py" and snippet.end_line == code.count("\n") + 1


@pytest.mark.parametrize("queries, codebase, message", [
    ("[]", None, "holds no queries"),
    ("", None, "is empty"),
    ("[{\"doc\": ", None, "not valid JSON"),
    ("{\"doc\": \"x\"}", None, "not a JSON list"),
    ("[{\"doc\": \"x\"}]", None, "retrieval_idx"),
    ("[{\"doc\": \"x\", \"retrieval_idx\": 99}]", None, "99, which is not an id of the code base"),
    (None, "{}", "holds no functions"),
    (None, "[1, 2]", "not a JSON object"),
    (None, "{\"def f(): pass\": \"a\"}", "not an integer"),
])
def test_bad_files_are_data_errors(tmp_path, queries, codebase, message):
    q, c = tmp_path / "q.json", tmp_path / "c.json"
    q.write_text(json.dumps(QUERIES) if queries is None else queries)
    c.write_text(json.dumps(FUNCTIONS) if codebase is None else codebase)
    with pytest.raises(DataError, match=message):
        load_cosqa(q, c)


def test_errors_exit_2_through_main_before_any_run(cosqa_files, tmp_path, monkeypatch, capsys):
    queries, codebase = cosqa_files
    bad = tmp_path / "bad.json"
    bad.write_text("[{\"doc\": \"x\", \"retrieval_idx\": 99}]")
    cases = [(["--queries", str(bad), "--codebase", str(codebase)], "not an id of the code base"),
             (["--queries", str(tmp_path / "absent.json"), "--codebase", str(codebase)], "absent.json"),
             (["--queries", str(queries)], "go together")]
    for argv, message in cases:
        monkeypatch.setattr("sys.argv", ["latentspace", "codesearch", "evaluate", *argv])
        with pytest.raises(SystemExit) as exit_:
            cli.main()
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and message in err.replace("\n", ""), err
    assert not (tmp_path / "runs").exists()
