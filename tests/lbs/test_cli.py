import json

from typer.testing import CliRunner

from latentspace.core.errors import CheckpointError, ConfigError
from latentspace.lbs.cli import app

TINY = ["--tiny-hidden", "32", "--tiny-layers", "1", "--latent-dim", "8", "--max-text-chars", "48",
        "--text-loss-samples", "2", "--window", "8", "--batch", "4", "--steps", "3", "--quiet"]


def test_train_forecast_steer(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["train", *TINY, "--runs-dir", str(tmp_path), "--name", "t", "--json", "--val-every", "2"])
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
