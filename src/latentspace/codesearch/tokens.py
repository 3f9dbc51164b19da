"""Identifier-aware tokenization shared by BM25 and the LTT code encoder, and the encoder's vocabulary.

`parseHTTPHeader_v2` becomes `parse http header v2`: code and natural-language queries meet on the same
words. A light suffix stripper (`parses`, `parsed`, `parsing` -> `pars`) applies to both sides alike.
"""

from __future__ import annotations

import functools
import json
import re
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|\d+")
SUBWORD = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")
STOPWORDS = frozenset(
    "a an the of to in on for and or is are be by with as at it its this that from if not no into than then "
    "else when which who whom whose will can may should would do does did so such".split()
)


def stem(word: str) -> str:
    """A crude, symmetric suffix stripper (no dictionary): enough to match `parses` with `parse`."""
    if len(word) <= 4:
        return word
    for suffix in ("ing", "ies", "ed", "es", "s", "e"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)] + ("y" if suffix == "ies" else "")
    return word


def split_identifier(identifier: str) -> list[str]:
    """`parseHTTPHeader_v2` -> ['parse', 'http', 'header', 'v', '2'] (lower case)."""
    return [part.lower() for part in SUBWORD.findall(identifier)]


# Identifiers repeat all over a code base, so their split and stemmed forms are cached: tokenizing for BM25
# and for the LTT encoder dominates indexing time otherwise.
@functools.lru_cache(maxsize=1 << 18)
def _identifier_words(identifier: str) -> tuple[str, ...]:
    return tuple(stem(part) for part in split_identifier(identifier))


@functools.lru_cache(maxsize=1 << 18)
def _identifier_bm25(identifier: str) -> tuple[str, ...]:
    parts = split_identifier(identifier)
    out = [stem(part) for part in parts if part not in STOPWORDS]
    if len(parts) > 1:
        out.append(identifier.lower())
    return tuple(out)


def code_words(text: str, limit: int | None = None) -> list[str]:
    """The stemmed subwords of every identifier and word in `text`, in order (the LTT encoder's input);
    with `limit`, only the first `limit` (the text is not scanned further)."""
    out: list[str] = []
    for match in IDENTIFIER.finditer(text):
        out.extend(_identifier_words(match.group()))
        if limit is not None and len(out) >= limit:
            return out[:limit]
    return out


def bm25_tokens(text: str) -> list[str]:
    """BM25 terms: stemmed subwords without stopwords, plus each compound identifier whole (`parse_header`)."""
    out: list[str] = []
    for identifier in IDENTIFIER.findall(text):
        out.extend(_identifier_bm25(identifier))
    return out


class Vocabulary:
    """Word -> id for the LTT encoder: the most frequent words, then hash buckets for every other word.

    Ids: 0 = <pad>, 1 = <cls>, 2 .. len(words)+1 = words, then `hash_buckets` ids for unseen words (crc32,
    stable across runs), so no word is ever unknown.
    """

    PAD, CLS = 0, 1

    def __init__(self, words: Sequence[str], hash_buckets: int = 2048):
        self.words = list(words)
        self.hash_buckets = hash_buckets
        self.index = {word: i + 2 for i, word in enumerate(self.words)}

    @classmethod
    def build(cls, texts: Iterable[str], max_words: int = 16000, min_count: int = 2,
              hash_buckets: int = 2048) -> Vocabulary:
        counts = Counter()
        for text in texts:
            counts.update(code_words(text))
        words = [w for w, c in counts.most_common(max_words) if c >= min_count]
        return cls(words, hash_buckets)

    def __len__(self) -> int:
        return 2 + len(self.words) + self.hash_buckets

    def word_id(self, word: str) -> int:
        found = self.index.get(word)
        if found is not None:
            return found
        return 2 + len(self.words) + zlib.crc32(word.encode()) % self.hash_buckets

    def encode(self, text: str, max_len: int) -> list[int]:
        """[<cls>, word ids...] cut to max_len."""
        return [self.CLS] + [self.word_id(w) for w in code_words(text, max_len - 1)]

    def to_json(self) -> str:
        return json.dumps({"words": self.words, "hash_buckets": self.hash_buckets})

    @classmethod
    def from_json(cls, text: str) -> Vocabulary:
        data = json.loads(text)
        return cls(data["words"], int(data["hash_buckets"]))
