import json

import pytest
from typer.testing import CliRunner

from latentspace.core.errors import DataError
from latentspace.lipo.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def debug_run(tmp_path_factory):
    import torch

    torch.set_num_threads(1)  # module fixtures run before the per-test one-thread fixture
    root = tmp_path_factory.mktemp("runs")
    result = runner.invoke(app, ["run", "--debug", "--iterations", "1", "--ape-num-instructions", "10", "--name",
                                 "dbg", "--runs-dir", str(root), "--quiet", "--json"])
    assert result.exit_code == 0, result.output
    return root / "lipo" / "dbg", json.loads(result.stdout)


def test_standard_debug_run_writes_the_seed_result(debug_run):
    folder, result = debug_run
    for key in ("timestamp", "vae_quality_metrics", "config", "vae_training", "hyperband", "inference",
                "total_llm_calls"):
        assert key in result
    assert result["config"]["mode"] == "standard" and result["config"]["iterations"] == 1
    assert result["hyperband"]["llm_calls"] > 0 and result["inference"]["iterations"] == 1
    assert result["total_llm_calls"] >= result["hyperband"]["llm_calls"]
    assert result["task_model"]["simulated"]
    for name in ("config.json", "metrics.jsonl", "summary.md", "result.json", "hyperband_evals.json",
                 "plots/lipo_progress.png", "checkpoints/vae/model.safetensors", "llm_cache.jsonl"):
        assert (folder / name).exists(), name


def test_skip_hbbops_and_load_grid_modes(debug_run, tmp_path):
    folder, _ = debug_run
    out = runner.invoke(app, ["run", "--debug", "--skip-hbbops", "--hyperband-evals-path",
                              str(folder / "hyperband_evals.json"), "--runs-dir", str(tmp_path), "--quiet", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert data["config"]["mode"] == "skip_hbbops" and data["hyperband"]["llm_calls"] == 0
    grid = tmp_path / "grid.jsonl"
    grid.write_text("\n".join(json.dumps({"instruction": t, "error_rate": e}) for t, e in [
        ("Let's think step by step.", 0.2), ("Solve:", 0.5), ("Check your arithmetic and give the number.", 0.3),
        ("You are a patient tutor.", 0.4)]))
    out = runner.invoke(app, ["run", "--debug", "--load-grid", str(grid), "--top-k", "3", "--runs-dir", str(tmp_path),
                              "--quiet", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["hyperband"]["best_error"] == 0.2


def test_bad_inputs_raise_clear_errors(tmp_path):
    bad = tmp_path / "grid.jsonl"
    bad.write_text('{"instruction": "x"}\n')
    out = runner.invoke(app, ["run", "--debug", "--load-grid", str(bad), "--runs-dir", str(tmp_path), "--quiet"])
    assert isinstance(out.exception, DataError) and "grid.jsonl:1" in str(out.exception)
    out = runner.invoke(app, ["run", "--debug", "--hyperband-only", "--skip-hbbops", "--runs-dir", str(tmp_path)])
    assert isinstance(out.exception, DataError)


def test_evaluate_verb_json(tmp_path):
    out = runner.invoke(app, ["evaluate", "-i", "Let's think step by step.", "-i", "Guess quickly.", "--test-size",
                              "50", "--runs-dir", str(tmp_path), "--json"])
    assert out.exit_code == 0, out.output
    rows = json.loads(out.stdout)["rows"]
    assert len(rows) == 2 and rows[0]["error"] < rows[1]["error"]


def test_help_lists_the_config_options():
    out = runner.invoke(app, ["run", "--help"], env={"COLUMNS": "200"})
    assert out.exit_code == 0
    for flag in ("--preset", "--debug", "--iterations", "--ape-num-instructions", "--skip-hbbops", "--config"):
        assert flag in out.output, flag
    out = runner.invoke(app, ["evaluate", "--help"], env={"COLUMNS": "200"})
    assert "--task-backend" in out.output and "--preset" in out.output


@pytest.mark.parametrize("argv", [["--preset", "debug"], ["--debug"]])
def test_an_option_beats_the_preset(argv, tmp_path, monkeypatch):
    """`--preset debug --iterations 3` runs 3 iterations (the preset says 1); the rest of the preset holds."""
    seen = {}

    def fake_run(config, run, **kwargs):
        seen["config"] = config
        run.write_config(config)
        raise SystemExit(0)

    monkeypatch.setattr("latentspace.lipo.pipeline.run_lipo", fake_run)
    out = runner.invoke(app, ["run", *argv, "--iterations", "3", "--name", "p", "--runs-dir", str(tmp_path)])
    assert out.exit_code == 0, out.output
    saved = json.loads((tmp_path / "lipo" / "p" / "config.json").read_text())
    assert saved["iterations"] == 3 and seen["config"].iterations == 3
    assert saved["ape_num_instructions"] == 10 and saved["vae_epochs"] == 30  # the debug preset's


def test_defaults_without_a_preset(tmp_path, monkeypatch):
    seen = {}

    def fake_run(config, run, **kwargs):
        seen["config"] = config
        raise SystemExit(0)

    monkeypatch.setattr("latentspace.lipo.pipeline.run_lipo", fake_run)
    out = runner.invoke(app, ["run", "--runs-dir", str(tmp_path)])
    assert out.exit_code == 0, out.output
    assert seen["config"].iterations == 6 and seen["config"].offline  # the CPU defaults, not the seed's
