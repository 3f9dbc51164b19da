import dataclasses
import json
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from latentspace.core.config import Config, config_command
from latentspace.core.errors import ConfigError


@dataclasses.dataclass
class ExampleConfig(Config):
    latent_dim: int = 16
    lr: float = 1e-3
    name: str = "x"
    dims: tuple[int, ...] = (1, 2)
    PRESETS = {"big": {"latent_dim": 64}}


# a run-config tree three levels deep: RunConfig -> TrainConfig -> OptimConfig, and RunConfig -> ModelConfig


@dataclasses.dataclass
class OptimConfig(Config):
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.99)
    fused: bool = True


@dataclasses.dataclass
class TrainConfig(Config):
    steps: int = 100
    amp: bool = False
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)


@dataclasses.dataclass
class ModelConfig(Config):
    d_model: int = 64
    n_heads: int = 4

    def __post_init__(self):
        if self.d_model % self.n_heads:
            raise ConfigError(f"ModelConfig: d_model={self.d_model} is not divisible by n_heads={self.n_heads}")


@dataclasses.dataclass
class RunConfig(Config):
    name: str = "run"
    dims: tuple[int, ...] = (1, 2)
    tags: list[str] = dataclasses.field(default_factory=list)
    model: ModelConfig = dataclasses.field(default_factory=lambda: ModelConfig(d_model=32))  # not the class default
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    PRESETS = {
        "tiny": {"model": {"d_model": 16}, "train.steps": 5},
        "long": {"train": {"steps": 1000, "optim": {"lr": 1e-4}}},
    }


def _app(config_cls, **params):
    """A typer app with `go` built by config_command; returns (app, seen) where seen collects the calls."""
    app, seen = typer.Typer(), []

    @config_command(app, "go", config_cls, **params)
    def go(config, **extra):
        seen.append((config, extra))

    @app.command("other")  # a second command, so typer keeps `go` as a subcommand instead of the whole app
    def other():
        pass

    return app, seen


def _run(app, *args):
    return CliRunner().invoke(app, ["go", *args], env={"COLUMNS": "200"})  # wide: help lines are not wrapped


# ---- the config tree without a command line ----


def test_config_round_trips_through_json(tmp_path):
    config = ExampleConfig(latent_dim=8, dims=(3, 4))
    config.to_json(tmp_path / "c.json")
    assert ExampleConfig.from_json(tmp_path / "c.json") == config
    assert ExampleConfig.preset("big").latent_dim == 64
    with pytest.raises(ConfigError, match="unknown field"):
        ExampleConfig.from_dict({"latnt_dim": 3})
    with pytest.raises(ConfigError, match="not valid JSON"):
        ExampleConfig.from_json("{oops")


def test_nested_config_round_trips_and_partial_dicts_merge_into_the_defaults(tmp_path):
    config = RunConfig(dims=(3,), model=ModelConfig(d_model=96, n_heads=8),
                       train=TrainConfig(steps=7, optim=OptimConfig(betas=(0.5, 0.6), fused=False)))
    config.to_json(tmp_path / "c.json")
    assert RunConfig.from_json(tmp_path / "c.json") == config
    assert RunConfig.from_dict(config.to_dict()) == config
    partial = RunConfig.from_dict({"model": {"n_heads": 2}, "train": {"optim": {"lr": 0.5}}})
    assert partial.model == ModelConfig(d_model=32, n_heads=2)  # the field's default, not ModelConfig()
    assert partial.train == TrainConfig(optim=OptimConfig(lr=0.5))
    assert RunConfig.from_dict({"train": {"optim": {"lr": 1}}}).train.optim.lr == 1.0  # JSON int for a float


def test_override_takes_dotted_paths_and_nested_dicts_all_at_once():
    base = RunConfig()
    config = base.override({"train.optim.lr": 0.1, "model": {"n_heads": 8}, "dims": [5, 6]})
    assert config.train == TrainConfig(optim=OptimConfig(lr=0.1)) and config.model == ModelConfig(32, 8)
    assert config.dims == (5, 6) and base == RunConfig()
    # each change alone breaks ModelConfig's check; together they pass: __post_init__ sees only the final values
    assert base.override({"model.d_model": 30, "model.n_heads": 3}).model == ModelConfig(30, 3)
    assert base.override({"train": {"steps": 1}, "train.amp": True}).train == TrainConfig(steps=1, amp=True)
    assert base.override({"model": ModelConfig(8, 2)}).model == ModelConfig(8, 2)  # a whole config replaces


