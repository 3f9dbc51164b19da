"""The `latentspace` command: mounts each family's sub-app, lists data sets, runs the demo."""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import sys
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from . import __version__
from .core.errors import LatentspaceError, disk_error_message

# (family, one line); a family is present once `latentspace.<family>.cli` exists.
FAMILIES = [
    ("lbs", "LLM-integrated Bayesian state space: Kalman-style filter with a frozen-LLM sensor"),
    ("ltt", "Latent Trajectory Transformer: tokens -> latent path with ODE/SDE/flow priors"),
    ("codesearch", "semantic codebase search engine on LTT (BM25 + dense, fused)"),
    ("logs", "log classification and anomaly detection with Raccoon continual learning"),
    ("crsm", "Continuous Reasoning State Model: Mamba LM + asynchronous MCTS state deltas"),
    ("rbsqa", "segment-recurrent memory QA with a revising, calibrated, halting belief tracker"),
    ("lipo", "latent instruction prompt optimisation: VAE latent + Hyperband + GP/LogEI"),
]

console = Console()
err_console = Console(stderr=True)
app = typer.Typer(help="Reasoning in learned latent spaces: five latent-state model families on one core.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)


def family_present(family: str) -> bool:
    return importlib.util.find_spec(f"latentspace.{family}.cli") is not None if importlib.util.find_spec(
        f"latentspace.{family}") else False


def _version_callback(value: bool):
    if value:
        console.print(f"latentspace {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                 help="Print the version and exit."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages."),
):
    """latentspace: LBS, LTT, CRSM, RBS-QA and LIPO, with the codesearch and logs apps."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(message)s")
    # faiss's loader logs ~10 INFO lines (which CPU build it tried) on import: shown only with --verbose
    logging.getLogger("faiss").setLevel(logging.NOTSET if verbose else logging.WARNING)


data_app = typer.Typer(help="Data sets: what is present, and `fetch` from their pinned public origins.",
                       no_args_is_help=False, invoke_without_command=True)
app.add_typer(data_app, name="data")


@data_app.callback(invoke_without_command=True)
def data_command(
    ctx: typer.Context,
    data_dir: Path = typer.Option(None, "--data-dir", help="Folder holding data sets."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
):
    """List the data sets: where a full copy was found, what ships as a sample, origin and licence."""
    if ctx.invoked_subcommand is not None:
        return
    from .core.data import data_home, data_roots, list_datasets
    from .core.errors import require_dir

    require_dir(data_dir, "--data-dir")
    infos = list_datasets(data_dir)
    if as_json:
        print(json.dumps([{**info.__dict__, "path": str(info.path) if info.path else None} for info in infos],
                         indent=2))
        return
    roots = data_roots(data_dir)
    console.print(f"searched: {', '.join(map(str, roots)) or '(no data folder exists yet)'}; "
                  f"`latentspace data fetch` writes to {data_home()}")
    table = Table("data set", "full copy", "embedded sample", "origin", "licence", "used by")
    for info in infos:
        size = f"{info.files} files, {info.size / 1e6:.1f} MB"
        table.add_row(info.name, str(info.path) if info.path else f"no (fetch: {size})", info.sample or "none",
                      info.origin, info.licence, info.used_by)
    console.print(table)


@data_app.command("fetch")
def data_fetch_command(
    names: list[str] = typer.Argument(..., help="Data set names, or `all`."),
    dest: Path = typer.Option(None, "--dest", help="Folder to write into (default: $LATENTSPACE_DATA, else the "
                              "user cache)."),
    mirror: str = typer.Option(None, "--mirror", help="Base URL replacing https://raw.githubusercontent.com "
                               "(files are read from <mirror>/<repo>/<commit>/<path>)."),
    force: bool = typer.Option(False, "--force", help="Fetch again even when the data set is present."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
):
    """Download data sets from their pinned origins, sha256-checked, written atomically."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from .core.data import data_home, fetch, manifest
    from .core.errors import DataError

    known = list(manifest())
    wanted = known if "all" in names else names
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise DataError(f"unknown data set(s) {', '.join(unknown)}; known: {', '.join(known)}, all")
    target = dest if dest is not None else data_home()
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=err_console, disable=quiet) as bar:
        for name in wanted:
            task = bar.add_task(name, total=len(manifest()[name]["files"]))
            path = fetch(name, target, mirror=mirror, force=force,
                         progress=lambda done, total, _f, task=task: bar.update(task, completed=done))
            bar.update(task, completed=len(manifest()[name]["files"]))
            console.print(f"{name}: {path}")


