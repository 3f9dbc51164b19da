import json

from typer.testing import CliRunner

from latentspace.rbsqa.cli import app
from latentspace.rbsqa.config import RBSQAConfig

runner = CliRunner()


def test_train_answer_evaluate(tmp_path):
    config = tmp_path / "tiny.json"
    RBSQAConfig.preset("tiny").override({"train.steps": 5}).to_json(config)
    runs = tmp_path / "runs"
    result = runner.invoke(app, ["train", "--config", str(config), "--runs-dir", str(runs), "--name", "t",
                                 "--quiet", "--json"])
    assert result.exit_code == 0, result.output
    assert (runs / "rbsqa" / "t" / "model" / "model.safetensors").is_file()
    assert (runs / "rbsqa" / "t" / "metrics.jsonl").is_file() and (runs / "rbsqa" / "t" / "summary.md").is_file()
    doc = tmp_path / "story.txt"
    doc.write_text("Mary went to the kitchen. John moved to the garden. Mary travelled to the office. "
                   "Fred went to the hallway. Mary journeyed to the cellar. John went to the bedroom.")
    result = runner.invoke(app, ["answer", "--doc", str(doc), "--question", "Where is Mary?", "--runs-dir",
                                 str(runs), "--quiet", "--json", "--no-halt"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["segments_read"] == out["num_segments"] and len(out["steps"]) == out["num_segments"]
    assert out["answer"] == out["answer_text"]
    result = runner.invoke(app, ["evaluate", "--config", str(config), "--runs-dir", str(runs), "--quiet", "--json",
                                 "--checkpoint", str(runs / "rbsqa" / "t" / "model"), "--name", "e"])
    assert result.exit_code == 0, result.output
    assert "f1_with_tracker" in json.loads(result.output)
    assert (runs / "rbsqa" / "e" / "plots" / "belief_trajectory.png").is_file()


def test_answer_rejects_bad_documents(tmp_path):
    from latentspace.core.errors import DataError

    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\x00\x01\x02")
    for path, message in ((tmp_path / "missing.txt", "does not exist"), (binary, "binary")):
        result = runner.invoke(app, ["answer", "--doc", str(path), "--question", "Where?", "--runs-dir",
                                     str(tmp_path / "runs")])
        assert result.exit_code != 0
        assert isinstance(result.exception, DataError) and message in str(result.exception)


def test_dotted_options_reach_the_config_and_beat_the_preset(tmp_path, monkeypatch):
    from latentspace.rbsqa import train as train_module

    seen = []

    def fake_train(config, *args, **kwargs):
        seen.append(config)
        raise SystemExit(0)

    monkeypatch.setattr(train_module, "train_model", fake_train)
    result = runner.invoke(app, ["train", "--preset", "tiny", "--train.steps", "3", "--train.lr", "0.01",
                                 "--model-dim", "16", "--runs-dir", str(tmp_path), "--name", "t", "--quiet"])
    assert result.exit_code == 0, result.output
    config = seen[0]
    assert (config.train.steps, config.train.lr, config.model_dim) == (3, 0.01, 16)  # the preset says 20, 1e-3, 0
    assert config.encoder == "tiny-bert" and config.train.log_every == 1  # the rest is the preset's
    assert config.train.warmup == 0  # min(50, steps // 10)
    saved = RBSQAConfig.from_json(tmp_path / "rbsqa" / "t" / "config.json")
    assert saved == config
    for verb in ("train", "answer", "evaluate"):
        out = runner.invoke(app, [verb, "--help"], env={"COLUMNS": "200"})
        assert out.exit_code == 0, out.output
        for option in ("--preset", "--config", "--train.steps", "--train.lr", "--train.warmup-steps", "--batch-size",
                       "--encoder"):
            assert option in out.output, (verb, option)
        assert "--steps " not in out.output and "--lr " not in out.output and "--seed " not in out.output
