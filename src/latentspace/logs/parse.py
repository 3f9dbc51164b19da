"""Log parsing: safe decoding of raw lines, a log tokenizer that masks variables, and Drain3 templates.

Raw lines arrive as bytes of unknown encoding and quality. `decode_line` turns one into text or says why
it cannot (binary junk, empty); over-long lines are cut at `MAX_LINE_CHARS`. `LogTokenizer` masks the
variable parts of a message (IPs, paths, hex, numbers) and maps words to hashed buckets, so a new system
needs no vocabulary growth. `LogTemplates` wraps Drain3's `Drain` and stores its clusters as JSON (never
drain3's jsonpickle persistence).
"""

from __future__ import annotations

import itertools
import json
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

from drain3.drain import Drain, LogCluster

from ..core.data import atomic_write, looks_binary
from ..core.errors import DataError

MAX_LINE_CHARS = 4096  # lines are cut here before parsing; a 1 MB line costs no more than this

# ---- decoding -----------------------------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")


@dataclass
class DecodedLine:
    """One decoded line: `text` (None when skipped), `issue` ("" | "empty" | "binary" | "truncated" |
    "latin-1")."""

    text: str | None
    issue: str = ""


def decode_line(raw: bytes | str, max_chars: int = MAX_LINE_CHARS) -> DecodedLine:
    """Decode one raw line: UTF-8, else Latin-1 (mixed encodings); binary junk and empty lines are skipped."""
    issue = ""
    if isinstance(raw, bytes):
        if b"\x00" in raw:
            return DecodedLine(None, "binary")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
            issue = "latin-1"
    else:
        text = raw
    text = text.rstrip("\r\n")
    if not text.strip():
        return DecodedLine(None, "empty")
    sample = text[:512]
    if "\x00" in sample or len(_CONTROL.findall(sample)) > 0.1 * len(sample):
        return DecodedLine(None, "binary")
    if issue == "latin-1":
        # Latin-1 decodes anything: accept it only if the text is mostly printable
        printable = sum(ch.isprintable() for ch in sample)
        if printable < 0.9 * len(sample):
            return DecodedLine(None, "binary")
    if len(text) > max_chars:
        text = text[:max_chars]
        issue = issue or "truncated"
    return DecodedLine(text, issue)


def read_log_file(path: str | Path) -> tuple[list[str], dict[str, int]]:
    """Read a log file's usable lines and count the skipped ones by reason.

    Raises:
        DataError when the file is missing, binary, or has no usable line.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"log file {path} does not exist")
    if looks_binary(path):
        raise DataError(f"{path} looks like a binary file, not a text log (NUL or control bytes at its start)")
    lines: list[str] = []
    issues: dict[str, int] = {}
    with open(path, "rb") as handle:
        for raw in handle:
            decoded = decode_line(raw)
            if decoded.issue:
                issues[decoded.issue] = issues.get(decoded.issue, 0) + 1
            if decoded.text is not None:
                lines.append(decoded.text)
    if not lines:
        raise DataError(f"{path} holds no usable log line (skipped: {issues or 'file is empty'})")
    return lines, issues


# ---- labels carried by the lines themselves --------------------------------------------------------------

SEVERITIES = ("DEBUG", "INFO", "WARN", "ERROR")
_LEVEL_WORDS = {
    "TRACE": "DEBUG", "DEBUG": "DEBUG", "VERBOSE": "DEBUG",
    "INFO": "INFO", "NOTICE": "INFO",
    "WARN": "WARN", "WARNING": "WARN",
    "ERROR": "ERROR", "ERR": "ERROR", "FATAL": "ERROR", "SEVERE": "ERROR", "CRITICAL": "ERROR", "CRIT": "ERROR",
}
_LETTER_LEVELS = {"V": "DEBUG", "D": "DEBUG", "I": "INFO", "W": "WARN", "E": "ERROR", "F": "ERROR"}
# the first level word (optionally in brackets, followed by a comma/colon), within the line's header
_LEVEL_RE = re.compile(
    r"(?:^|(?<=\s))\[?(" + "|".join(sorted(_LEVEL_WORDS, key=len, reverse=True)) + r")\]?[,:]?(?=\s|$)",
    re.IGNORECASE,
)
# Android/logcat: "<date> <time>  <pid>  <tid> D Tag: ..."
_LETTER_RE = re.compile(r"^(\S+\s+\S+\s+\d+\s+\d+\s+)([VDIWEF])(\s)")
_LEVEL_SEARCH_CHARS = 160


def split_level(line: str) -> tuple[str | None, str]:
    """Find the line's level token near its start and remove it.

    Returns:
        (severity in SEVERITIES or None when the line carries none, the line without the token).
    """
    match = _LETTER_RE.match(line)
    if match:
        return _LETTER_LEVELS[match.group(2)], line[: match.start(2)] + line[match.end(2) + 1:]
    match = _LEVEL_RE.search(line, 0, min(len(line), _LEVEL_SEARCH_CHARS))
    if match:
        rest = (line[: match.start()] + line[match.end():]).replace("  ", " ")
        return _LEVEL_WORDS[match.group(1).upper()], rest.strip()
    return None, line


def split_bgl_label(line: str) -> tuple[str, str]:
    """BGL's first field is "-" for a normal line and an alert category otherwise; split it off."""
    head, _, rest = line.partition(" ")
    return head, rest


