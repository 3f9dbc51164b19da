import json

from typer.testing import CliRunner

from latentspace.rbsqa.cli import app
from latentspace.rbsqa.config import RBSQAConfig

runner = CliRunner()


def test_train_answer_evaluate(tmp_path):
    config = tmp_path / "tiny.json"
    RBSQAConfig.preset("tiny").replace(steps=5).to_json(config)
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