@app.command("demo")
def demo_command(
    output: Path = typer.Option(Path("runs/demo"), "--output", "-o", help="Where the report goes."),
    only: list[str] = typer.Option(None, "--only", help="Run only these families."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
):
    """Run each present family's small default job and write runs/demo/report.md."""
    from .core.data import reset_used, used_datasets
    from .core.runs import format_value, markdown_table

    output.mkdir(parents=True, exist_ok=True)
    present = [f for f, _ in FAMILIES if family_present(f)]
    missing = [f for f, _ in FAMILIES if f not in present]
    if only:
        unknown = sorted(set(only) - {f for f, _ in FAMILIES})
        if unknown:
            raise LatentspaceError(f"unknown family {unknown}; known: {[f for f, _ in FAMILIES]}")
        present = [f for f in present if f in only]
    console.print(f"families present: {', '.join(present) or 'none'}; not yet landed: {', '.join(missing) or 'none'}")
    sections, rows, data_used = [], [], {}
    for family in present:
        module = importlib.import_module(f"latentspace.{family}.cli")
        if not hasattr(module, "demo"):
            continue
        console.rule(f"[bold]{family}")
        start = time.time()
        reset_used()
        result = module.demo(output / family, quiet)
        seconds = time.time() - start
        data_line = "; ".join(f"{name}: {how}" for name, how in used_datasets().items()) or getattr(
            module, "DEMO_DATA", "no data set (a generated task)")
        data_used[family] = data_line
        for name, value in result.metrics.items():
            rows.append([family, name, format_value(value)])
        section = [f"## {family}", "", result.summary.strip(), "", f"Data: {data_line}. Ran in {seconds:.0f} s.", ""]
        section += [markdown_table(["metric", "value"], [[k, format_value(v)] for k, v in result.metrics.items()]), ""]
        for table in result.tables:
            section += [table, ""]
        for plot in result.plots:
            section.append(f"![{family} {plot.stem}]({os.path.relpath(plot, output)})")
        sections.append("\n".join(section))
    lines = ["# latentspace demo", "", f"latentspace {__version__}. Families present: {', '.join(present) or 'none'}."]
    if missing:
        lines.append(f"Not yet landed: {', '.join(missing)}.")
    lines += ["", markdown_table(["family", "data used"], [[f, d] for f, d in data_used.items()]), ""]
    lines += [markdown_table(["family", "metric", "value"], rows) if rows else "(no metrics)", ""]
    lines += sections
    report = output / "report.md"
    report.write_text("\n".join(lines).rstrip() + "\n")
    console.print(f"report: {report}")


def _mount_families() -> None:
    for family, line in FAMILIES:
        if family_present(family):
            module = importlib.import_module(f"latentspace.{family}.cli")
            app.add_typer(module.app, name=family, help=line)


_mount_families()


def _print_error(message: str) -> None:
    """One error line on stderr: not wrapped at the terminal width, no rich markup read from the message."""
    from rich.markup import escape

    err_console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)


def _exit_interrupted() -> None:
    err_console.print("[yellow]interrupted[/yellow]: what was computed is saved; rerun with --resume")
    sys.exit(130)


def _click_exception_types() -> tuple[tuple[type, ...], tuple[type, ...], tuple[type, ...]]:
    """(usage errors, aborts, exits) that typer may raise: its vendored click's (`typer._click`) and click's own.

    typer 0.29 vendors click, so its UsageError / NoSuchOption / BadParameter are not
    `click.exceptions.ClickException`; an older typer raises click's. Both are caught, whichever exist.
    """
    errors, aborts, exits = [], [typer.Abort], [typer.Exit]
    for name in ("typer._click.exceptions", "click.exceptions"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        errors.append(module.ClickException)
        aborts += [module.Abort] if hasattr(module, "Abort") else []
        exits += [module.Exit] if hasattr(module, "Exit") else []
    return tuple(errors), tuple(aborts), tuple(exits)


def main() -> None:
    """Console entry point: bad input ends with one clear message and exit code 2; Ctrl-C with 130.

    A usage error (unknown option, command or value) prints click's usage line and one error line; a
    `LatentspaceError` (a missing or malformed input) prints one error line. Neither prints a traceback.
    """
    try:
        # non-standalone: errors come back here instead of typer's rich boxes; an Exit comes back as its code
        code = app(standalone_mode=False)
    except LatentspaceError as err:
        _print_error(str(err))
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        _exit_interrupted()
    except Exception as err:
        usage_errors, aborts, exits = _click_exception_types()
        if isinstance(err, usage_errors):
            err.show()
            sys.exit(err.exit_code)
        if isinstance(err, aborts):
            err_console.print("[yellow]aborted[/yellow]")
            sys.exit(130)
        if isinstance(err, exits):
            sys.exit(err.exit_code)
        if isinstance(err, OSError) and (message := disk_error_message(err, "a result")) is not None:
            _print_error(message)  # a full disk or a read-only folder anywhere: one line, what was written stays
            sys.exit(LatentspaceError.exit_code)
        raise
    if code == 130:  # typer turns Ctrl-C into Exit(130) and returns its code
        _exit_interrupted()
    if isinstance(code, int) and not isinstance(code, bool):
        sys.exit(code)


if __name__ == "__main__":
    main()
