"""End-to-end test of `latentspace ltt train | sample | plan | evaluate` with tiny settings."""

import json

from typer.testing import CliRunner

from latentspace.core.checkpoint import load_checkpoint
from latentspace.ltt.cli import app
from latentspace.ltt.config import LTTConfig, LTTRunConfig

runner = CliRunner()
TINY = ["--model.d-model", "16", "--model.latent-dim", "4", "--model.n-layers", "1", "--model.decoder-layers", "1",
        "--model.n-heads", "2", "--model.prior-hidden", "16", "--model.seq-len", "8", "--model.block-len", "2",
        "--model.max-len", "12", "--model.ep-slices", "4"]


def test_train_sample_plan_evaluate(tmp_path):
    out = runner.invoke(app, ["train", *TINY, "--train.steps", "4", "--batch-size", "8", "--runs-dir", str(tmp_path),
                              "--name", "t", "--quiet", "--json"])
    assert out.exit_code == 0, out.output
    metrics = json.loads(out.output[out.output.index("{"):])
    assert metrics["steps"] == 4 and 0.0 <= metrics["valid_frac_ode"] <= 1.0
    run = tmp_path / "ltt" / "t"
    assert (run / "summary.md").is_file() and (run / "plots" / "loss.png").is_file()

    out = runner.invoke(app, ["sample", "--checkpoint", str(run), "--n", "3", "--seed", "1", "--json"])
    assert out.exit_code == 0, out.output
    samples = json.loads(out.output)["samples"]
    assert len(samples) == 3 and all(len(s["text"]) == 3 + 8 for s in samples)
    again = runner.invoke(app, ["sample", "--checkpoint", str(run), "--n", "3", "--seed", "1", "--json"])
    assert json.loads(again.output)["samples"] == samples  # a fixed seed gives the same samples

    out = runner.invoke(app, ["plan", "--checkpoint", str(run), "--candidates", "16", "--iterations", "2", "--json"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.output)
    assert result["evaluated"] == 32 and result["distance"] <= result["random_mean_distance"]
    assert len(result["plan"]) == 3 + 8
    out = runner.invoke(app, ["plan", "--checkpoint", str(run), "--goal", "?a>bad"])
    assert out.exit_code != 0 and "not in the char task's vocabulary" in str(out.exception)

    out = runner.invoke(app, ["evaluate", "--checkpoint", str(run), "--n", "8", "--prior-steps", "2",
                              "--runs-dir", str(tmp_path), "--name", "ev", "--json"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.output)
    for key in ("valid_frac_ode", "valid_frac_sde", "valid_frac_flow", "valid_frac_encoder_z0",
                "valid_frac_untrained", "latent_block_match_frac"):
        assert 0.0 <= report[key] <= 1.0, key
    assert (tmp_path / "ltt" / "ev" / "summary.md").is_file()


def test_bad_inputs_are_clear_errors(tmp_path):
    out = runner.invoke(app, ["sample", "--checkpoint", str(tmp_path / "missing")])
    assert out.exit_code != 0
    out = runner.invoke(app, ["train", "--model.prior", "gru", "--train.steps", "1", "--runs-dir", str(tmp_path)])
    assert out.exit_code != 0 and "unknown prior" in str(out.exception) + out.output


def test_train_options_and_preset_precedence(tmp_path):
    """--help lists the dotted options; --train.steps reaches training; an option beats the preset; the model
    checkpoint still holds the model config alone (LTTConfig), the run's config.json the whole tree."""
    res = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    for flag in ("--train.steps", "--train.lr", "--train.seed", "--train.warmup-steps", "--model.d-model",
                 "--model.prior", "--batch-size", "--preset", "--config"):
        assert flag in res.output, flag
    for gone in ("--steps ", "--lr ", "--seed ", "--d-model "):
        assert gone not in res.output, gone
    res = runner.invoke(app, ["train", "--preset", "tiny", "--model.d-model", "16", "--model.seq-len", "8",
                              "--model.block-len", "2", "--model.max-len", "12", "--train.steps", "3",
                              "--batch-size", "4", "--runs-dir", str(tmp_path), "--name", "p", "--quiet", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output[res.output.index("{"):])["steps"] == 3
    run = tmp_path / "ltt" / "p"
    saved = LTTRunConfig.from_json(run / "config.json")
    assert saved.train.steps == 3 and saved.batch_size == 4
    assert saved.model.d_model == 16 and saved.model.latent_dim == 8  # the option beat the preset's 32; the rest
    assert saved.train.warmup_steps == 100 and saved.train.eval_every == 300  # the defaults of `ltt train`
    header, _ = load_checkpoint(run / "checkpoints" / "last" / "model", "ltt")
    assert LTTConfig.from_dict(header["config"]) == saved.model


def test_run_config_defaults_are_the_old_command_defaults():
    """1500 steps at 1e-3, batch 64, warm-up min(100, 1500 // 10), an evaluation every 1500 // 5 steps."""
    config = LTTRunConfig()
    assert config.model == LTTConfig() and config.batch_size == 64
    t = config.train
    assert (t.steps, t.lr, t.warmup, t.log_every, t.eval_every, t.seed, t.grad_clip) == (1500, 1e-3, 100, 10, 300,
                                                                                         0, 1.0)


def test_evaluate_settings_come_from_its_config(tmp_path, monkeypatch):
    """`ltt evaluate`'s settings are EvaluateConfig's fields: command line > --config file > defaults."""
    from latentspace.ltt import train as train_module
    from latentspace.ltt.config import EvaluateConfig

    seen = {}
    monkeypatch.setattr("latentspace.ltt.cli._load", lambda checkpoint, runs_dir: "model")
    monkeypatch.setattr(train_module, "validity_report",
                        lambda model, n, prior_steps: seen.update(n=n, prior_steps=prior_steps) or {"valid": 1.0})
    monkeypatch.setattr(train_module, "latent_usage", lambda model, n: {"usage": 0.5})
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"n": 16, "prior_steps": 7}))
    args = ["evaluate", "--checkpoint", str(tmp_path), "--runs-dir", str(tmp_path), "--quiet"]
    out = runner.invoke(app, [*args, "--name", "a", "--config", str(settings), "--n", "4"])
    assert out.exit_code == 0, out.output
    assert seen == {"n": 4, "prior_steps": 7}  # --n beats the file; the file's prior_steps beats the default
    saved = json.loads((tmp_path / "ltt" / "a" / "config.json").read_text())
    assert (saved["n"], saved["prior_steps"]) == (4, 7)
    out = runner.invoke(app, [*args, "--name", "b"])
    assert out.exit_code == 0, out.output
    assert seen == {"n": EvaluateConfig().n, "prior_steps": EvaluateConfig().prior_steps} == {"n": 512,
                                                                                              "prior_steps": 300}
    out = runner.invoke(app, ["plan", "--checkpoint", str(tmp_path), "--method", "beam"])
    assert out.exit_code != 0 and "cem or random" in str(out.exception)
