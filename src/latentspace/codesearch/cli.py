"""`latentspace codesearch`: index a tree, search it in plain words, find similar code, evaluate retrieval."""

from __future__ import annotations

import json
import logging
import pathlib
import shutil
import time
from typing import Optional

import typer
from rich.console import Console

from ..core.config import config_command
from ..core.errors import DataError, require_path
from .config import EvalConfig, IndexConfig, SearchConfig

app = typer.Typer(help="Semantic code search: BM25 + LTT/MiniLM dense vectors, fused by reciprocal rank.",
                  no_args_is_help=True)
console = Console()
log = logging.getLogger("latentspace")

INDEX_OPTION = typer.Option(pathlib.Path(".code_index"), "--index", "-i", help="The index folder.")
# the options of search / similar that are not settings (those are SearchConfig's fields): the index read and how
# the hits are printed
LOOKUP_PARAMS = {
    "index_dir": (pathlib.Path, INDEX_OPTION),
    "show_code": (bool, typer.Option(False, "--show-code", help="Print each snippet.")),
    "as_json": (bool, typer.Option(False, "--json", help="Machine-readable output.")),
    "quiet": (bool, typer.Option(False, "--quiet", "-q")),
}


@config_command(
    app, "index", IndexConfig,
    directory=(pathlib.Path, typer.Argument(..., help="The source tree to index.")),
    output=(pathlib.Path, typer.Option(pathlib.Path(".code_index"), "--output", "-o", help="The index folder.")),
    rebuild=(bool, typer.Option(False, "--rebuild", help="Ignore (and replace) an existing index, even a corrupt "
                                                         "or old-version one.")),
    retrain=(bool, typer.Option(False, "--retrain", help="Train the LTT encoder again on an incremental update.")),
    run_name=(Optional[str], typer.Option(None, "--name", help="Run name under runs/codesearch/.")),  # noqa: UP045
    quiet=(bool, typer.Option(False, "--quiet", "-q", help="No progress bars.")),
    as_json=(bool, typer.Option(False, "--json", help="Print the index statistics as JSON.")),
)
def index_command(config: IndexConfig, directory: pathlib.Path, output: pathlib.Path, rebuild: bool, retrain: bool,
                  run_name: str | None, quiet: bool, as_json: bool):
    """Index DIR (incrementally when OUTPUT already holds an index of it)."""
    from ..core.runs import Run
    from .index import CodeIndex, build_index, is_index
    from .snippets import SkippedFile

    require_path(directory, "source tree")
    _threads()
    previous = None
    if output.exists() and not rebuild:
        if is_index(output):
            previous = CodeIndex.load(output)  # a corrupt/old index raises here and is left untouched
            if previous.root.resolve() != (directory if directory.is_dir() else directory.parent).resolve():
                log.info("the index at %s was built from %s; indexing %s from scratch", output, previous.root,
                         directory)
                previous = None
        elif output.is_dir() and any(output.iterdir()):
            raise DataError(f"{output} exists and is not a codesearch index; choose another --output")
    skipped: list[SkippedFile] = []
    start = time.perf_counter()
    work_dir = output.parent / f".{output.name}.build"  # the encoder's periodic checkpoints: a killed build resumes
    index = build_index(directory, config, previous=previous, retrain=retrain, quiet=quiet, skipped=skipped,
                        work_dir=work_dir)
    index.save(output)
    shutil.rmtree(work_dir, ignore_errors=True)
    seconds = time.perf_counter() - start
    stats = {**index.stats, "seconds": round(seconds, 3), "snippets_per_s": round(len(index) / seconds, 1),
             "output": str(output)}
    run = Run("codesearch", run_name)
    run.write_config(config)
    run.log(0, **{k: v for k, v in stats.items() if isinstance(v, int | float)})
    run.write_summary(f"codesearch index of {directory}", stats,
                      notes="\n".join(f"- skipped `{s.path}`: {s.reason}" for s in skipped[:50]))
    if as_json:
        print(json.dumps({**stats, "skipped": [s.__dict__ for s in skipped]}, indent=2))
        return
    console.print(f"indexed {stats['n_files']} files -> {stats['n_snippets']} snippets "
                  f"({stats['n_files_changed']} files (re)extracted, {stats['n_snippets_reused']} snippets reused) "
                  f"in {seconds:.1f} s; parts: {', '.join(index.parts)}; saved to {output}")
    for s in skipped[:10]:
        console.print(f"[yellow]skipped[/yellow] {s.path}: {s.reason}")
    if len(skipped) > 10:
        console.print(f"... and {len(skipped) - 10} more skipped files (see {run.path / 'summary.md'})")


