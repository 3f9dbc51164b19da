import json

from typer.testing import CliRunner

from latentspace.logs.cli import app
from latentspace.logs.config import LogsConfig

runner = CliRunner()
TINY = ["--hash-buckets", "512", "--max-len", "24", "--encoder.d-model", "32", "--encoder.n-layers", "1",
        "--encoder.n-heads", "2", "--encoder.latent-dim", "16", "--memory-size", "100", "--batch-size", "32"]


def test_train_classify_stream_evaluate(loghub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["train", "--train.steps", "30", "--name", "t", "--quiet", "--json", *TINY,
                                 "--data-dir", str(loghub.parent)])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output)
    assert 0.0 <= metrics["test_acc"] <= 1.0 and (tmp_path / "runs/logs/t/raccoon/learner.json").is_file()

    log = tmp_path / "sample.log"
    lines = (loghub / "BGL" / "BGL_2k.log").read_text().splitlines()[:30]
    log.write_bytes(("\n".join(lines) + "\n\n").encode() + b"\xff\xfe bad bytes\n")
    result = runner.invoke(app, ["classify", str(log), "--model", "runs/logs/t", "--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert len(rows) == 31 and {"label", "anomaly_score", "alert", "template"} <= set(rows[0])

    feedback = "".join(f"#label {'alert' if line[0] != '-' else 'normal'} {line[line.index(' ') + 1:]}\n"
                       for line in lines)
    result = runner.invoke(app, ["stream", "--model", "runs/logs/t", "--state", "state", "--json"],
                           input="\n".join(lines[:5]) + "\n" + feedback + "\x00junk\n" + lines[0])
    assert result.exit_code == 0, result.output
    state = json.loads((tmp_path / "state" / "learner.json").read_text())
    assert state["updates"] == 2  # 30 feedback lines, update_batch 16: one update + one flushed at the end

    result = runner.invoke(app, ["evaluate", "--model", "runs/logs/t", "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    assert set(json.loads(result.output)["results"]) == {"model", "drain_lr", "tfidf_lr"}


def test_bad_input_gives_clean_errors(tmp_path):
    from latentspace.core.errors import LatentspaceError

    binary = tmp_path / "x.bin"
    binary.write_bytes(b"\x00\x01\x02" * 1000)
    result = runner.invoke(app, ["classify", str(binary), "--model", str(tmp_path)])
    assert isinstance(result.exception, LatentspaceError) and "neither" in str(result.exception)
    result = runner.invoke(app, ["train", "--task", "nope"])
    assert isinstance(result.exception, LatentspaceError)


def test_train_options_and_preset_precedence(loghub, tmp_path, monkeypatch):
    """--help lists the dotted options; --train.steps reaches training and beats --preset tiny, whose other
    settings (and its warm-up) stay; the saved config reads back as the run's LogsConfig."""
    res = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    for flag in ("--train.steps", "--train.lr", "--train.seed", "--train.warmup-steps", "--encoder.d-model",
                 "--batch-size", "--preset", "--config"):
        assert flag in res.output, flag
    assert "--steps " not in res.output and "--seed " not in res.output
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["train", "--preset", "tiny", "--train.steps", "8", "--train.lr", "0.005",
                              "--memory-size", "50", "--batch-size", "16", "--name", "p", "--quiet", "--json",
                              "--data-dir", str(loghub.parent)])
    assert res.exit_code == 0, res.output
    saved = LogsConfig.from_json(tmp_path / "runs/logs/p/config.json")
    assert saved.train.steps == 8 and saved.train.lr == 0.005 and saved.memory_size == 50  # options beat the preset
    assert saved.encoder.d_model == 32 and saved.hash_buckets == 512 and saved.train.warmup_steps == 6  # the preset
    lines = (tmp_path / "runs/logs/p/metrics.jsonl").read_text().splitlines()
    assert max(json.loads(line).get("step", 0) for line in lines) == 8
