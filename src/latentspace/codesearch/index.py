"""The code index: snippets + BM25 + dense vectors, fused by reciprocal rank; versioned and written atomically.

On disk an index is a folder holding generations: `CURRENT` names the complete generation (`gen-000003/`)
and is replaced with one atomic rename after the new generation is fully written, so a crash at any moment
leaves the previous index readable. A generation holds `manifest.json` (format name and version, config,
root, per-file content hashes), `snippets.jsonl`, `vectors.safetensors` (one (N, D) matrix per dense
encoder), `bm25/` (bm25s) and `ltt_encoder/` (the trained CodeEncoder checkpoint).

Re-indexing reads the previous index and re-extracts and re-embeds only the files whose content hash
changed; BM25 is rebuilt over all snippets (it is cheap), and the trained LTT encoder is kept unless
`retrain` is asked for.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from safetensors import SafetensorError

from .. import __version__
from ..core.data import atomic_folder, atomic_write, fault_point, read_jsonl
from ..core.errors import DataError
from ..core.progress import track
from .config import IndexConfig
from .snippets import SkippedFile, Snippet, extract_snippets, first_sentence, read_source, walk_files
from .tokens import bm25_tokens

log = logging.getLogger("latentspace")

FORMAT_NAME = "latentspace-codesearch-index"
FORMAT_VERSION = 2  # 2: the LTT encoder with a word path and IDF-seeded pooling
CURRENT = "CURRENT"
MANIFEST = "manifest.json"
RRF_K = 60


class IndexFormatError(DataError):
    """An index folder that is missing, corrupt, of another format or of another format version."""


@dataclasses.dataclass
class Hit:
    """One search result: the snippet, its fused score and its rank (1-based) in each part that found it."""

    snippet: Snippet
    score: float
    ranks: dict[str, int]

    def to_dict(self, show_code: bool = False) -> dict:
        out = {"path": self.snippet.path, "start_line": self.snippet.start_line, "end_line": self.snippet.end_line,
               "language": self.snippet.language, "kind": self.snippet.kind, "symbol": self.snippet.symbol,
               "score": round(self.score, 6), "ranks": self.ranks}
        if show_code:
            out["code"] = self.snippet.text
        return out


# ---- ranking primitives ------------------------------------------------------------------------------------


def top_k(scores: np.ndarray, k: int, positive_only: bool = False) -> np.ndarray:
    """Indices of the k largest scores, best first (ties by lower index)."""
    if positive_only:
        candidates = np.flatnonzero(scores > 0)
        if len(candidates) == 0:
            return candidates
        sub = scores[candidates]
        order = np.lexsort((candidates, -sub))[:k]
        return candidates[order]
    k = min(k, len(scores))
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    part = np.argpartition(-scores, k - 1)[:k]
    return part[np.lexsort((part, -scores[part]))]


def reciprocal_rank_fusion(rankings: Sequence[Sequence[int]], k: int = RRF_K,
                           weights: Sequence[float] | None = None) -> list[tuple[int, float]]:
    """Fuse ranked lists of ids: score(d) = sum_i w_i / (k + rank_i(d)), rank 1-based; best first."""
    weights = weights if weights is not None else [1.0] * len(rankings)
    scores: dict[int, float] = {}
    for ranking, weight in zip(rankings, weights, strict=True):
        for rank, doc in enumerate(ranking, start=1):
            scores[int(doc)] = scores.get(int(doc), 0.0) + weight / (k + rank)
    return sorted(scores.items(), key=lambda item: (-item[1], item[0]))


def reciprocal_rank_fusion_reference(rankings, n_docs: int, k: int = RRF_K, weights=None) -> list[tuple[int, float]]:
    """Slow reference: a dense score for every document, then a full sort."""
    weights = weights if weights is not None else [1.0] * len(rankings)
    dense = np.zeros(n_docs)
    seen = np.zeros(n_docs, dtype=bool)
    for ranking, weight in zip(rankings, weights, strict=True):
        for doc in range(n_docs):
            if doc in list(ranking):
                dense[doc] += weight / (k + list(ranking).index(doc) + 1)
                seen[doc] = True
    return [(d, float(dense[d])) for d in sorted(np.flatnonzero(seen), key=lambda d: (-dense[d], d))]


def _bm25s():
    """bm25s, imported lazily; it sets its own logger to DEBUG on import, which floods the console, so its
    logger follows ours (debug messages only with `latentspace --verbose`)."""
    import bm25s

    logging.getLogger("bm25s").setLevel(logging.getLogger().getEffectiveLevel())
    return bm25s


class BM25Part:
    """BM25 (bm25s, Lucene variant) over identifier-split snippet text."""

    def __init__(self, retriever):
        self.retriever = retriever
        self.vocab = retriever.vocab_dict

    @classmethod
    def build(cls, texts: Sequence[str]) -> BM25Part:
        bm25s = _bm25s()
        retriever = bm25s.BM25()
        retriever.index([bm25_tokens(t) for t in texts], show_progress=False)
        return cls(retriever)

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every snippet (N,) for the query's terms (unknown terms score nothing)."""
        tokens = [t for t in dict.fromkeys(bm25_tokens(query)) if t in self.vocab]
        if not tokens:
            return np.zeros(self.retriever.scores["num_docs"], dtype=np.float32)
        return self.retriever.get_scores(tokens)

    def rank(self, query: str, k: int) -> np.ndarray:
        return top_k(self.scores(query), k, positive_only=True)

    def save(self, directory: Path) -> None:
        self.retriever.save(str(directory), show_progress=False)

    @classmethod
    def load(cls, directory: Path) -> BM25Part:
        bm25s = _bm25s()
        return cls(bm25s.BM25.load(str(directory), show_progress=False, verbosity=0))


