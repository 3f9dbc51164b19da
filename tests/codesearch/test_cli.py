"""The codesearch command line end to end on the fixture repo (BM25 only, so it is fast)."""

import json

import pytest
from typer.testing import CliRunner

from latentspace.codesearch.cli import app
from latentspace.codesearch.index import IndexFormatError
from latentspace.core.errors import DataError

runner = CliRunner()


@pytest.fixture
def indexed(repo, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "idx"
    result = runner.invoke(app, ["index", str(repo), "--output", str(out), "--encoders", "", "--quiet", "--json"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.output)
    assert stats["n_snippets"] > 10 and any(s["reason"] == "binary" for s in stats["skipped"])
    assert (tmp_path / "runs" / "codesearch").is_dir()
    return out


def test_search_json_and_show_code(indexed):
    result = runner.invoke(app, ["search", "crc32 checksum", "--index", str(indexed), "--json", "--top-k", "3",
                                 "--show-code"])
    assert result.exit_code == 0, result.output
    hits = json.loads(result.output)
    assert hits[0]["symbol"] == "compute_checksum" and "zlib.crc32" in hits[0]["code"] and len(hits) <= 3
    plain = runner.invoke(app, ["search", "fibonacci", "--index", str(indexed)])
    assert "core/math.rs" in plain.output and "fibonacci" in plain.output


def test_similar_and_bad_location(indexed):
    result = runner.invoke(app, ["similar", "pkg/checksums.py:7", "--index", str(indexed), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["source"]["symbol"] == "compute_checksum"
    bad = runner.invoke(app, ["similar", "checksums.py", "--index", str(indexed)])
    assert isinstance(bad.exception, DataError)


def test_incremental_reindex_through_the_cli(indexed, repo):
    (repo / "pkg" / "new.py").write_text("def shiny_new_function():\n    return 42\n")
    result = runner.invoke(app, ["index", str(repo), "--output", str(indexed), "--encoders", "", "-q", "--json"])
    stats = json.loads(result.output)
    assert stats["n_files_changed"] == 1 and stats["n_snippets_reused"] > 0


def test_corrupt_index_is_reported_and_kept(indexed, repo):
    current = indexed / (indexed / "CURRENT").read_text().strip()
    (current / "manifest.json").write_text("garbage")
    before = sorted(p.name for p in indexed.rglob("*"))
    for args in (["search", "x", "--index", str(indexed)],
                 ["index", str(repo), "--output", str(indexed), "--encoders", "", "-q"]):
        result = runner.invoke(app, args)
        assert isinstance(result.exception, IndexFormatError) and "rebuild" in str(result.exception)
    assert sorted(p.name for p in indexed.rglob("*")) == before
    rebuilt = runner.invoke(app, ["index", str(repo), "--output", str(indexed), "--encoders", "", "-q", "--rebuild"])
    assert rebuilt.exit_code == 0, rebuilt.output
    assert runner.invoke(app, ["search", "fibonacci", "--index", str(indexed)]).exit_code == 0


def test_refuses_to_write_into_a_folder_that_is_not_an_index(repo, tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    result = runner.invoke(app, ["index", str(repo), "--output", str(tmp_path / "notes"), "--encoders", ""])
    assert isinstance(result.exception, DataError)
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"


def test_index_and_evaluate_options_come_from_their_run_configs(repo, tmp_path, monkeypatch):
    """--help lists the dotted options of the nested code encoder; --ltt.train.steps reaches the trained encoder
    and beats --preset tiny, whose other settings stay."""
    from latentspace.codesearch.index import CodeIndex

    monkeypatch.chdir(tmp_path)
    for verb in ("index", "evaluate"):
        res = runner.invoke(app, [verb, "--help"], env={"COLUMNS": "200"})
        assert res.exit_code == 0, res.output
        for flag in ("--ltt.train.steps", "--ltt.train.lr", "--ltt.train.seed", "--ltt.encoder.d-model",
                     "--ltt.embed-dim", "--ltt.batch-size", "--preset", "--config"):
            assert flag in res.output, (verb, flag)
        assert "--encoder-steps" not in res.output and "--encoder-preset" not in res.output
    out = tmp_path / "idx"
    res = runner.invoke(app, ["index", str(repo), "--output", str(out), "--encoders", "ltt", "--preset", "tiny",
                              "--ltt.train.steps", "3", "--ltt.embed-dim", "16", "--quiet", "--json"])
    assert res.exit_code == 0, res.output
    index = CodeIndex.load(out)
    assert index.config.ltt.train.steps == 3 and index.config.ltt.embed_dim == 16  # the options beat the preset
    assert index.config.ltt.encoder.d_model == 32 and index.config.ltt.max_words == 2000  # the rest of the preset
    trained = index.encoder("ltt").config
    assert trained.train.steps == 3 and trained.embed_dim == 16 and trained.encoder.d_model == 32


def test_search_settings_come_from_its_config(indexed, tmp_path, monkeypatch):
    """`search` / `similar` settings are SearchConfig's fields: command line > --config file > defaults."""
    from latentspace.codesearch.index import CodeIndex
    from latentspace.core.errors import ConfigError

    calls = []
    search = CodeIndex.search

    def spy(self, query, top_k=10, parts=None, depth=100):
        calls.append((top_k, parts, depth))
        return search(self, query, top_k, parts, depth)

    monkeypatch.setattr(CodeIndex, "search", spy)
    settings = tmp_path / "search.json"
    settings.write_text(json.dumps({"top_k": 5, "parts": "bm25", "depth": 7}))
    result = runner.invoke(app, ["search", "checksum", "--index", str(indexed), "--json", "--config", str(settings),
                                 "--top-k", "2"])
    assert result.exit_code == 0, result.output
    assert calls == [(2, ["bm25"], 7)] and len(json.loads(result.output)) <= 2
    result = runner.invoke(app, ["search", "checksum", "--index", str(indexed), "--json"])
    assert calls[-1] == (10, None, 100)
    bad = runner.invoke(app, ["similar", "pkg/checksums.py:7", "--index", str(indexed), "--top-k", "0"])
    assert isinstance(bad.exception, ConfigError) and "--top-k" in str(bad.exception)