def _print_hits(hits, show_code: bool) -> None:
    if not hits:
        console.print("no match")
    for rank, hit in enumerate(hits, start=1):
        s = hit.snippet
        parts = " ".join(f"{p}#{r}" for p, r in hit.ranks.items())
        console.print(f"[bold][{rank}][/bold] {s.path}:{s.start_line}-{s.end_line}  [cyan]{s.symbol or s.kind}[/cyan]"
                      f"  ({s.language}, score {hit.score:.4f}; {parts})", highlight=False)
        if show_code:
            from rich.syntax import Syntax

            lexer = {"text": "text", "tsx": "tsx", "cpp": "cpp"}.get(s.language, s.language)
            console.print(Syntax(s.text, lexer, line_numbers=True, start_line=s.start_line))


@config_command(app, "search", SearchConfig,
                query=(str, typer.Argument(..., help="What you are looking for, in plain words or code.")),
                **LOOKUP_PARAMS)
def search_command(config: SearchConfig, query: str, index_dir: pathlib.Path, show_code: bool, as_json: bool,
                   quiet: bool):
    """Search the index for QUERY."""
    from .index import CodeIndex

    _threads()
    index = CodeIndex.load(index_dir)
    hits = index.search(query, config.top_k, config.part_list(), depth=config.depth)
    if as_json:
        print(json.dumps([h.to_dict(show_code) for h in hits], indent=2))
    else:
        _print_hits(hits, show_code)


@config_command(app, "similar", SearchConfig,
                location=(str, typer.Argument(..., help="FILE:LINE of the code to match (path as indexed, or a real "
                                                        "path).")),
                **LOOKUP_PARAMS)
def similar_command(config: SearchConfig, location: str, index_dir: pathlib.Path, show_code: bool, as_json: bool,
                    quiet: bool):
    """Find the snippets most like the one at FILE:LINE."""
    from .index import CodeIndex

    _threads()
    file, _, line = location.rpartition(":")
    if not file or not line.isdigit():
        raise DataError(f"expected FILE:LINE (e.g. src/app.py:42), got {location!r}")
    index = CodeIndex.load(index_dir)
    source, hits = index.similar(file, int(line), config.top_k, config.part_list(), depth=config.depth)
    if as_json:
        print(json.dumps({"source": {"path": source.path, "start_line": source.start_line,
                                     "end_line": source.end_line, "symbol": source.symbol},
                          "hits": [h.to_dict(show_code) for h in hits]}, indent=2))
        return
    console.print(f"like {source.path}:{source.start_line}-{source.end_line} ({source.symbol or source.kind}):")
    _print_hits(hits, show_code)