def prepare(line: str, task: str) -> tuple[str | None, str]:
    """The model's input for a task and the label the line carries (None when it carries none).

    bgl_alert: label "alert"/"normal" from the first field, which is removed;
    severity: label from the level token, which is removed.
    """
    if task == "bgl_alert":
        head, rest = split_bgl_label(line)
        if head == "-":
            return "normal", rest
        if head.isupper() and head.replace("_", "").isalpha():
            return "alert", rest
        return None, line
    if task == "severity":
        return split_level(line)
    raise DataError(f"unknown task {task!r}: expected bgl_alert or severity")


# ---- tokenizer -----------------------------------------------------------------------------------------

_MASKS = (
    ("<ip>", re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b")),
    ("<path>", re.compile(r"(?:[a-z]:)?(?:[/\\][\w.\-$@]+){2,}[/\\]?")),
    ("<hex>", re.compile(r"\b0x[0-9a-f]+\b|\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{6,}\b")),
)
_TOKEN_RE = re.compile(r"<[a-z]+>|[a-z0-9_]+")
_DIGIT_RE = re.compile(r"\d")
_NUM_WORD_RE = re.compile(r"[a-z0-9_]*\d[a-z0-9_]*")
NUM = "<num>"
MASK_TOKENS = (*(name for name, _ in _MASKS), NUM)


def mask_variables(text: str) -> str:
    """Lower-case and replace IPs, paths and hex strings by <ip>, <path>, <hex>, words with digits by <num>."""
    text = text.lower()
    for name, pattern in _MASKS:
        text = pattern.sub(f" {name} ", text)
    return " ".join(NUM if _DIGIT_RE.search(w) else w for w in text.split())


def log_words(text: str) -> list[str]:
    """The masked words of a line: punctuation dropped, words holding a digit -> <num>, a run of one repeated
    word kept once ("Error 12 34 done" -> ["error", "<num>", "done"]); `log_words_reference` spells it out."""
    text = _NUM_WORD_RE.sub(" <num> ", text.lower())
    return [word for word, _ in itertools.groupby(_TOKEN_RE.findall(text))]


def log_words_reference(text: str) -> list[str]:
    """Token by token version of `log_words` (the reference its tests compare with)."""
    words: list[str] = []
    for word in _TOKEN_RE.findall(text.lower()):
        if _DIGIT_RE.search(word):
            word = NUM
        if not words or words[-1] != word:
            words.append(word)
    return words


class LogTokenizer:
    """Masked words -> ids: 0 pad, 1 [CLS], 2.. mask tokens, then `hash_buckets` CRC32 word buckets.

    Args:
        hash_buckets: number of hashed word ids (collisions are rare at a few thousand distinct words).
        max_len: ids per line including [CLS]; longer lines are cut.
    """

    PAD, CLS = 0, 1

    def __init__(self, hash_buckets: int = 4096, max_len: int = 40):
        self.hash_buckets = hash_buckets
        self.max_len = max_len
        self._special = {name: 2 + i for i, name in enumerate(MASK_TOKENS)}
        self.offset = 2 + len(MASK_TOKENS)
        self._word_ids: dict[str, int] = {}
        self._chunk_cache: dict[str, tuple[tuple[str, ...], tuple[int, ...]]] = {}  # chunk -> (words, ids)
        self.cache_size = 200_000

    @property
    def vocab_size(self) -> int:
        return self.offset + self.hash_buckets

    def words(self, text: str) -> list[str]:
        """The masked word tokens of a line (see `log_words`), built from cached whitespace chunks.

        No mask pattern matches across whitespace and every pattern's word boundary sees whitespace as it
        sees a string's edge, so masking each whitespace-separated chunk on its own gives the same words as
        masking the whole line (`words_reference`); the chunks of a log repeat, so most are cache hits.
        """
        out: list[str] = []
        for chunk in text.split():
            out += self._chunk(chunk)[0]
        return [word for word, _ in itertools.groupby(out)]

    def words_reference(self, text: str) -> list[str]:
        """Masks applied to the whole line at once: the reference of `words`."""
        text = text.lower()
        for name, pattern in _MASKS:
            text = pattern.sub(f" {name} ", text)
        return log_words(text)

    def _chunk(self, chunk: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
        """Masked words of one whitespace-free chunk and their ids, cached (cleared at `cache_size` chunks)."""
        entry = self._chunk_cache.get(chunk)
        if entry is None:
            words = tuple(self.words_reference(chunk))
            entry = words, tuple(self.word_id(w) for w in words)
            if len(self._chunk_cache) >= self.cache_size:
                self._chunk_cache.clear()
            self._chunk_cache[chunk] = entry
        return entry

    def clear_cache(self) -> None:
        """Forget cached chunks and word ids (they depend on the text only, never on model weights)."""
        self._chunk_cache.clear()
        self._word_ids.clear()

    def word_id(self, word: str) -> int:
        wid = self._word_ids.get(word)
        if wid is None:
            wid = self._special.get(word)
            if wid is None:
                wid = self.offset + zlib.crc32(word.encode("utf-8")) % self.hash_buckets
            if len(self._word_ids) < 200_000:
                self._word_ids[word] = wid
        return wid

    def encode(self, text: str) -> tuple[int, ...]:
        """One line -> ids ([CLS] first, at most max_len, unpadded): the ids of `words(text)[: max_len - 1]`."""
        cache, max_len = self._chunk_cache, self.max_len
        ids, last = [self.CLS], None
        for chunk in text.split():
            entry = cache.get(chunk) or self._chunk(chunk)
            words = entry[0]
            if not words:
                continue
            # a run of one repeated word is kept once, also across chunks
            ids += entry[1][1:] if words[0] == last else entry[1]
            last = words[-1]
            if len(ids) >= max_len:
                return tuple(ids[:max_len])
        return tuple(ids)

    def pad(self, sequences: list[tuple[int, ...]]):
        """Pad id tuples into tokens (B, T) LongTensor and mask (B, T) BoolTensor (True = real token)."""
        import torch

        length = max(len(s) for s in sequences)
        tokens = torch.zeros(len(sequences), length, dtype=torch.long)
        for i, seq in enumerate(sequences):
            tokens[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        return tokens, tokens != self.PAD


# ---- Drain3 templates with JSON state --------------------------------------------------------------------


class LogTemplates:
    """Drain3 template mining (`Drain`) whose state is stored as JSON clusters, not jsonpickle.

    Args:
        sim_th, depth: Drain's similarity threshold and prefix-tree depth.
    """

    def __init__(self, sim_th: float = 0.6, depth: int = 4):
        self.sim_th = sim_th
        self.depth = depth
        self.drain = Drain(sim_th=sim_th, depth=depth)

    def add(self, text: str) -> tuple[int, str]:
        """Learn from one message; returns (template id, template)."""
        cluster, _ = self.drain.add_log_message(mask_variables(text).strip())
        return cluster.cluster_id, cluster.get_template()

    def match(self, text: str) -> tuple[int, str]:
        """Match without learning; (-1, "") when no template fits."""
        cluster = self.drain.match(mask_variables(text).strip())
        if cluster is None:
            return -1, ""
        return cluster.cluster_id, cluster.get_template()

    def __len__(self) -> int:
        return len(self.drain.id_to_cluster)

    def to_dict(self) -> dict:
        clusters = [
            {"id": c.cluster_id, "template": list(c.log_template_tokens), "size": c.size}
            for c in self.drain.id_to_cluster.values()
        ]
        return {"sim_th": self.sim_th, "depth": self.depth, "counter": self.drain.clusters_counter,
                "clusters": clusters}

    @classmethod
    def from_dict(cls, data: dict) -> LogTemplates:
        try:
            out = cls(sim_th=float(data["sim_th"]), depth=int(data["depth"]))
            for item in sorted(data["clusters"], key=lambda c: c["id"]):
                cluster = LogCluster(item["template"], int(item["id"]))
                cluster.size = int(item["size"])
                out.drain.id_to_cluster[cluster.cluster_id] = cluster
                out.drain.add_seq_to_prefix_tree(out.drain.root_node, cluster)
            out.drain.clusters_counter = int(data["counter"])
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(f"template state is malformed ({err})") from None
        return out

    def save(self, path: str | Path) -> None:
        atomic_write(path, json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | Path) -> LogTemplates:
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as err:
            raise DataError(f"{path} is not a readable template file ({err})") from None