@pytest.mark.parametrize(("overrides", "message"), [
    ({"train.stepz": 1}, r"RunConfig.train: unknown field\(s\) \['stepz'\]; known: \['amp', 'optim', 'steps'\]"),
    ({"name.first": "a"}, r"RunConfig: unknown field\(s\) \['name.first'\]"),
    ({"train": {"steps": "many"}}, r"RunConfig.train.steps: expected int, got 'many'"),
    ({"train.amp": 1}, r"RunConfig.train.amp: expected bool, got 1"),
    ({"train.optim.betas": [0.1]}, r"RunConfig.train.optim.betas: expected tuple\[float, float\]"),
    ({"dims": [1, "x"]}, r"RunConfig.dims\[1\]: expected int, got 'x'"),
    ({"model": 3}, r"RunConfig.model: expected ModelConfig, got 3"),
    ({"model.d_model": 30}, r"ModelConfig: d_model=30 is not divisible by n_heads=4"),
])
def test_override_errors_name_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig().override(overrides)


def test_presets_merge_into_nested_defaults():
    tiny = RunConfig.preset("tiny")
    assert tiny.model == ModelConfig(d_model=16, n_heads=4) and tiny.train == TrainConfig(steps=5)
    long = RunConfig.preset("long")
    assert long.train == TrainConfig(steps=1000, optim=OptimConfig(lr=1e-4))  # betas, fused stay the defaults
    assert long.model == RunConfig().model
    with pytest.raises(ConfigError, match=r"RunConfig: unknown preset 'huge'; known: \['long', 'tiny'\]"):
        RunConfig.preset("huge")


# ---- the command line ----


def test_config_command_exposes_fields_as_options(tmp_path):
    app = typer.Typer()
    seen = {}

    @config_command(app, "train", ExampleConfig, quiet=(bool, typer.Option(False, "--quiet")))
    def train(config, quiet):
        seen["config"], seen["quiet"] = config, quiet

    @app.command("other")
    def other():
        pass

    runner = CliRunner()
    result = runner.invoke(app, ["train", "--latent-dim", "32", "--quiet"])
    assert result.exit_code == 0, result.output
    assert seen["config"] == ExampleConfig(latent_dim=32) and seen["quiet"] is True
    (tmp_path / "c.json").write_text(json.dumps({"lr": 0.5, "name": "file"}))
    result = runner.invoke(app, ["train", "--config", str(tmp_path / "c.json"), "--name", "cli"])
    assert result.exit_code == 0, result.output
    assert seen["config"].lr == 0.5 and seen["config"].name == "cli"


def test_bool_config_fields_switch_both_ways():
    @dataclasses.dataclass
    class FlagConfig(Config):
        flag: bool = True

    app, seen = _app(FlagConfig)
    for args in ([], ["--no-flag"], ["--flag"]):
        assert _run(app, *args).exit_code == 0
    assert [config.flag for config, _ in seen] == [True, False, True]


def test_nested_bools_switch_both_ways_and_win_over_the_file(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"train": {"amp": True, "optim": {"fused": False}}}))
    app, seen = _app(RunConfig)
    for args in ([], ["--train.amp", "--train.optim.no-fused"], ["--config", str(tmp_path / "c.json")],
                 ["--config", str(tmp_path / "c.json"), "--train.no-amp", "--train.optim.fused"]):
        result = _run(app, *args)
        assert result.exit_code == 0, result.output
    assert [(c.train.amp, c.train.optim.fused) for c, _ in seen] == [(False, True), (True, False), (True, False),
                                                                     (False, True)]


def test_dotted_options_reach_depth_two_and_tuples_are_comma_separated():
    app, seen = _app(RunConfig)
    result = _run(app, "--name", "r", "--model.d-model", "96", "--model.n-heads", "8", "--train.steps", "3",
                  "--train.optim.lr", "0.5", "--train.optim.betas", "0.1,0.2", "--dims", "3,4,5")
    assert result.exit_code == 0, result.output
    assert seen[-1][0] == RunConfig(name="r", dims=(3, 4, 5), model=ModelConfig(96, 8),
                                    train=TrainConfig(steps=3, optim=OptimConfig(lr=0.5, betas=(0.1, 0.2))))
    assert _run(app, "--dims", "").exit_code == 0 and seen[-1][0].dims == ()


