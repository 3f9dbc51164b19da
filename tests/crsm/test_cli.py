import json

from typer.testing import CliRunner

from latentspace.crsm.cli import app

runner = CliRunner()
TINY = ["--d-model", "32", "--n-layers", "2", "--d-state", "8", "--backbone-steps", "8", "--distill-steps", "3",
        "--value-steps", "3", "--batch-size", "8", "--distill-sequences", "8", "--value-rollouts", "8",
        "--pathstar-length", "3", "--mcts-simulations", "8", "--quiet"]


def test_pipeline_generate_evaluate_end_to_end(tmp_path):
    result = runner.invoke(app, ["pipeline", *TINY, "--name", "t", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    checkpoint = tmp_path / "crsm" / "t" / "4-value" / "model"
    for planner in ("off", "sync", "async"):
        out = runner.invoke(app, ["generate", str(checkpoint), "--prompt", "ab,bc,ad,de|ae=", "-n", "4",
                                  "--planner", planner, "--pathstar", "--json"])
        assert out.exit_code == 0, out.output
        record = json.loads(out.output.strip().splitlines()[-1])
        assert record["planner"] == planner and record["tokens"] >= 1
    ev = runner.invoke(app, ["evaluate", str(checkpoint), "--samples", "3", "--simulations", "8", "--json",
                             "--runs-dir", str(tmp_path), "--name", "ev"])
    assert ev.exit_code == 0, ev.output
    metrics = json.loads(ev.output.strip().splitlines()[-1])
    assert 0 <= metrics["pathstar_acc_planner"] <= 1 and metrics["pathstar_length"] == 3
    assert (tmp_path / "crsm" / "ev" / "summary.md").is_file()


def test_bad_inputs_are_clear_errors(tmp_path):
    out = runner.invoke(app, ["generate", str(tmp_path / "missing")])
    assert out.exit_code != 0 and "does not exist" in str(out.exception)
    out = runner.invoke(app, ["distill", *TINY])
    assert out.exit_code != 0 and "--name" in str(out.exception)
    out = runner.invoke(app, ["pipeline", "--task", "chess", "--runs-dir", str(tmp_path)])
    assert out.exit_code != 0 and "pathstar or lm" in str(out.exception)