@config_command(
    app, "evaluate", EvalConfig,
    run_name=(Optional[str], typer.Option(None, "--name", help="Run name under runs/codesearch/.")),  # noqa: UP045
    quiet=(bool, typer.Option(False, "--quiet", "-q", help="No progress bars.")),
    as_json=(bool, typer.Option(False, "--json", help="Print the result as JSON.")),
    queries=(Optional[pathlib.Path], typer.Option(  # noqa: UP045
        None, "--queries", help="CoSQA-format queries: a JSON list of {\"doc\": query, \"retrieval_idx\": id}. "
                                "With --codebase, evaluates on them instead of the installed packages.")),
    codebase=(Optional[pathlib.Path], typer.Option(  # noqa: UP045
        None, "--codebase", help="CoSQA-format code base: a JSON object {code: id}, one function each.")),
    split=(str, typer.Option("dev", "--split", help="The split's name in the CoSQA metric names "
                                                      "(cosqa_<split>_mrr10_<part>).")),
)
def evaluate_command(config: EvalConfig, run_name: str | None, quiet: bool, as_json: bool,
                     queries: pathlib.Path | None, codebase: pathlib.Path | None, split: str):
    """Docstring -> function retrieval on installed packages (held out by package): MRR@10, Recall@1/10.

    With --queries and --codebase: real queries in CoSQA's format instead; the code base is indexed as
    `codesearch index` would (BM25 plus the dense parts of --methods, the LTT encoder of --ltt.* / --preset
    trained on its docstrings) and each part and their fusion are scored.
    """
    from ..core.runs import Run

    if queries is not None or codebase is not None:
        if queries is None or codebase is None:
            raise DataError("--queries and --codebase go together: give both (CoSQA-format files) or neither")
        cosqa_evaluate(config, queries, codebase, split, run_name, quiet, as_json)
        return
    from .evaluate import package_folders

    package_folders(config.packages)  # a missing folder or package is named before the run folder is made
    _threads()
    run = Run("codesearch", run_name or f"evaluate-{time.strftime('%Y%m%d-%H%M%S')}")
    result = evaluate_into_run(config, run, quiet)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    from ..core.runs import markdown_table

    console.print(markdown_table(["metric", "value"], [[k, round(v, 4)] for k, v in result["metrics"].items()]))
    console.print(f"sizes: {result['sizes']}; run: {run.path}")


def cosqa_index_config(config: EvalConfig) -> IndexConfig:
    """The index a CoSQA evaluation builds: the default IndexConfig with the dense parts of `config.methods`
    (bm25 is always there) and `config.ltt` as its LTT encoder."""
    encoders = [m.strip() for m in config.methods.split(",") if m.strip() and m.strip() != "bm25"]
    return IndexConfig(encoders=",".join(encoders), ltt=config.ltt)


