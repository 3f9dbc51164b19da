import json

from typer.testing import CliRunner

from latentspace.core.errors import CheckpointError, ConfigError
from latentspace.lbs.cli import app

TINY = ["--model.tiny-hidden", "32", "--model.tiny-layers", "1", "--model.latent-dim", "8", "--model.max-text-chars",
        "48", "--model.text-loss-samples", "2", "--window.window", "8", "--window.batch", "4", "--train.steps", "3",
        "--quiet"]


def test_train_forecast_steer(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["train", *TINY, "--runs-dir", str(tmp_path), "--name", "t", "--json",
                              "--window.val-every", "2"])
    assert res.exit_code == 0, res.output
    run = tmp_path / "lbs" / "t"
    out = json.loads(res.output)
    assert out["steps"] == 3 and out["val_mse_best"] > 0  # early stopping on the validation part ran
    assert (run / "model" / "model.safetensors").is_file() and (run / "metrics.jsonl").is_file()
    assert (run / "config.json").is_file() and (run / "summary.md").is_file()
    res = runner.invoke(app, ["forecast", "--model", str(run), "--horizon", "4", "--samples", "8", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)["forecast"]
    assert len(rows) == 4 and all(r["q10"] <= r["q50"] <= r["q90"] for r in rows)
    res = runner.invoke(app, ["steer", "--model", str(run), "--target", "3.0", "--strength", "0.9", "--json",
                              "--horizon", "3", "--samples", "8"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["moved_toward_goal_frac"] > 0.5
    res = runner.invoke(app, ["steer", "--model", str(run), "--json"])
    assert isinstance(res.exception, ConfigError)


def test_missing_model(tmp_path):
    res = CliRunner().invoke(app, ["forecast", "--model", str(tmp_path / "none")])
    assert isinstance(res.exception, CheckpointError)


def test_run_config_tree_on_the_command_line(tmp_path):
    """--help lists the dotted options; --train.steps reaches training; an option beats the preset."""
    runner = CliRunner()
    res = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    for flag in ("--train.steps", "--train.seed", "--window.bptt", "--model.latent-dim", "--preset", "--data"):
        assert flag in res.output, flag
    assert "--highway-stat" not in res.output and "--model.highway-stat" not in res.output  # fitted, not set
    res = runner.invoke(app, ["train", *TINY, "--preset", "tiny", "--model.latent-dim", "6", "--train.steps", "2",
                              "--runs-dir", str(tmp_path), "--name", "p", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["steps"] == 2
    saved = json.loads((tmp_path / "lbs" / "p" / "config.json").read_text())
    assert saved["train"]["steps"] == 2 and saved["model"]["latent_dim"] == 6  # the option beat the preset's 8
    assert saved["model"]["prefix_tokens"] == 2 and saved["window"]["bptt"] == 16  # the rest of the preset
    header = json.loads((tmp_path / "lbs" / "p" / "model" / "config.json").read_text())
    assert "highway_stat" not in header["config"] and header["metadata"]["highway_stat"] == {}
