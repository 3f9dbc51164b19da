"""The tokenizer saved inside every CRSM checkpoint (tokenizer.json), so training and generation share one vocabulary.

`byte`: the core's byte-level tokenizer (256 bytes + <pad> <bos> <eos> <unk>; every string round-trips).
`bpe`: a byte-level BPE trained here with the `tokenizers` library. Either way the model's vocab_size is
the tokenizer's length and a checkpoint whose tokenizer disagrees with its config is refused on load.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..core.backbones import SPECIAL_TOKENS, byte_tokenizer
from ..core.errors import CheckpointError, ConfigError


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 512):
    """A byte-level BPE tokenizer trained on `texts` (every byte stays reachable, so no <unk>)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 300:
        raise ConfigError(f"bpe_vocab_size={vocab_size}: needs >= 300 (256 bytes + specials + merges)")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS.values()),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **SPECIAL_TOKENS)


def make_tokenizer(kind: str, texts: Iterable[str] = (), vocab_size: int = 512):
    if kind == "byte":
        return byte_tokenizer()
    if kind == "bpe":
        return train_bpe_tokenizer(texts, vocab_size)
    raise ConfigError(f"unknown tokenizer {kind!r}: expected byte or bpe")


def tokenizer_to_json(tokenizer) -> str:
    return tokenizer.backend_tokenizer.to_str()


def tokenizer_from_json(text: str, expected_size: int | None = None):
    """Rebuild the tokenizer of a checkpoint; refuse one whose size differs from the model's vocabulary."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    try:
        backend = Tokenizer.from_str(text)
    except Exception as err:  # the tokenizers library raises plain Exceptions on malformed JSON
        raise CheckpointError(f"tokenizer.json is not a valid tokenizer ({err})") from None
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **SPECIAL_TOKENS)
    if expected_size is not None and len(tokenizer) != expected_size:
        raise CheckpointError(f"tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {expected_size}")
    return tokenizer
