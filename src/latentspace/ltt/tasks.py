"""The seed's character task (ltt.md "Example 1"): `?X>` then 64 characters holding one 8-letter block of X.

Background characters are `_`, each replaced by the noise character `!` with probability 1/16; the block of
the prompt's letter sits at a uniformly random offset and is never noised. A sample is valid when the
prompt is `?X>` with a letter X, the body has the right length, holds only `_`, `!` and X, and the letters
form exactly one contiguous block of `block_len` copies of X.
"""

from __future__ import annotations

import re
import string

import torch

from ..core.errors import DataError

LETTERS = string.ascii_uppercase
VOCAB = ["<s>", "<pad>", "_", "!", "?", ">", *LETTERS]  # 32 symbols; <s> is the decoder's START
START, PAD, BLANK, NOISE, QUESTION, ARROW = range(6)
FIRST_LETTER = 6
STOI = {ch: i for i, ch in enumerate(VOCAB)}
PROMPT_LEN = 3


def encode(text: str) -> torch.Tensor:
    """A task string -> token ids (T,); unknown characters are a DataError naming them."""
    unknown = sorted({ch for ch in text if ch not in STOI})
    if unknown:
        raise DataError(f"characters {unknown} are not in the char task's vocabulary ({''.join(VOCAB[2:])})")
    return torch.tensor([STOI[ch] for ch in text], dtype=torch.long)


def decode(tokens: torch.Tensor) -> str:
    """Token ids (T,) -> string; START and PAD show as `^` and `.`."""
    shown = {START: "^", PAD: "."}
    return "".join(shown.get(int(i), VOCAB[int(i)]) for i in tokens)


def generate(n: int, seq_len: int = 64, block_len: int = 8, noise_p: float = 1 / 16,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw n task sequences, batched: tokens (n, 3 + seq_len)."""
    if block_len > seq_len:
        raise DataError(f"block_len={block_len} does not fit in seq_len={seq_len}")
    letters = torch.randint(0, len(LETTERS), (n,), generator=generator) + FIRST_LETTER  # (n,)
    starts = torch.randint(0, seq_len - block_len + 1, (n,), generator=generator)  # (n,)
    noise = torch.rand(n, seq_len, generator=generator) < noise_p  # (n, L)
    body = torch.where(noise, NOISE, BLANK)  # (n, L)
    offsets = torch.arange(seq_len)[None, :] - starts[:, None]  # (n, L)
    in_block = (offsets >= 0) & (offsets < block_len)
    body = torch.where(in_block, letters[:, None], body)
    prompt = torch.stack([torch.full_like(letters, QUESTION), letters, torch.full_like(letters, ARROW)], 1)
    return torch.cat([prompt, body], dim=1)


_PATTERN = re.compile(r"\?([A-Z])>(.*)", re.DOTALL)


def is_valid(text: str, seq_len: int = 64, block_len: int = 8) -> bool:
    """Reference validity of one string: prompt `?X>`, body of seq_len chars, one block of block_len X's."""
    match = _PATTERN.fullmatch(text)
    if match is None:
        return False
    letter, body = match.groups()
    if len(body) != seq_len or any(ch not in ("_", "!", letter) for ch in body):
        return False
    return re.fullmatch(rf"[_!]*{letter}{{{block_len}}}[_!]*", body) is not None


def valid_mask(tokens: torch.Tensor, seq_len: int = 64, block_len: int = 8) -> torch.Tensor:
    """Batched validity, agreeing with `is_valid`: tokens (B, T) -> (B,) bool."""
    if tokens.dim() != 2:
        raise DataError(f"tokens must be (B, T), got shape {tuple(tokens.shape)}")
    B, T = tokens.shape
    if T != PROMPT_LEN + seq_len:
        return torch.zeros(B, dtype=torch.bool)
    letter = tokens[:, 1]  # (B,)
    prompt_ok = (tokens[:, 0] == QUESTION) & (tokens[:, 2] == ARROW) & (letter >= FIRST_LETTER)
    body = tokens[:, PROMPT_LEN:]  # (B, L)
    is_letter = body == letter[:, None]  # (B, L)
    chars_ok = (is_letter | (body == BLANK) | (body == NOISE)).all(1)
    count_ok = is_letter.sum(1) == block_len
    # contiguous: exactly one rising edge of is_letter
    padded = torch.cat([torch.zeros(B, 1, dtype=torch.bool), is_letter], 1)  # (B, L + 1)
    one_run = (padded[:, 1:] & ~padded[:, :-1]).sum(1) == 1
    return prompt_ok & chars_ok & count_ok & one_run


def block_start(tokens: torch.Tensor) -> torch.Tensor:
    """Body index of the first character equal to the prompt's letter, -1 where there is none: (B, T) -> (B,)."""
    is_letter = tokens[:, PROMPT_LEN:] == tokens[:, 1:2]  # (B, L)
    first = is_letter.int().argmax(1)
    return torch.where(is_letter.any(1), first, torch.full_like(first, -1))