class DensePart:
    """Unit-norm vectors (N, D) searched by inner product with FAISS (exact, flat)."""

    def __init__(self, vectors: np.ndarray):
        import faiss

        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.index = faiss.IndexFlatIP(self.vectors.shape[1])
        if len(self.vectors):
            self.index.add(self.vectors)

    def rank(self, query_vector: np.ndarray, k: int) -> np.ndarray:
        """Top-k snippet ids for one query vector (D,)."""
        k = min(k, len(self.vectors))
        if k == 0:
            return np.zeros(0, dtype=np.int64)
        _, ids = self.index.search(query_vector.reshape(1, -1).astype(np.float32), k)
        return ids[0][ids[0] >= 0]

    def rank_reference(self, query_vector: np.ndarray, k: int) -> np.ndarray:
        """Slow reference: numpy scores of every vector, then a full stable sort."""
        scores = self.vectors @ query_vector.astype(np.float32)
        return np.argsort(-scores, kind="stable")[:k]


# ---- the index ------------------------------------------------------------------------------------------------


class CodeIndex:
    """Snippets of a tree with a BM25 part and one dense part per encoder; `search` fuses them."""

    def __init__(self, root: Path, config: IndexConfig, snippets: list[Snippet], files: dict[str, str],
                 vectors: dict[str, np.ndarray], encoders: dict | None = None, bm25: BM25Part | None = None,
                 stats: dict | None = None):
        self.root = Path(root)
        self.config = config
        self.snippets = snippets
        self.files = files  # relative path -> content hash
        self.vectors = vectors  # encoder name -> (N, D)
        self.encoders = encoders or {}  # encoder name -> loaded encoder (lazy for sentence encoders)
        self.bm25 = bm25 if bm25 is not None else BM25Part.build([s.text for s in snippets])
        self.dense = {name: DensePart(v) for name, v in vectors.items()}
        self.stats = stats or {}
        self.path: Path | None = None

    def __len__(self) -> int:
        return len(self.snippets)

    @property
    def parts(self) -> list[str]:
        return ["bm25"] + list(self.dense)

    def encoder(self, name: str):
        """The encoder of a dense part (the trained LTT encoder, or a sentence encoder loaded on first use)."""
        if name not in self.encoders:
            if name == "ltt":
                from .encoder import CodeEncoder

                if self.path is None:
                    raise IndexFormatError("this index has no stored LTT encoder")
                self.encoders[name] = CodeEncoder.load(self.path / "ltt_encoder")
            else:
                from .encoder import SentenceEncoder

                self.encoders[name] = SentenceEncoder(_sentence_model_name(name))
        return self.encoders[name]

    def _check_parts(self, parts: Sequence[str] | None) -> list[str]:
        parts = list(parts) if parts else self.parts
        unknown = [p for p in parts if p not in self.parts]
        if unknown:
            raise DataError(f"this index has no part {unknown}; it has {self.parts} (index with --encoders to add one)")
        return parts

    def rankings(self, query: str, parts: Sequence[str] | None = None, depth: int = 100) -> dict[str, np.ndarray]:
        """The ranked snippet ids (best first, at most `depth`) of each part for a text query."""
        out = {}
        for part in self._check_parts(parts):
            if part == "bm25":
                out[part] = self.bm25.rank(query, depth)
            else:
                vector = self.encoder(part).encode_query([query])[0]
                out[part] = self.dense[part].rank(vector, depth)
        return out

    def fuse(self, rankings: dict[str, np.ndarray], top_k: int, exclude: set[int] = frozenset()) -> list[Hit]:
        ranked = {p: [int(i) for i in r if int(i) not in exclude] for p, r in rankings.items()}
        configured = self.config.weights()
        fused = reciprocal_rank_fusion(list(ranked.values()), self.config.rrf_k,
                                       [configured.get(p, 1.0) for p in ranked])
        positions = {p: {doc: rank for rank, doc in enumerate(r, start=1)} for p, r in ranked.items()}
        hits = []
        for doc, score in fused[:top_k]:
            ranks = {p: pos[doc] for p, pos in positions.items() if doc in pos}
            hits.append(Hit(self.snippets[doc], score, ranks))
        return hits

    def search(self, query: str, top_k: int = 10, parts: Sequence[str] | None = None, depth: int = 100) -> list[Hit]:
        """The top_k snippets for a natural-language or code query, fused over `parts` (default: all)."""
        if not query.strip():
            raise DataError("the query is empty")
        return self.fuse(self.rankings(query, parts, max(depth, top_k)), top_k)

    def locate(self, file: str, line: int) -> int:
        """The id of the smallest snippet of `file` (relative or absolute path) covering `line`."""
        path = Path(file)
        if path.is_absolute() or path.exists():
            try:
                file = path.resolve().relative_to(self.root.resolve()).as_posix()
            except ValueError:
                raise DataError(f"{file} is not inside the indexed tree {self.root}") from None
        candidates = [(s.end_line - s.start_line, i) for i, s in enumerate(self.snippets)
                      if s.path == file and s.start_line <= line <= s.end_line]
        if not candidates:
            if file not in self.files:
                raise DataError(f"{file} is not in the index of {self.root} (re-index after adding it)")
            raise DataError(f"no snippet of {file} covers line {line}")
        return min(candidates)[1]

    def similar(self, file: str, line: int, top_k: int = 10, parts: Sequence[str] | None = None,
                depth: int = 100) -> tuple[Snippet, list[Hit]]:
        """Snippets like the one at FILE:LINE: its stored vectors and its BM25 terms as the query."""
        source_id = self.locate(file, line)
        source = self.snippets[source_id]
        rankings = {}
        for part in self._check_parts(parts):
            if part == "bm25":
                rankings[part] = self.bm25.rank(source.text, depth + 1)
            else:
                rankings[part] = self.dense[part].rank(self.vectors[part][source_id], depth + 1)
        overlapping = {i for i, s in enumerate(self.snippets) if s.path == source.path
                       and s.start_line <= source.end_line and source.start_line <= s.end_line}
        return source, self.fuse(rankings, top_k, exclude=overlapping)

    # ---- persistence ----
    def save(self, directory: str | Path, crash_hook=None) -> Path:
        """Write a new generation under `directory` and switch CURRENT to it atomically.

        Args:
            crash_hook: called between writing the files and switching CURRENT (tests simulate a crash here).
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        generation = _next_generation(directory)
        with atomic_folder(directory / generation) as tmp:
            self._write(tmp)
            fault_point("index.write")
        if crash_hook is not None:
            crash_hook()
        atomic_write(directory / CURRENT, generation + "\n")
        for old in directory.glob("gen-*"):
            if old.name != generation:
                shutil.rmtree(old, ignore_errors=True)
        self.path = directory / generation
        return directory

    def _write(self, folder: Path) -> None:
        from safetensors.numpy import save_file

        manifest = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "latentspace_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "root": str(self.root.resolve()),
            "config": self.config.to_dict(),
            "files": self.files,
            "n_snippets": len(self.snippets),
            "dense": {name: int(v.shape[1]) for name, v in self.vectors.items()},
            "stats": self.stats,
        }
        with open(folder / "snippets.jsonl", "w", encoding="utf-8") as handle:
            for snippet in self.snippets:
                handle.write(json.dumps(snippet.to_dict(), ensure_ascii=False) + "\n")
        save_file({name: v.astype(np.float16) for name, v in self.vectors.items()} or
                  {"_empty": np.zeros(1, np.float16)}, str(folder / "vectors.safetensors"))
        self.bm25.save(folder / "bm25")
        if "ltt" in self.vectors:
            self.encoder("ltt").save(folder / "ltt_encoder")
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")  # last: marks the folder complete

    @classmethod
    def load(cls, directory: str | Path) -> CodeIndex:
        """Read the current generation of an index folder; any defect raises IndexFormatError naming it."""
        directory = Path(directory)
        folder = current_generation(directory)
        manifest = read_manifest(folder)
        try:
            config = IndexConfig.from_dict(manifest["config"])
            snippets = [Snippet(**record) for _, record in read_jsonl(folder / "snippets.jsonl")]
            from safetensors.numpy import load_file

            stored = load_file(str(folder / "vectors.safetensors"))
            vectors = {name: stored[name].astype(np.float32) for name in manifest["dense"]}
            bm25 = BM25Part.load(folder / "bm25")
        except (OSError, ValueError, KeyError, TypeError, SafetensorError, DataError) as err:
            raise IndexFormatError(f"the index at {directory} is corrupt ({type(err).__name__}: {err}); "
                                   f"rebuild it with `latentspace codesearch index DIR --rebuild`") from None
        if len(snippets) != manifest["n_snippets"] or any(len(v) != len(snippets) for v in vectors.values()):
            raise IndexFormatError(f"the index at {directory} is corrupt: {manifest['n_snippets']} snippets in the "
                                   f"manifest, {len(snippets)} stored, vectors of "
                                   f"{ {n: len(v) for n, v in vectors.items()} } rows; rebuild it with --rebuild")
        if bm25.retriever.scores["num_docs"] != len(snippets):
            raise IndexFormatError(f"the index at {directory} is corrupt: BM25 covers "
                                   f"{bm25.retriever.scores['num_docs']} snippets, not {len(snippets)}")
        index = cls(Path(manifest["root"]), config, snippets, manifest["files"], vectors, bm25=bm25,
                    stats=manifest.get("stats", {}))
        index.path = folder
        if "ltt" in vectors:
            index.encoder("ltt")  # fail now, not at the first query, if the encoder is unreadable
        return index


def _sentence_model_name(name: str) -> str:
    return "all-MiniLM-L6-v2" if name == "minilm" else name


def _next_generation(directory: Path) -> str:
    numbers = [int(p.name[4:]) for p in directory.glob("gen-*") if p.name[4:].isdigit()]
    return f"gen-{max(numbers, default=0) + 1:06d}"


def is_index(directory: str | Path) -> bool:
    return (Path(directory) / CURRENT).is_file()


def current_generation(directory: Path) -> Path:
    if not directory.exists():
        raise IndexFormatError(f"no index at {directory}: build one with `latentspace codesearch index DIR`")
    pointer = directory / CURRENT
    if not pointer.is_file():
        raise IndexFormatError(f"{directory} is not a codesearch index ({CURRENT} is missing); build one with "
                               f"`latentspace codesearch index DIR --output {directory}`")
    try:
        name = pointer.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        raise IndexFormatError(f"cannot read {pointer} ({err})") from None
    folder = directory / name
    if not name.startswith("gen-") or not (folder / MANIFEST).is_file():
        raise IndexFormatError(f"the index at {directory} is corrupt: {CURRENT} names {name!r}, which is not a "
                               f"complete generation; rebuild it with --rebuild")
    return folder


def read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise IndexFormatError(f"{path} is unreadable or not JSON ({err}); rebuild the index with --rebuild") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise IndexFormatError(f"{path} is not a {FORMAT_NAME} manifest")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        newer = isinstance(version, int) and version > FORMAT_VERSION
        raise IndexFormatError(
            f"the index at {folder.parent} has format version {version}, but this latentspace ({__version__}) "
            f"reads version {FORMAT_VERSION}; " + ("upgrade latentspace" if newer else "rebuild it with --rebuild"))
    return manifest


# ---- building ---------------------------------------------------------------------------------------------------


def corpus_pairs(snippets: Sequence[Snippet], min_pairs: int = 16) -> list[tuple[str, str]]:
    """Self-supervised (query, code) pairs: (first docstring sentence, code without the docstring).

    When fewer than `min_pairs` snippets are documented, (split symbol name, code) pairs are added.
    """
    from .tokens import split_identifier

    pairs = []
    for s in snippets:
        if s.doc and s.code and s.kind in ("function", "method", "class"):
            sentence = first_sentence(s.doc)
            if len(sentence.split()) >= 2:
                pairs.append((sentence, s.code))
    if len(pairs) < min_pairs:
        for s in snippets:
            if s.symbol and s.kind in ("function", "method", "class"):
                words = split_identifier(s.symbol.rsplit(".", 1)[-1])
                if words:
                    pairs.append((" ".join(words), s.text))
    return pairs


def _encoder_run(work_dir: Path | None, pairs, vocab_texts, encoder_config):
    """The run folder where the LTT encoder of an index build checkpoints: one per (pairs, texts, config)."""
    if work_dir is None:
        return None
    import hashlib

    from ..core.runs import Run

    digest = hashlib.sha256(json.dumps([list(pairs), list(vocab_texts), encoder_config.to_dict()],
                                       sort_keys=True).encode()).hexdigest()[:16]
    return Run("codesearch", path=Path(work_dir) / f"ltt-encoder-{digest}")


def build_index(root: str | Path, config: IndexConfig | None = None, previous: CodeIndex | None = None,
                retrain: bool = False, quiet: bool = True, skipped: list[SkippedFile] | None = None,
                encoder_config=None, loaded_encoders: dict | None = None, work_dir: Path | None = None) -> CodeIndex:
    """Index a tree; with `previous`, only files whose content hash changed are re-extracted and re-embedded.

    Args:
        root: the tree (or one file).
        config: how to index (default IndexConfig()).
        previous: an index of the same tree to update incrementally.
        retrain: train the LTT encoder again even if `previous` holds one.
        skipped: receives the files left out and why.
        encoder_config: a CodeEncoderConfig to train the LTT encoder with instead of `config.ltt`.
        loaded_encoders: encoders already in memory, by name (a trained CodeEncoder under "ltt" is used as is,
            not trained again).
        work_dir: where the LTT encoder's training checkpoints periodically (a run folder named by a hash of
            its pairs and config), so a build killed during training resumes there; None: no checkpoints.

    Returns:
        The index; `index.stats` holds counts and the seconds of each stage.
    """
    config = config or IndexConfig()
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root} does not exist")
    skipped = skipped if skipped is not None else []
    base = root if root.is_dir() else root.parent
    timings: dict[str, float] = {}
    start = time.perf_counter()
    old_by_file: dict[str, list[int]] = {}
    if previous is not None:
        for i, s in enumerate(previous.snippets):
            old_by_file.setdefault(s.path, []).append(i)
    snippets: list[Snippet] = []
    files: dict[str, str] = {}
    reused_rows: list[tuple[int, int]] = []  # (new id, previous id)
    n_changed = 0
    for path, language in track(list(walk_files(root, config.max_file_bytes, skipped)), description="extracting",
                                quiet=quiet, unit="file"):
        read = read_source(path, config.max_file_bytes, skipped)
        if read is None:
            continue
        text, content_hash = read
        rel = path.relative_to(base).as_posix()
        files[rel] = content_hash
        if previous is not None and previous.files.get(rel) == content_hash:
            for old_id in old_by_file.get(rel, []):
                reused_rows.append((len(snippets), old_id))
                snippets.append(previous.snippets[old_id])
            continue
        n_changed += 1
        snippets.extend(extract_snippets(rel, text, language, config.snippet_lines, config.overlap,
                                         config.max_snippet_lines))
    timings["extract_s"] = time.perf_counter() - start
    if not files:
        raise DataError(f"no source files to index under {root} (empty, all ignored, binary or unreadable; "
                        f"{len(skipped)} skipped)")
    if not snippets:
        raise DataError(f"the files under {root} hold no code to index ({len(files)} files, all empty)")

    bm25, encoders, vectors, n_pairs = _build_parts(snippets, config, timings, previous, reused_rows, retrain,
                                                    quiet, encoder_config, loaded_encoders, work_dir)
    stats = {"n_files": len(files), "n_snippets": len(snippets), "n_files_changed": n_changed,
             "n_files_removed": len(set(previous.files) - set(files)) if previous is not None else 0,
             "n_snippets_reused": len(reused_rows), "n_train_pairs": n_pairs, "n_skipped": len(skipped),
             **{k: round(v, 3) for k, v in timings.items()}}
    index = CodeIndex(base, config, snippets, files, vectors, encoders=encoders, bm25=bm25, stats=stats)
    if previous is not None and "ltt" in encoders and encoders["ltt"] is previous.encoders.get("ltt"):
        index.path = previous.path
    return index


def index_snippets(snippets: Sequence[Snippet], config: IndexConfig | None = None, root: str | Path = ".",
                   quiet: bool = True, encoder_config=None, loaded_encoders: dict | None = None,
                   work_dir: Path | None = None) -> CodeIndex:
    """Index snippets given as they are (no tree walked): the BM25 part and a dense part per encoder of `config`,
    the LTT encoder trained on the snippets' own docstrings as `build_index` trains it. Used for corpora that
    come as separate functions (e.g. CoSQA's code base); `root` is only recorded."""
    config = config or IndexConfig()
    snippets = list(snippets)
    if not snippets:
        raise DataError("no snippets to index")
    timings: dict[str, float] = {}
    bm25, encoders, vectors, n_pairs = _build_parts(snippets, config, timings, quiet=quiet,
                                                    encoder_config=encoder_config, loaded_encoders=loaded_encoders,
                                                    work_dir=work_dir)
    stats = {"n_files": 0, "n_snippets": len(snippets), "n_train_pairs": n_pairs,
             **{k: round(v, 3) for k, v in timings.items()}}
    return CodeIndex(Path(root), config, snippets, {}, vectors, encoders=encoders, bm25=bm25, stats=stats)


def _build_parts(snippets: list[Snippet], config: IndexConfig, timings: dict[str, float],
                 previous: CodeIndex | None = None, reused_rows=(), retrain: bool = False, quiet: bool = True,
                 encoder_config=None, loaded_encoders: dict | None = None, work_dir: Path | None = None):
    """(bm25, encoders, vectors, n_train_pairs) of `snippets`: rows of `previous` are reused per `reused_rows`."""
    t = time.perf_counter()
    bm25 = BM25Part.build([s.text for s in snippets])
    timings["bm25_s"] = time.perf_counter() - t

    encoders, vectors = {}, {}
    n_pairs = 0
    loaded_encoders = loaded_encoders or {}
    for name in config.encoder_names():
        reuse = previous is not None and name in previous.vectors
        if name in loaded_encoders:
            encoders[name] = loaded_encoders[name]
            reuse = reuse and (name != "ltt" or previous.encoders.get(name) is loaded_encoders[name])
        elif name == "ltt":
            if reuse and not retrain:
                encoders[name] = previous.encoder("ltt")
            else:
                from .encoder import train_code_encoder

                t = time.perf_counter()
                pairs = corpus_pairs(snippets, config.min_train_pairs)
                n_pairs = len(pairs)
                vocab_texts = [s.text for s in snippets[:50000]] + [q for q, _ in pairs]
                encoder_run = _encoder_run(work_dir, pairs, vocab_texts, encoder_config or config.ltt)
                encoders[name] = train_code_encoder(pairs, encoder_config or config.ltt, quiet=quiet,
                                                    vocab_texts=vocab_texts, run=encoder_run,
                                                    resume=encoder_run is not None)
                timings["ltt_train_s"] = time.perf_counter() - t
                reuse = False
        else:
            encoders[name] = previous.encoder(name) if reuse else None
            if encoders[name] is None:
                from .encoder import SentenceEncoder

                encoders[name] = SentenceEncoder(_sentence_model_name(name))
        t = time.perf_counter()
        vectors[name] = _embed(encoders[name], snippets, previous.vectors[name] if reuse else None, reused_rows)
        timings[f"embed_{name}_s"] = time.perf_counter() - t
    return bm25, encoders, vectors, n_pairs


def _embed(encoder, snippets: list[Snippet], previous: np.ndarray | None, reused_rows) -> np.ndarray:
    """Vectors (N, D) of all snippets, copying the rows of unchanged snippets from `previous`."""
    todo = list(range(len(snippets)))
    out = None
    if previous is not None:
        out = np.zeros((len(snippets), previous.shape[1]), dtype=np.float32)
        done = set()
        for new_id, old_id in reused_rows:
            out[new_id] = previous[old_id]
            done.add(new_id)
        todo = [i for i in todo if i not in done]
    if todo:
        fresh = encoder.encode_code([snippets[i].text for i in todo])
        if out is None:
            out = np.zeros((len(snippets), fresh.shape[1]), dtype=np.float32)
        out[todo] = fresh
    return out
