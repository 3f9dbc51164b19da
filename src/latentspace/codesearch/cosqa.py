"""Code search on real user queries: CoSQA-format retrieval (`codesearch evaluate --queries Q --codebase C`).

The format is CoSQA's (Huang et al. 2021) retrieval split: a queries file, a JSON list of objects each with
"doc" (the web query, e.g. "python check if a variable is iterable") and "retrieval_idx" (the id of the one
function that answers it), and a code base, a JSON object {code string: id}. Every function of the code base
becomes one snippet (its full text searched by BM25 and embedded by each dense encoder; its docstring, when it
has one, gives the LTT encoder's self-supervised training pair as in `build_index`). Each query is searched
once: every part's ranking and their fusion (the index's fusion weights) are scored by MRR@10, Recall@1 and
Recall@10, and timed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ..core.errors import DataError, require_path
from .config import IndexConfig
from .evaluate import retrieval_metrics
from .snippets import Snippet, extract_snippets

# the parts a default `codesearch index` has (IndexConfig().encoders plus BM25): "default" fuses those present
DEFAULT_PARTS = ("bm25", *IndexConfig().encoder_names())


def _read_json(path: Path, what: str):
    require_path(path, what, kind="file")
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise DataError(f"{what} {path} is empty")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{what} {path} is not valid JSON: {e}") from None


def load_cosqa(queries_path: str | Path, codebase_path: str | Path) -> tuple[list[tuple[str, int]],
                                                                           list[tuple[str, int]]]:
    """([(query, target id)], [(code, id)]) from a CoSQA-format queries file and code base; DataError naming
    the file and the entry for anything malformed, empty or a target id absent from the code base."""
    require_path(queries_path, "queries file", kind="file")  # both paths are checked before either is read
    require_path(codebase_path, "code base", kind="file")
    raw_queries = _read_json(Path(queries_path), "queries file")
    raw_codes = _read_json(Path(codebase_path), "code base")
    if not isinstance(raw_codes, dict):
        raise DataError(f"code base {codebase_path} is not a JSON object {{code: id}} (got a "
                        f"{type(raw_codes).__name__})")
    if not raw_codes:
        raise DataError(f"code base {codebase_path} holds no functions")
    codes = []
    for code, idx in raw_codes.items():
        if not isinstance(idx, int) or isinstance(idx, bool):
            raise DataError(f"code base {codebase_path}: the id of {code[:60]!r} is {idx!r}, not an integer")
        if code.strip():
            codes.append((code, idx))
    if not codes:
        raise DataError(f"code base {codebase_path} holds only empty functions")
    if not isinstance(raw_queries, list):
        raise DataError(f"queries file {queries_path} is not a JSON list of {{\"doc\", \"retrieval_idx\"}} objects")
    if not raw_queries:
        raise DataError(f"queries file {queries_path} holds no queries")
    ids = {idx for _, idx in codes}
    queries = []
    for n, item in enumerate(raw_queries):
        if not isinstance(item, dict) or not isinstance(item.get("doc"), str) or "retrieval_idx" not in item:
            raise DataError(f"queries file {queries_path}: entry {n} is not an object with a \"doc\" string and a "
                            f"\"retrieval_idx\"")
        if not item["doc"].strip():
            raise DataError(f"queries file {queries_path}: entry {n} has an empty \"doc\"")
        if item["retrieval_idx"] not in ids:
            raise DataError(f"queries file {queries_path}: entry {n} ({item['doc'][:60]!r}) has retrieval_idx "
                            f"{item['retrieval_idx']!r}, which is not an id of the code base {codebase_path}")
        queries.append((item["doc"], int(item["retrieval_idx"])))
    return queries, codes


def code_snippet(code: str, idx: int) -> Snippet:
    """One function of the code base as one snippet (path "cosqa/<id>.py"), with its docstring and symbol when
    tree-sitter finds a function in it."""
    path = f"cosqa/{idx}.py"
    n_lines = code.count("\n") + 1
    symbol, doc, body = None, None, None
    try:
        parsed = [s for s in extract_snippets(path, code, "python") if s.kind in ("function", "method", "class")]
    except Exception:  # a fragment tree-sitter cannot take: indexed as plain text
        parsed = []
    if parsed:
        first = min(parsed, key=lambda s: s.start_line)
        symbol, doc, body = first.symbol, first.doc, first.code
    return Snippet(path, 1, n_lines, "python", "function", symbol, code, doc, body)


def evaluate_cosqa(queries: list[tuple[str, int]], codes: list[tuple[str, int]], config: IndexConfig,
                   quiet: bool = True, depth: int = 100, split: str = "dev") -> dict:
    """Index the code base with `config`, search every query, and score each part and the fusions.

    Returns:
        {"metrics": {"cosqa_<split>_mrr10_<part>", "..._recall1_...", "..._recall10_...", for each part,
        "fused" (all parts) and "default" (the parts of a default index that are present)},
        "parts", "default_parts", "sizes", "index": {seconds, snippets_per_s, ...}, "query_ms": {p50, p99, mean}}
    """
    from .index import index_snippets

    t = time.perf_counter()
    snippets = [code_snippet(code, idx) for code, idx in codes]
    index = index_snippets(snippets, config, root="cosqa", quiet=quiet)
    index_s = time.perf_counter() - t
    ids = np.array([idx for _, idx in codes])
    parts = index.parts
    default_parts = [p for p in DEFAULT_PARTS if p in parts]
    row_of = {id(s): i for i, s in enumerate(index.snippets)}  # a hit's snippet -> its row
    rankings: dict[str, list[list[int]]] = {p: [] for p in [*parts, "fused", "default"]}
    latencies = []
    for query, _ in queries:
        start = time.perf_counter()
        ranked = index.rankings(query, parts, depth)
        hits = index.fuse(ranked, 10)
        latencies.append(time.perf_counter() - start)
        for part in parts:
            rankings[part].append([int(ids[i]) for i in ranked[part][:10]])
        rankings["fused"].append([int(ids[row_of[id(h.snippet)]]) for h in hits])
        if default_parts == parts:
            rankings["default"].append(rankings["fused"][-1])
        else:
            default_hits = index.fuse({p: ranked[p] for p in default_parts}, 10)
            rankings["default"].append([int(ids[row_of[id(h.snippet)]]) for h in default_hits])
    targets = [idx for _, idx in queries]
    metrics, by_part = {}, {}
    for name, ranked_ids in rankings.items():
        scores = retrieval_metrics(ranked_ids, targets)
        by_part[name] = {k: round(v, 4) for k, v in scores.items()}
        for key, value in scores.items():
            metrics[f"cosqa_{split}_{key}_{name}"] = value
    ms = np.array(latencies) * 1000
    return {
        "metrics": metrics,
        "by_part": by_part,
        "parts": parts,
        "default_parts": default_parts,
        "fusion_weights": {p: index.config.weights().get(p, 1.0) for p in parts},
        "rrf_k": index.config.rrf_k,
        "sizes": {"queries": len(queries), "functions": len(snippets),
                  "functions_with_docstring": sum(bool(s.doc) for s in snippets)},
        "index": {"seconds": round(index_s, 2), "snippets_per_s": round(len(snippets) / index_s, 1),
                  **index.stats},
        "query_ms": {"p50": round(float(np.percentile(ms, 50)), 2), "p99": round(float(np.percentile(ms, 99)), 2),
                     "mean": round(float(ms.mean()), 2)},
    }

