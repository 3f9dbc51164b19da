"""Bad input on the command line: one error message, exit code 2, no traceback, no work done.

Every verb is found by walking the CLI's command tree, so a new verb is covered without editing this file.
The cases run `latentspace.cli.main` (the console script) in-process, which is what `latentspace ...` runs;
two cases run the real command in a subprocess.
"""

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main

import latentspace
from latentspace import cli

MISSING = "<missing>"  # replaced by a path that does not exist
TEXT_FILE = "<text-file>"  # replaced by an existing small text file
OUTPUT_OPTIONS = {"--runs-dir", "--output", "--state", "--dest"}  # paths that are written, not read


def _leaves(command, path=()):
    subcommands = getattr(command, "commands", None)
    if not subcommands:
        yield path, command
        return
    for name, sub in sorted(subcommands.items()):
        yield from _leaves(sub, (*path, name))


def _verbs() -> dict[tuple[str, ...], object]:
    """argv prefix (e.g. ("crsm", "generate")) -> click command, for every verb of the CLI."""
    return dict(_leaves(typer.main.get_command(cli.app)))


VERBS = _verbs()


def _is_path(param) -> bool:
    """Whether a parameter is typed as a path (str options that hold paths are listed in MISSING_PATHS)."""
    descriptor = getattr(param, "type_descriptor", None)  # typer 0.29's parameters; click's carry .type
    return descriptor.is_path if descriptor is not None else type(getattr(param, "type", None)).__name__ == "Path"


def _first_number_option(command):
    """The first int or float option of a verb (to give it "abc"), or None."""
    for param in command.params:
        descriptor = getattr(param, "type_descriptor", None)
        if param.param_type_name == "option" and descriptor is not None and descriptor.annotation in (int, float):
            return param.opts[0]
    return None


# verb -> argv lists that each name one missing input path (options typed `str` that hold a path included)
MISSING_PATHS = {
    ("data",): [["--data-dir", MISSING]],
    ("lbs", "train"): [["--config", MISSING], ["--data", MISSING + ".csv"], ["--data-dir", MISSING]],
    ("lbs", "forecast"): [["--config", MISSING], ["--model", MISSING],
                          ["--data", MISSING + ".csv"], ["--data-dir", MISSING]],
    ("lbs", "steer"): [["--config", MISSING], ["--model", MISSING, "--target", "1"],
                       ["--data", MISSING + ".csv", "--target", "1"],
                       ["--data-dir", MISSING, "--target", "1"]],
    ("lbs", "evaluate"): [["--config", MISSING], ["--data", MISSING + ".csv"], ["--data-dir", MISSING]],
    ("ltt", "train"): [["--config", MISSING]],
    ("ltt", "sample"): [["--config", MISSING], ["--checkpoint", MISSING],
                        ["--runs-dir", MISSING]],  # the default run under --runs-dir
    ("ltt", "plan"): [["--config", MISSING], ["--checkpoint", MISSING]],
    ("ltt", "evaluate"): [["--config", MISSING], ["--checkpoint", MISSING]],
    ("codesearch", "index"): [[MISSING], [TEXT_FILE, "--config", MISSING]],
    ("codesearch", "search"): [["query", "--index", MISSING], ["query", "--config", MISSING]],
    ("codesearch", "similar"): [["a.py:1", "--index", MISSING], ["a.py:1", "--config", MISSING]],
    ("codesearch", "evaluate"): [["--config", MISSING], ["--packages", MISSING],
                                 ["--queries", MISSING, "--codebase", TEXT_FILE],
                                 ["--queries", TEXT_FILE, "--codebase", MISSING]],
    ("logs", "train"): [["--config", MISSING], ["--data-dir", MISSING]],
    ("logs", "classify"): [[MISSING], [TEXT_FILE, "--model", MISSING], [TEXT_FILE, "--config", MISSING]],
    ("logs", "stream"): [["--model", MISSING], ["--config", MISSING]],
    ("logs", "evaluate"): [["--model", MISSING], ["--data-dir", MISSING], ["--config", MISSING]],
    **{("crsm", verb): [["--config", MISSING]] for verb in ("pipeline", "train-backbone")},
    **{("crsm", verb): [["--config", MISSING], ["--name", "absent", "--runs-dir", MISSING]]
       for verb in ("distill", "assemble", "train-value")},
    ("crsm", "generate"): [[MISSING], [TEXT_FILE, "--config", MISSING]],
    ("crsm", "evaluate"): [[MISSING], [TEXT_FILE, "--config", MISSING]],
    ("rbsqa", "train"): [["--config", MISSING], ["--data-dir", MISSING]],
    ("rbsqa", "answer"): [["--doc", MISSING, "--question", "q"],
                          *(["--doc", TEXT_FILE, "--question", "q", *extra] for extra in
                            (["--checkpoint", MISSING], ["--data-dir", MISSING], ["--config", MISSING]))],
    ("rbsqa", "evaluate"): [["--checkpoint", MISSING], ["--data-dir", MISSING], ["--config", MISSING]],
    ("lipo", "run"): [["--config", MISSING], ["--load-grid", MISSING], ["--hyperband-evals-path", MISSING],
                      ["--data-dir", MISSING]],
    ("lipo", "evaluate"): [["--config", MISSING], ["--result", MISSING], ["--data-dir", MISSING]],
}
MISSING_PATH_CASES = [(verb, argv) for verb, cases in MISSING_PATHS.items() for argv in cases]