# every layer sets train.steps (default 100, preset "long" 1000, file 7, command line), and the file also sets
# model.n_heads: each wins over the ones below it, and a value equal to the default still counts as given
@pytest.mark.parametrize(("args", "steps", "lr", "n_heads"), [
    ([], 100, 1e-3, 4),
    (["--preset", "long"], 1000, 1e-4, 4),
    (["--config", "c.json"], 7, 1e-3, 2),
    (["--preset", "long", "--config", "c.json"], 7, 1e-4, 2),  # the file's train.steps merges, keeping the lr
    (["--preset", "long", "--config", "c.json", "--train.steps", "9"], 9, 1e-4, 2),
    (["--config", "c.json", "--train.steps", "100"], 100, 1e-3, 2),  # 100 is the default and still wins
    (["--preset", "long", "--config", "c.json", "--train.steps", "100", "--model.n-heads", "4"], 100, 1e-4, 4),
    (["--preset", "long", "--train.optim.lr", "0.001"], 1000, 1e-3, 4),  # the default's value wins over the preset
])
def test_precedence_command_line_over_file_over_preset_over_defaults(tmp_path, monkeypatch, args, steps, lr,
                                                                      n_heads):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.json").write_text(json.dumps({"train": {"steps": 7}, "model": {"n_heads": 2}}))
    app, seen = _app(RunConfig)
    result = _run(app, *args)
    assert result.exit_code == 0, result.output
    config = seen[-1][0]
    assert (config.train.steps, config.train.optim.lr, config.model.n_heads) == (steps, lr, n_heads)
    assert config.model.d_model == 32 and config.train.optim.betas == (0.9, 0.99)


def test_extra_params_pass_through_and_shadow_config_fields():
    app, seen = _app(RunConfig, name=(str, typer.Option("run-name", "--name")),
                     quiet=(bool, typer.Option(False, "--quiet")))
    assert _run(app, "--name", "mine", "--quiet", "--train.steps", "2").exit_code == 0
    config, extra = seen[-1]
    assert extra == {"name": "mine", "quiet": True} and config.name == "run" and config.train.steps == 2


def test_help_lists_dotted_options_presets_and_file_only_fields():
    app, _ = _app(RunConfig)
    result = _run(app, "--help")
    assert result.exit_code == 0
    for text in ("--train.steps", "--train.optim.lr", "--train.optim.betas", "FLOAT,FLOAT", "--model.d-model",
                 "--train.amp", "--train.no-amp", "--train.optim.no-fused", "--dims", "INT,...", "--preset",
                 "tiny | long", "--config", "Only here: tags"):
        assert text in result.output, text


@pytest.mark.parametrize(("args", "message"), [
    (["--preset", "huge"], r"RunConfig: unknown preset 'huge'; known: \['long', 'tiny'\]"),
    (["--config", '{"train": {"stepz": 1}}'], r"RunConfig.train: unknown field\(s\) \['stepz'\]"),
    (["--config", '{"train": {"steps": "x"}}'], r"RunConfig.train.steps: expected int, got 'x'"),
    (["--config", "missing.json"], r"config file missing.json does not exist"),
    (["--model.d-model", "30"], r"ModelConfig: d_model=30 is not divisible by n_heads=4"),
    (["--train.optim.betas", "0.1"], r"--train.optim.betas '0.1': expected comma-separated float, float"),
    (["--dims", "1,x"], r"--dims '1,x': expected comma-separated int values"),
])
def test_bad_settings_raise_one_config_error(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    app, seen = _app(RunConfig)
    result = _run(app, *args)
    assert isinstance(result.exception, ConfigError) and not seen
    assert len(str(result.exception).splitlines()) == 1
    with pytest.raises(ConfigError, match=message):
        raise result.exception


def test_preset_is_offered_only_with_presets():
    @dataclasses.dataclass
    class PlainConfig(Config):
        steps: int = 1

    app, _ = _app(PlainConfig)
    result = _run(app, "--preset", "tiny")
    assert result.exit_code == 2 and "No such option" in result.output


def test_unknown_preset_exits_with_code_2_on_the_real_command_line():
    result = subprocess.run([sys.executable, "-m", "latentspace.cli", "ltt", "train", "--preset", "huge"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stderr
    assert "unknown preset 'huge'; known: ['small', 'tiny']" in result.stderr and "Traceback" not in result.stderr
