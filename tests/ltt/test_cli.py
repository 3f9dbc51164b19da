"""End-to-end test of `latentspace ltt train | sample | plan | evaluate` with tiny settings."""

import json

from typer.testing import CliRunner

from latentspace.ltt.cli import app

runner = CliRunner()
TINY = ["--d-model", "16", "--latent-dim", "4", "--n-layers", "1", "--decoder-layers", "1", "--n-heads", "2",
        "--prior-hidden", "16", "--seq-len", "8", "--block-len", "2", "--max-len", "12", "--ep-slices", "4"]


def test_train_sample_plan_evaluate(tmp_path):
    out = runner.invoke(app, ["train", *TINY, "--steps", "4", "--batch-size", "8", "--runs-dir", str(tmp_path),
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
    out = runner.invoke(app, ["train", "--prior", "gru", "--steps", "1", "--runs-dir", str(tmp_path)])
    assert out.exit_code != 0 and "unknown prior" in str(out.exception) + out.output
