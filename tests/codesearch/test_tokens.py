"""Identifier splitting, BM25 terms and the encoder vocabulary."""

from latentspace.codesearch.tokens import Vocabulary, bm25_tokens, code_words, split_identifier, stem


def test_split_identifier_handles_camel_snake_and_acronyms():
    assert split_identifier("parseHTTPHeader_v2") == ["parse", "http", "header", "v", "2"]
    assert split_identifier("XMLParser") == ["xml", "parser"]
    assert split_identifier("__init__") == ["init"]


def test_stem_is_symmetric_on_inflections():
    assert stem("parses") == stem("parsed") == stem("parsing") == stem("parse")
    assert stem("entries") == "entry"
    assert stem("map") == "map"


def test_code_and_query_meet_on_words():
    assert set(code_words("Parses headers")) <= set(code_words("def parse_header(raw): ..."))
    tokens = bm25_tokens("def parse_header(self): return the value")
    assert "parse_header" in tokens and "pars" in tokens and "the" not in tokens


def test_vocabulary_ids_and_hash_buckets_round_trip():
    vocab = Vocabulary.build(["read file read file", "write file"], max_words=10, min_count=2, hash_buckets=8)
    assert vocab.words == ["file", "read"]
    ids = vocab.encode("read unknown_word", max_len=8)
    assert ids[0] == Vocabulary.CLS and ids[1] == vocab.index["read"]
    assert 2 + len(vocab.words) <= ids[2] < len(vocab)
    assert vocab.encode("read unknown_word", 8) == ids  # hashing is stable
    assert len(vocab.encode("a b c d e f g h i j", max_len=4)) == 4
    again = Vocabulary.from_json(vocab.to_json())
    assert again.words == vocab.words and len(again) == len(vocab)