def cosqa_evaluate(config: EvalConfig, queries: pathlib.Path, codebase: pathlib.Path, split: str,
                   run_name: str | None, quiet: bool, as_json: bool) -> dict:
    """`codesearch evaluate --queries Q --codebase C`: CoSQA-format retrieval, printed and left in a run."""
    from ..core.runs import Run, markdown_table
    from .cosqa import evaluate_cosqa, load_cosqa

    query_list, codes = load_cosqa(queries, codebase)  # every input problem is named before any work
    _threads()
    index_config = cosqa_index_config(config)
    result = evaluate_cosqa(query_list, codes, index_config, quiet=quiet, split=split)
    result["queries_file"], result["codebase_file"] = str(queries), str(codebase)
    run = Run("codesearch", run_name or f"evaluate-cosqa-{time.strftime('%Y%m%d-%H%M%S')}")
    run.write_config(index_config)
    run.log(0, **result["metrics"], index_snippets_per_s=result["index"]["snippets_per_s"],
            query_ms_p50=result["query_ms"]["p50"], query_ms_p99=result["query_ms"]["p99"])
    (run.path / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    rows = [[name, m["mrr10"], m["recall1"], m["recall10"]] for name, m in result["by_part"].items()]
    table = markdown_table(["ranking", "MRR@10", "R@1", "R@10"], rows)
    timing = (f"index: {result['sizes']['functions']} functions in {result['index']['seconds']:.1f} s "
              f"({result['index']['snippets_per_s']:.1f} snippets/s); query: p50 {result['query_ms']['p50']:.1f} ms, "
              f"p99 {result['query_ms']['p99']:.1f} ms")
    run.write_summary(f"codesearch evaluation: CoSQA-format queries {queries.name} over {codebase.name}",
                      result["metrics"], tables=[table],
                      notes=f"{result['sizes']['queries']} queries. fused: all parts ({', '.join(result['parts'])}); "
                            f"default: the parts of a default index ({', '.join(result['default_parts'])}). "
                            f"{timing}.")
    if as_json:
        print(json.dumps({**result, "run": str(run.path)}, indent=2))
        return result
    console.print(table)
    console.print(f"fused = all parts ({', '.join(result['parts'])}); default = the parts of a default index "
                  f"({', '.join(result['default_parts'])}); {result['sizes']['queries']} queries")
    console.print(timing)
    console.print(f"run: {run.path}")
    return result


def evaluate_into_run(config: EvalConfig, run, quiet: bool) -> dict:
    """Run the evaluation and leave config.json, metrics.jsonl, plots and summary.md in `run`."""
    from ..core.runs import markdown_table
    from .evaluate import plot_metrics, run_evaluation

    run.write_config(config)
    result = run_evaluation(config, run=run, quiet=quiet)
    run.log(config.ltt.train.steps + 1, **result["metrics"])
    plot_metrics(result["metrics"], run.plots_dir / "retrieval.png")
    run.plot_metrics(["loss", "in_batch_acc"], filename="ltt_training.png", title="LTT code encoder training")
    (run.path / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    examples = markdown_table(["query", "target", *[m for m in result["examples"][0] if m not in
                                                    ("query", "target")]],
                              [list(e.values()) for e in result["examples"]]) if result["examples"] else ""
    run.write_summary("codesearch evaluation: docstring -> function on held-out packages", result["metrics"],
                      tables=[markdown_table(["size", "value"], list(result["sizes"].items())), examples],
                      notes=f"Held-out packages: {', '.join(result['held_out_packages'])}.")
    return result


def _threads() -> None:
    from ..core.runs import set_threads

    set_threads(2, at_most=True)  # the machine's 2 cores; oversubscribing is slower


# what the demo reads, for the report (no data set: real code, but a generated task)
DEMO_DATA = "the latentspace package's own source code (real code; queries written for it, not real user queries)"


def demo(out_dir: pathlib.Path, quiet: bool):
    """Index latentspace's own source, run a few searches, and a small held-out retrieval evaluation."""
    from ..core.runs import DemoResult, Run, markdown_table
    from .index import build_index

    _threads()
    out_dir = pathlib.Path(out_dir)
    run = Run("codesearch", path=out_dir)
    source = pathlib.Path(__file__).resolve().parents[1]
    start = time.perf_counter()
    index = build_index(source, IndexConfig(encoders="ltt").override({"ltt.train.steps": 150}), quiet=quiet)
    index.save(out_dir / "code_index")
    index_s = time.perf_counter() - start
    queries = ["save a checkpoint atomically", "reciprocal rank fusion of ranked lists",
               "split camelCase identifiers into words", "integrate an ODE with Euler steps"]
    rows = []
    for query in queries:
        hit = index.search(query, 1)
        rows.append([query, f"{hit[0].snippet.path}:{hit[0].snippet.start_line} {hit[0].snippet.symbol}" if hit
                     else "-"])
    config = EvalConfig(max_queries=300, max_pool=600, max_train_pairs=4000).override({"ltt.train.steps": 200})
    result = evaluate_into_run(config, run, quiet)
    m = result["metrics"]
    metrics = {"index_snippets": len(index), "index_s": round(index_s, 1),
               **{k: round(v, 4) for k, v in m.items() if k.startswith(("mrr10_", "recall1_hybrid"))
                  and k.count("_") == 1}}
    return DemoResult(
        metrics,
        plots=[p for p in (run.plots_dir / "retrieval.png", run.plots_dir / "ltt_training.png") if p.exists()],
        summary=(f"Indexed latentspace's own source ({len(index)} snippets, LTT encoder trained on its docstrings, "
                 f"{index_s:.0f} s) and evaluated docstring -> function retrieval on {result['sizes']['queries']} "
                 f"queries from held-out standard-library packages (pool {result['sizes']['pool']}; LTT trained on "
                 f"{result['sizes']['train_pairs']} pairs from other packages): MRR@10 BM25 "
                 f"{m.get('mrr10_bm25', 0):.3f}, MiniLM {m.get('mrr10_minilm', 0):.3f}, LTT "
                 f"{m.get('mrr10_ltt', 0):.3f}, hybrid {m.get('mrr10_hybrid', 0):.3f}."),
        tables=[markdown_table(["query over latentspace's source", "top hit"], rows)],
    )
