"""A code-retrieval benchmark built from real code: installed Python packages, docstring -> function.

Each documented function or method of the chosen packages (the standard library by default) gives one
example: the query is the first sentence of its docstring, the target is the function with the docstring
removed. Packages are split (a stable hash of the package name) into training packages, whose examples
train the LTT encoder, and held-out packages, whose functions form the searched pool; so the encoder is
never trained on the package it is evaluated on. Reported: MRR@10, Recall@1 and Recall@10 of BM25, each
dense encoder, and their reciprocal-rank fusions.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import random
import sysconfig
import time
import zlib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..core.config import Config
from ..core.errors import DataError
from .index import BM25Part, DensePart, reciprocal_rank_fusion
from .snippets import extract_snippets, first_sentence, read_source, walk_files

log = logging.getLogger("latentspace")

STDLIB_SKIP = {"test", "idlelib", "lib2to3", "ensurepip", "turtledemo", "site-packages", "dist-packages",
               "lib-dynload", "__pycache__", "__phello__", "pydoc_data", "config"}


@dataclasses.dataclass
class EvalConfig(Config):
    """What the retrieval benchmark evaluates, on what, and how big."""

    packages: str = "stdlib"  # "stdlib" and/or comma-separated installed package names or folders
    eval_fraction: float = 0.25  # share of packages held out (by a stable hash of the name)
    max_queries: int = 1000
    max_pool: int = 4000  # searched functions: the query targets plus other held-out functions
    max_train_pairs: int = 30000
    methods: str = "bm25,minilm,ltt"
    encoder_preset: str = "small"
    encoder_steps: int = 300
    min_query_words: int = 4
    seed: int = 0


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
        elif Path(item).exists():
            out[Path(item).name] = Path(item)
        else:
            spec_ = importlib.util.find_spec(item)
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

    Queries whose text occurs more than once are dropped (they have no single right answer).
    """
    folders = package_folders(config.packages)
    train, held = [], []
    for name, folder in folders.items():
        examples = package_examples(name, folder, config.min_query_words)
        (held if held_out(name, config.eval_fraction, config.seed) else train).extend(examples)
    counts = Counter(e.query for e in train + held)
    train = [e for e in train if counts[e.query] == 1]
    held = [e for e in held if counts[e.query] == 1]
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
    timings["dataset_s"] = time.perf_counter() - t
    codes = [e.code for e in pool]
    query_texts = [pool[i].query for i in queries]
    methods = [m.strip() for m in config.methods.split(",") if m.strip()]
    rankings: dict[str, list[np.ndarray]] = {}
    if "bm25" in methods:
        t = time.perf_counter()
        bm25 = BM25Part.build(codes)
        rankings["bm25"] = [bm25.rank(q, depth) for q in query_texts]
        timings["bm25_s"] = time.perf_counter() - t
    for name in methods:
        if name == "bm25":
            continue
        t = time.perf_counter()
        if name == "ltt":
            from .encoder import CodeEncoderConfig, train_code_encoder

            enc_config = CodeEncoderConfig.preset(config.encoder_preset).replace(steps=config.encoder_steps,
                                                                                 seed=config.seed)
            encoder = train_code_encoder([(e.query, e.code) for e in train], enc_config, run=run, quiet=quiet)
            timings["ltt_train_s"] = time.perf_counter() - t
            t = time.perf_counter()
        else:
            from .encoder import SentenceEncoder

            encoder = SentenceEncoder("all-MiniLM-L6-v2" if name == "minilm" else name)
        if encoders_out is not None:
            encoders_out[name] = encoder
        dense = DensePart(encoder.encode_code(codes))
        query_vectors = encoder.encode_query(query_texts)
        rankings[name] = [dense.rank(v, depth) for v in query_vectors]
        timings[f"{name}_embed_s"] = time.perf_counter() - t
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
    for fusion, parts in fusions.items():
        if len(parts) < 2:
            continue
        fused = [[doc for doc, _ in reciprocal_rank_fusion([rankings[p][q] for p in parts])] for q in
                 range(len(queries))]
        for key, value in retrieval_metrics(fused, queries).items():
            metrics[f"{key}_{fusion}"] = value
    held_packages = sorted({e.package for e in pool})
    train_packages = sorted({e.package for e in train})
    if set(held_packages) & set(train_packages):
        raise AssertionError("a package is both trained on and evaluated")
    result = {"metrics": metrics,
              "sizes": {"train_pairs": len(train), "pool": len(pool), "queries": len(queries),
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
