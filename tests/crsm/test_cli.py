import json

from typer.testing import CliRunner

from latentspace.crsm.cli import app
from latentspace.crsm.config import PipelineConfig
from latentspace.crsm.model import CRSM

runner = CliRunner()
TINY = ["--preset", "tiny", "--backbone.steps", "8", "--distill.steps", "3", "--value.steps", "3", "--quiet"]


def test_pipeline_generate_evaluate_end_to_end(tmp_path):
    result = runner.invoke(app, ["pipeline", *TINY, "--model.d-model", "24", "--name", "t", "--runs-dir",
                                 str(tmp_path)])
    assert result.exit_code == 0, result.output
    checkpoint = tmp_path / "crsm" / "t" / "4-value" / "model"
    # explicit dotted options beat the preset (tiny: backbone.steps 12, model.d_model 32); the rest is the preset's
    saved = PipelineConfig.from_json(tmp_path / "crsm" / "t" / "config.json")
    assert (saved.backbone.steps, saved.distill.steps, saved.model.d_model) == (8, 3, 24)
    assert saved.model.n_layers == 2 and saved.data.pathstar_length == 3
    assert CRSM.load(checkpoint).config.d_model == 24
    for planner in ("off", "sync", "async"):
        out = runner.invoke(app, ["generate", str(checkpoint), "--prompt", "ab,bc,ad,de|ae=", "--max-new-tokens", "4",
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
    out = runner.invoke(app, ["pipeline", "--data.task", "chess", "--runs-dir", str(tmp_path)])
    assert out.exit_code != 0 and "pathstar or lm" in str(out.exception)


def test_help_lists_the_run_config_tree():
    for verb in ("pipeline", "train-backbone", "distill", "train-value"):
        out = runner.invoke(app, [verb, "--help"], env={"COLUMNS": "200"})
        assert out.exit_code == 0, out.output
        for option in ("--preset", "--config", "--model.d-model", "--data.task", "--backbone.steps", "--backbone.lr",
                       "--distill.steps", "--value.lr", "--seed"):
            assert option in out.output, (verb, option)
        assert "--backbone-steps" not in out.output and "--d-model " not in out.output
