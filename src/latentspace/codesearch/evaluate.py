"""A code-retrieval benchmark built from real code: installed Python packages, docstring -> function.

Each documented function or method of the chosen packages (the standard library by default) gives one
example: the query is the first sentence of its docstring, the target is the function with the docstring
removed. Packages are split (a stable hash of the package name) into training packages, whose examples
train the LTT encoder, and held-out packages, whose functions form the searched pool; so the encoder is
never trained on the package it is evaluated on. Installed third-party packages (`train_packages`) add
training examples only: they are never searched. A share of the training packages (`validation_fraction`)
is kept out of training as a validation pool, on which the weights of the rank fusion are chosen; so no
choice is ever made on the evaluated packages. Reported: MRR@10, Recall@1 and Recall@10 of BM25, each
dense encoder, and their reciprocal-rank fusions.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import random
import sysconfig
import time
import zlib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..core.errors import DataError, require_path
from .config import EvalConfig
from .index import RRF_K, BM25Part, DensePart
from .snippets import extract_snippets, first_sentence, read_source, walk_files

log = logging.getLogger("latentspace")

STDLIB_SKIP = {"test", "idlelib", "lib2to3", "ensurepip", "turtledemo", "site-packages", "dist-packages",
               "lib-dynload", "__pycache__", "__phello__", "pydoc_data", "config"}


@dataclasses.dataclass
class Example:
    package: str
    symbol: str
    query: str
    code: str


def package_folders(spec: str) -> dict[str, Path]:
    """Package name -> folder or file, for "stdlib" (each top-level module a package) and installed names."""
    out: dict[str, Path] = {}
    for item in [s.strip() for s in spec.split(",") if s.strip()]:
        if item == "stdlib":
            stdlib = Path(sysconfig.get_paths()["stdlib"])
            for entry in sorted(stdlib.iterdir()):
                name = entry.stem if entry.suffix == ".py" else entry.name
                if name in STDLIB_SKIP or name.startswith((".", "_")) and name != "__future__":
                    continue
                if (entry.is_dir() and (entry / "__init__.py").exists()) or entry.suffix == ".py":
                    out[name] = entry
        elif Path(item).exists() or "/" in item or os.sep in item:
            out[Path(item).name] = require_path(item, "package folder")
        else:
            try:
                spec_ = importlib.util.find_spec(item)
            except (ImportError, ValueError):  # "a.b" whose parent "a" is not installed, or an empty part
                spec_ = None
            if spec_ is None:
                raise DataError(f"package {item!r} is not installed; give an installed package, a folder or 'stdlib'")
            locations = list(spec_.submodule_search_locations or [])
            out[item] = Path(locations[0]) if locations else Path(spec_.origin)
    if not out:
        raise DataError(f"no packages found for {spec!r}")
    return out


def package_examples(name: str, folder: Path, min_query_words: int = 4) -> list[Example]:
    """The (first docstring sentence, function without docstring) examples of one package."""
    examples = []
    skipped = []
    base = folder if folder.is_dir() else folder.parent
    for path, language in walk_files(folder, skipped=skipped):
        if language != "python" or any(part in ("test", "tests") for part in path.relative_to(base).parts[:-1]):
            continue
        read = read_source(path, 2_000_000, skipped)
        if read is None:
            continue
        for snippet in extract_snippets(path.relative_to(base).as_posix(), read[0], "python"):
            if snippet.kind not in ("function", "method") or not snippet.doc or not snippet.code:
                continue
            query = first_sentence(snippet.doc)
            if len(query.split()) < min_query_words or len(snippet.code.strip().splitlines()) < 3:
                continue
            examples.append(Example(name, f"{snippet.path}:{snippet.symbol}", query, snippet.code))
    return examples


def held_out(name: str, fraction: float, seed: int = 0) -> bool:
    """Whether a package is held out for evaluation: a stable hash of its name, never random."""
    return (zlib.crc32(f"{seed}:{name}".encode()) % 10000) / 10000 < fraction


def build_dataset(config: EvalConfig) -> tuple[list[Example], list[Example], list[int]]:
    """(training examples, pool, query ids into the pool): the split is by package.

    The validation examples are among the training ones; `split_validation` takes them out.

    Held-out queries whose text occurs more than once are dropped (they have no single right answer);
    training keeps one example per query text and none whose text is a held-out query.
    """
    folders = package_folders(config.packages)
    train, held = [], []
    for name, folder in folders.items():
        examples = package_examples(name, folder, config.min_query_words)
        (held if held_out(name, config.eval_fraction, config.seed) else train).extend(examples)
    extra = []
    for item in [s.strip() for s in config.train_packages.split(",") if s.strip()]:
        try:
            extra_folders = package_folders(item)
        except DataError:
            log.info("training package %s is not installed; skipped", item)
            continue
        for name, folder in extra_folders.items():
            if name not in folders:
                extra.extend(package_examples(name, folder, config.min_query_words))
    counts = Counter(e.query for e in train + held)
    held = [e for e in held if counts[e.query] == 1]  # a repeated query has no single right answer
    held_queries = {e.query for e in held}
    seen: set[str] = set()
    train_unique = []
    for e in train + extra:  # one example per query text: a repeated docstring is a false in-batch negative
        if e.query not in seen and e.query not in held_queries:
            seen.add(e.query)
            train_unique.append(e)
    train = train_unique
    if not held or not train:
        raise DataError(f"the split of {len(folders)} packages left {len(train)} training and {len(held)} held-out "
                        f"examples; use more packages or another --eval-fraction")
    rng = random.Random(config.seed)
    rng.shuffle(train)
    train = train[: config.max_train_pairs]
    rng.shuffle(held)
    pool = held[: config.max_pool]
    queries = list(range(min(config.max_queries, len(pool))))
    return train, pool, queries


def split_validation(train: Sequence[Example], config: EvalConfig,
                     base_packages: set[str]) -> tuple[list[Example], list[Example]]:
    """(examples to train on, validation examples): whole packages of `base_packages` (the evaluated kind,
    e.g. the standard library) chosen by a stable hash; extra training packages are never validation."""
    is_validation = [e.package in base_packages and held_out(e.package, config.validation_fraction, config.seed + 1)
                     for e in train]
    fit = [e for e, v in zip(train, is_validation, strict=True) if not v]
    validation = [e for e, v in zip(train, is_validation, strict=True) if v][: config.max_validation]
    return fit, validation


def reciprocal_rank_matrix(rankings: Sequence[Sequence[int]], n_docs: int, k: float) -> np.ndarray:
    """(Q, n_docs) matrix of 1 / (k + rank) for the ranked ids of each query (0 where not ranked)."""
    out = np.zeros((len(rankings), n_docs))
    for row, ranking in enumerate(rankings):
        ids = np.asarray(ranking, dtype=np.int64)
        out[row, ids] = 1.0 / (k + np.arange(1, len(ids) + 1))
    return out


def _fuse(matrices: dict[str, np.ndarray], weights: dict[str, float], depth: int) -> list[np.ndarray]:
    """Top-`depth` ids per query of the weighted sum of reciprocal-rank matrices (Q, n_docs)."""
    total = sum(w * matrices[name] for name, w in weights.items() if w > 0)
    order = np.argsort(-total, axis=1, kind="stable")[:, :depth]
    return [row[total[i, row] > 0] for i, row in enumerate(order)]


def fused_rankings(rankings: dict[str, Sequence[Sequence[int]]], weights: dict[str, float], n_docs: int,
                   k: float, depth: int = 10) -> list[np.ndarray]:
    """Weighted reciprocal-rank fusion of every query at once (the batched `reciprocal_rank_fusion`)."""
    return _fuse({name: reciprocal_rank_matrix(rankings[name], n_docs, k) for name, w in weights.items() if w > 0},
                 weights, depth)


def choose_fusion(rankings: dict[str, Sequence[Sequence[int]]], targets: Sequence[int], n_docs: int,
                  grid: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0), ks: Sequence[float] = (5, 20, 60),
                  ) -> tuple[dict[str, float], float, float]:
    """The fusion weights and RRF k with the best MRR@10 on a validation pool: (weights, k, mrr10).

    An exhaustive grid over each ranker's weight (the largest weight is 1); ties go to the simpler fusion
    (fewer rankers, then the earlier grid point), so a ranker that adds nothing is left out.
    """
    import itertools

    names = list(rankings)
    best = ({names[0]: 1.0}, float(ks[-1]), -1.0)
    for k in ks:
        matrices = {name: reciprocal_rank_matrix(rankings[name], n_docs, k) for name in names}
        combos = [c for c in itertools.product(grid, repeat=len(names)) if max(c) == 1.0]  # scale-free
        for combo in sorted(combos, key=lambda c: sum(w > 0 for w in c)):
            weights = {name: w for name, w in zip(names, combo, strict=True) if w > 0}
            mrr = retrieval_metrics(_fuse(matrices, weights, 10), targets)["mrr10"]
            if mrr > best[2] + 1e-9:
                best = (weights, float(k), mrr)
    return best


def retrieval_metrics(rankings: Sequence[Sequence[int]], targets: Sequence[int]) -> dict[str, float]:
    """MRR@10, Recall@1 and Recall@10 of ranked lists (best first) against one target each."""
    reciprocal, hit1, hit10 = [], [], []
    for ranking, target in zip(rankings, targets, strict=True):
        top = [int(i) for i in ranking[:10]]
        rank = top.index(target) + 1 if target in top else None
        reciprocal.append(1.0 / rank if rank else 0.0)
        hit1.append(rank == 1)
        hit10.append(rank is not None)
    return {"mrr10": float(np.mean(reciprocal)), "recall1": float(np.mean(hit1)),
            "recall10": float(np.mean(hit10))}


def run_evaluation(config: EvalConfig, run=None, quiet: bool = True, depth: int = 100,
                   encoders_out: dict | None = None) -> dict:
    """Build the data set, train the LTT encoder on training packages, rank the held-out pool by every method.

    Returns:
        {"metrics": {"mrr10_bm25", ..., "mrr10_hybrid", "recall1_hybrid", ...}, "sizes": {...},
         "seconds": {...}, "held_out_packages": [...]}; `encoders_out` (if given) receives the encoders.
    """
    timings = {}
    t = time.perf_counter()
    train, pool, queries = build_dataset(config)
    train, validation = split_validation(train, config, set(package_folders(config.packages)))
    timings["dataset_s"] = time.perf_counter() - t
    codes = [e.code for e in pool]
    query_texts = [pool[i].query for i in queries]
    val_codes = [e.code for e in validation]
    val_queries = [e.query for e in validation]
    methods = [m.strip() for m in config.methods.split(",") if m.strip()]
    rankings: dict[str, list[np.ndarray]] = {}
    val_rankings: dict[str, list[np.ndarray]] = {}
    if "bm25" in methods:
        t = time.perf_counter()
        bm25 = BM25Part.build(codes)
        rankings["bm25"] = [bm25.rank(q, depth) for q in query_texts]
        timings["bm25_s"] = time.perf_counter() - t
        if validation:
            val_bm25 = BM25Part.build(val_codes)
            val_rankings["bm25"] = [val_bm25.rank(q, depth) for q in val_queries]
    for name in methods:
        if name == "bm25":
            continue
        t = time.perf_counter()
        if name == "ltt":
            from .encoder import train_code_encoder

            encoder = train_code_encoder([(e.query, e.code) for e in train], config.ltt, run=run, quiet=quiet)
            timings["ltt_train_s"] = time.perf_counter() - t
            t = time.perf_counter()
        else:
            from .encoder import SentenceEncoder

            encoder = SentenceEncoder("all-MiniLM-L6-v2" if name == "minilm" else name)
        if encoders_out is not None:
            encoders_out[name] = encoder
        dense = DensePart(encoder.encode_code(codes))
        rankings[name] = [dense.rank(v, depth) for v in encoder.encode_query(query_texts)]
        timings[f"{name}_embed_s"] = time.perf_counter() - t
        if validation:
            val_dense = DensePart(encoder.encode_code(val_codes))
            val_rankings[name] = [val_dense.rank(v, depth) for v in encoder.encode_query(val_queries)]
    metrics: dict[str, float] = {}
    for name, ranked in rankings.items():
        for key, value in retrieval_metrics(ranked, queries).items():
            metrics[f"{key}_{name}"] = value
    fusions = {"hybrid": list(rankings)}
    if len(rankings) > 2:
        for left in rankings:
            for right in rankings:
                if left < right:
                    fusions[f"hybrid_{left}_{right}"] = [left, right]
    chosen = {}
    for fusion, parts in fusions.items():
        if len(parts) < 2:
            continue
        plain = fused_rankings(rankings, {p: 1.0 for p in parts}, len(pool), RRF_K)
        for key, value in retrieval_metrics(plain, queries).items():
            metrics[f"{key}_{fusion}_rrf"] = value
        weights, k = {p: 1.0 for p in parts}, float(RRF_K)
        if validation:
            weights, k, val_mrr = choose_fusion({p: val_rankings[p] for p in parts}, list(range(len(validation))),
                                                len(validation))
            chosen[fusion] = {"weights": weights, "k": k, "validation_mrr10": round(val_mrr, 4)}
        fused = fused_rankings(rankings, weights, len(pool), k)
        for key, value in retrieval_metrics(fused, queries).items():
            metrics[f"{key}_{fusion}"] = value
    for name, ranked in val_rankings.items():
        metrics[f"validation_mrr10_{name}"] = retrieval_metrics(ranked, range(len(validation)))["mrr10"]
    held_packages = sorted({e.package for e in pool})
    train_packages = sorted({e.package for e in train})
    validation_packages = {e.package for e in validation}
    if set(held_packages) & set(train_packages) or validation_packages & set(train_packages):
        raise AssertionError("a package is both trained on and evaluated or validated")
    result = {"metrics": metrics,
              "fusion": chosen,
              "sizes": {"train_pairs": len(train), "validation": len(validation), "pool": len(pool),
                        "queries": len(queries),
                        "train_packages": len(train_packages), "held_out_packages": len(held_packages)},
              "seconds": {k: round(v, 2) for k, v in timings.items()},
              "held_out_packages": held_packages,
              "examples": [{"query": pool[q].query, "target": pool[q].symbol,
                            **{m: pool[int(rankings[m][i][0])].symbol if len(rankings[m][i]) else None
                               for m in rankings}} for i, q in enumerate(queries[:5])]}
    return result


def plot_metrics(metrics: dict[str, float], path: Path, title: str = "") -> Path:
    """Grouped bars of MRR@10, Recall@1 and Recall@10 per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [k[len("mrr10_"):] for k in metrics if k.startswith("mrr10_")]
    keys = ["mrr10", "recall1", "recall10"]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(methods) + 2), 3.4))
    width = 0.8 / len(keys)
    for j, key in enumerate(keys):
        values = [metrics.get(f"{key}_{m}", 0.0) for m in methods]
        ax.bar(np.arange(len(methods)) + (j - 1) * width, values, width, label=key)
    ax.set_xticks(np.arange(len(methods)))
    ax.set_xticklabels(methods, rotation=20, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title or "docstring -> function retrieval (held-out packages)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