@pytest.fixture
def run_cli(tmp_path, monkeypatch, capsys):
    """Run `latentspace ARGV...` in-process in an empty folder: (exit code, stdout, stderr).

    A run folder started (`Run(...)`), any file left in the working folder or a folder made at the missing
    path counts as work done.
    """
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)

    def no_run(*args, **kwargs):
        raise AssertionError("work started: a run folder was made")

    monkeypatch.setattr("latentspace.core.runs.Run.__init__", no_run)
    text_file = tmp_path / "input.log"
    text_file.write_text("2024-01-01 INFO service started\n")
    missing = tmp_path / "absent" / "input"

    def run(*argv: str):
        argv = [a.replace(MISSING, str(missing)).replace(TEXT_FILE, str(text_file)) for a in argv]
        monkeypatch.setattr(sys, "argv", ["latentspace", *argv])
        with pytest.raises(SystemExit) as exit_:
            cli.main()
        out, err = capsys.readouterr()
        assert not list(cwd.iterdir()), f"{argv} left {list(cwd.iterdir())}"
        assert not missing.parent.exists(), f"{argv} made {missing.parent}"
        return exit_.value.code, out, err

    run.missing = missing
    return run


def _one_error(err: str) -> None:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.lower().startswith("error")]
    assert len(lines) == 1, err


def test_every_family_and_the_top_commands_are_walked():
    families = {f for f, _ in cli.FAMILIES if cli.family_present(f)}
    assert {verb[0] for verb in VERBS} == families | {"data", "demo"}
    assert len(VERBS) >= 30


@pytest.mark.parametrize("verb", sorted(VERBS), ids=" ".join)
def test_unknown_option_is_a_usage_error(run_cli, verb):
    code, out, err = run_cli(*verb, "--bogus-option")
    assert code == 2 and "No such option: --bogus-option" in err, err
    _one_error(err)


@pytest.mark.parametrize("verb", sorted(v for v in VERBS if _first_number_option(VERBS[v])), ids=" ".join)
def test_bad_value_type_is_a_usage_error(run_cli, verb):
    option = _first_number_option(VERBS[verb])
    code, out, err = run_cli(*verb, option, "abc")
    assert code == 2 and "Invalid value" in err and option in err, err
    _one_error(err)


@pytest.mark.parametrize("argv", [["nosuchfamily"], *[[f, "nosuchverb"] for f in sorted({v[0] for v in VERBS
                                                                                         if len(v) > 1})]],
                         ids=" ".join)
def test_unknown_command_is_a_usage_error(run_cli, argv):
    code, out, err = run_cli(*argv)
    assert code == 2 and f"No such command '{argv[-1]}'" in err, err
    _one_error(err)


@pytest.mark.parametrize("verb, argv", MISSING_PATH_CASES, ids=[" ".join(v + tuple(a)) for v, a in
                                                                 MISSING_PATH_CASES])
def test_missing_input_path_is_named_first(run_cli, verb, argv):
    code, out, err = run_cli(*verb, *argv)
    assert code == 2, err
    _one_error(err)
    assert str(run_cli.missing) in err.replace("\n", ""), err


def test_every_input_path_has_a_missing_path_case():
    """Each verb's path parameters (outputs aside) appear in MISSING_PATHS: a new input gets a case."""
    uncovered = []
    for verb, command in VERBS.items():
        cases = MISSING_PATHS.get(verb, [])
        for param in command.params:
            if not _is_path(param) or set(param.opts) & OUTPUT_OPTIONS:
                continue
            if param.param_type_name == "argument":
                covered = any(argv and argv[0] in (MISSING, TEXT_FILE) for argv in cases)
            else:
                covered = any(set(param.opts) & set(argv) for argv in cases)
            if not covered:
                uncovered.append(f"{' '.join(verb)} {param.opts[0]}")
    assert not uncovered, f"no missing-path case for {uncovered}"


def test_ctrl_c_exits_130_with_one_line(run_cli, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("latentspace.core.data.list_datasets", interrupt)
    code, out, err = run_cli("data")
    assert code == 130 and "interrupted" in err and "Traceback" not in err


def test_faiss_import_logs_only_with_verbose():
    loader = logging.getLogger("faiss.loader")
    level = logging.getLogger("faiss").level
    try:
        cli.root(version=False, verbose=False)
        assert not loader.isEnabledFor(logging.INFO)
        cli.root(version=False, verbose=True)
        assert logging.getLogger("faiss").level == logging.NOTSET  # the root logger's DEBUG then applies
    finally:
        logging.getLogger("faiss").setLevel(level)


@pytest.mark.parametrize("argv, message", [(["crsm", "generate", "--model", "x"], "No such option: --model"),
                                           (["logs", "classify", "/nonexistent/app.log"], "does not exist")],
                         ids=["unknown option", "missing file"])
def test_console_command_in_a_subprocess(tmp_path, argv, message):
    env = {**os.environ, "PYTHONPATH": str(Path(latentspace.__file__).parents[1])}  # this checkout's package
    result = subprocess.run([sys.executable, "-m", "latentspace.cli", *argv], capture_output=True, text=True,
                            cwd=tmp_path, env=env, timeout=120)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    _one_error(result.stderr)
    assert not list(tmp_path.iterdir())
