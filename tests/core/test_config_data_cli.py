import json
import subprocess
import sys

import pytest

from latentspace.core.data import data_roots, find_dataset, list_datasets, sample_path
from latentspace.core.errors import DataError


def test_find_dataset_searches_data_dir_env_then_cache_then_sample(tmp_path, monkeypatch):
    monkeypatch.delenv("LATENTSPACE_DATA", raising=False)
    monkeypatch.setenv("LATENTSPACE_CACHE", str(tmp_path / "cache"))
    (tmp_path / "mine").mkdir()
    assert find_dataset("mine", data_dir=tmp_path) == tmp_path / "mine"
    with pytest.raises(DataError, match="latentspace data fetch absent"):
        find_dataset("absent")
    # no full copy: the embedded sample, unless the caller needs the full data set
    assert find_dataset("gsm8k") == sample_path("gsm8k") is not None
    assert find_dataset("gsm8k", required=False, sample=False) is None
    with pytest.raises(DataError, match="data set 'gsm8k' not found.*latentspace data fetch gsm8k"):
        find_dataset("gsm8k", sample=False)
    # the cache, then $LATENTSPACE_DATA, then --data-dir win over it
    (tmp_path / "cache" / "data" / "gsm8k").mkdir(parents=True)
    assert find_dataset("gsm8k") == tmp_path / "cache" / "data" / "gsm8k"
    (tmp_path / "env" / "gsm8k").mkdir(parents=True)
    monkeypatch.setenv("LATENTSPACE_DATA", str(tmp_path / "env"))
    assert find_dataset("gsm8k") == tmp_path / "env" / "gsm8k"
    (tmp_path / "gsm8k").mkdir()
    assert find_dataset("gsm8k", data_dir=tmp_path) == tmp_path / "gsm8k"
    with pytest.raises(DataError, match="not a folder"):
        find_dataset("mine", data_dir=tmp_path / "nope")


def test_no_implicit_checkout_data(tmp_path, monkeypatch):
    """`../shared/data` beside a checkout is never searched: only --data-dir, $LATENTSPACE_DATA, the cache."""
    monkeypatch.delenv("LATENTSPACE_DATA", raising=False)
    monkeypatch.setenv("LATENTSPACE_CACHE", str(tmp_path / "cache"))
    assert data_roots() == []


def test_list_datasets_shows_every_pinned_data_set(tmp_path, monkeypatch):
    monkeypatch.setenv("LATENTSPACE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LATENTSPACE_DATA", raising=False)
    (tmp_path / "gsm8k").mkdir()
    infos = {i.name: i for i in list_datasets(tmp_path)}
    assert set(infos) == {"loghub", "gsm8k", "time-mmd", "babi-tasks", "instruction-induction", "cosqa"}
    assert infos["gsm8k"].origin.startswith("openai/grade-school-math@") and infos["gsm8k"].path == tmp_path / "gsm8k"
    assert infos["cosqa"].path is None and infos["cosqa"].sample is None and infos["cosqa"].files == 2
    assert infos["time-mmd"].sample is None  # no licence file: not shipped
    assert "200 lines" in infos["gsm8k"].sample


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "latentspace.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def test_cli_version_data_and_usage_errors(tmp_path):
    assert "latentspace 0.1.0" in _cli("--version").stdout
    result = _cli("data", "--json", "--data-dir", str(tmp_path))
    assert result.returncode == 0 and len(json.loads(result.stdout)) == 6
    assert result.returncode == 0 and isinstance(json.loads(result.stdout), list)
    result = _cli("demo", "--only", "nosuchfamily", "-o", str(tmp_path / "d"))
    assert result.returncode == 2 and "unknown family" in result.stderr

