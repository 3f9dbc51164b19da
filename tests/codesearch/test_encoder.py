"""The LTT code encoder: shapes, padding invariance, loss vs reference, learning, checkpoint round trip."""

import random

import numpy as np
import pytest
import torch

from latentspace.codesearch.config import CodeEncoderConfig, EvalConfig, IndexConfig
from latentspace.codesearch.encoder import (
    CodeEncoder,
    contrastive_loss,
    contrastive_loss_reference,
    train_code_encoder,
)
from latentspace.codesearch.index import CodeIndex, build_index
from latentspace.codesearch.tokens import Vocabulary
from latentspace.core.errors import CheckpointError, DataError

from ..conftest import save_as_before_encoder_config

TINY = CodeEncoderConfig.preset("tiny")


def _encoder():
    vocab = Vocabulary.build(["def read_file(path): return open(path).read()"] * 2, hash_buckets=16)
    return CodeEncoder(TINY, vocab)


def test_shapes_and_unit_norm():
    model = _encoder()
    tokens, mask = model.tokenize(["def read_file(path): pass", "x"], "code")
    assert tokens.shape == mask.shape and tokens.shape[0] == 2
    out = model(tokens, mask, "code")
    assert out.shape == (2, TINY.embed_dim)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(2))
    assert model.encode(["a", "read file", "b c d"], "query").shape == (3, TINY.embed_dim)


def test_padding_does_not_change_the_embedding():
    model = _encoder().eval()
    tokens, mask = model.tokenize(["read the file path"], "code")  # (1, T)
    padded = torch.cat([tokens, torch.full((1, 5), 7)], dim=1)  # junk ids in the padding
    padded_mask = torch.cat([mask, torch.zeros(1, 5, dtype=torch.bool)], dim=1)
    torch.testing.assert_close(model(tokens, mask), model(padded, padded_mask), atol=1e-5, rtol=1e-5)


def test_batched_encode_matches_one_at_a_time():
    model = _encoder()
    texts = ["read file", "def f(x): return x * 2 + read_file(x)", "z"]
    batched = model.encode(texts, "code", batch_size=3)
    single = np.concatenate([model.encode([t], "code") for t in texts])
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_contrastive_loss_matches_reference_and_has_gradients():
    query = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1).requires_grad_()
    code = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    fast = contrastive_loss(query, code, 0.1)
    torch.testing.assert_close(fast, contrastive_loss_reference(query, code, 0.1))
    fast.backward()
    assert query.grad is not None and torch.isfinite(query.grad).all()


def _synthetic_pairs(n=240, seed=0):
    """Docstrings naming an action and an object; code using matching identifiers among distractor words."""
    rng = random.Random(seed)
    verbs = ["read", "write", "parse", "sort", "merge", "split", "encode", "decode", "open", "close"]
    nouns = ["file", "header", "list", "table", "socket", "image", "token", "record", "cache", "queue"]
    pairs = []
    for _ in range(n):
        verb, noun = rng.choice(verbs), rng.choice(nouns)
        filler = " ".join(rng.choice(["x", "y", "tmp", "value", "result"]) for _ in range(6))
        pairs.append((f"{verb.title()} the {noun}.", f"def {verb}_{noun}(self):\n    {filler}\n    return {noun}"))
    return pairs


def test_tiny_encoder_learns_beyond_chance():
    pairs = _synthetic_pairs()
    model = train_code_encoder(pairs, TINY.override({"train": {"steps": 40, "lr": 5e-3}}))
    test = _synthetic_pairs(60, seed=1)
    query = model.encode_query([q for q, _ in test])
    code = model.encode_code([c for _, c in test])
    same_meaning = np.array([[qa == qb for qb, _ in test] for qa, _ in test])
    top = (query @ code.T).argmax(1)
    accuracy = same_meaning[np.arange(len(test)), top].mean()
    chance = same_meaning.mean()
    assert accuracy > max(0.5, 5 * chance), (accuracy, chance)


def test_checkpoint_round_trip_and_errors(tmp_path):
    model = _encoder().eval()
    model.save(tmp_path / "enc")
    loaded = CodeEncoder.load(tmp_path / "enc")
    np.testing.assert_allclose(model.encode(["read file"]), loaded.encode(["read file"]), atol=1e-6)
    (tmp_path / "enc" / "vocab.json").unlink()
    with pytest.raises(CheckpointError, match="vocab.json"):
        CodeEncoder.load(tmp_path / "enc")
    with pytest.raises(DataError, match="at least 2"):
        train_code_encoder([("a", "b")], TINY)


def test_checkpoint_saved_before_encoder_config_loads(tmp_path):
    model = _encoder().eval()
    save_as_before_encoder_config(model, tmp_path / "enc")
    loaded = CodeEncoder.load(tmp_path / "enc")
    assert loaded.config == model.config
    np.testing.assert_allclose(model.encode(["read file"]), loaded.encode(["read file"]), atol=1e-6)


def test_index_with_the_ltt_encoder_saves_and_reloads(repo, tmp_path):
    config = IndexConfig(encoders="ltt")
    index = build_index(repo, config, encoder_config=TINY.override({"train.steps": 20}))
    assert index.parts == ["bm25", "ltt"] and index.stats["n_train_pairs"] >= 8
    index.save(tmp_path / "idx")
    loaded = CodeIndex.load(tmp_path / "idx")
    query = "fibonacci number"
    np.testing.assert_allclose(loaded.encoder("ltt").encode_query([query]),
                               index.encoder("ltt").encode_query([query]), atol=1e-6)
    assert [h.snippet.symbol for h in loaded.search(query, 5)] == [h.snippet.symbol for h in index.search(query, 5)]
    again = build_index(repo, config, previous=loaded)  # incremental: the trained encoder is kept
    assert again.encoder("ltt") is loaded.encoder("ltt") and again.stats["n_snippets_reused"] == len(index)
    np.testing.assert_array_equal(again.vectors["ltt"], loaded.vectors["ltt"])


def test_configs_saved_before_the_nested_train_load():
    """An encoder config with flat steps / lr / seed, and a run config with encoder_preset / encoder_steps."""
    old = {**{k: v for k, v in TINY.to_dict().items() if k != "train"}, "steps": 30, "lr": 1e-2, "seed": 3}
    config = CodeEncoderConfig.from_dict(old)
    assert config == TINY.override({"train": {"steps": 30, "lr": 1e-2, "seed": 3}})
    assert config.train.warmup == 3 and config.train.weight_decay == 0.01  # what training ran with
    index = IndexConfig.from_dict({"encoders": "ltt", "encoder_preset": "tiny", "encoder_steps": 25, "rrf_k": 5.0})
    assert index.ltt == TINY.override({"train.steps": 25}) and index.encoders == "ltt"
    assert IndexConfig.from_dict(IndexConfig().to_dict()) == IndexConfig()
    evaluation = EvalConfig.from_dict({"encoder_preset": "base", "encoder_steps": 5, "seed": 2, "max_pool": 9})
    assert evaluation.ltt == CodeEncoderConfig.preset("base").override({"train": {"steps": 5, "seed": 2}})
    assert evaluation.seed == 2 and evaluation.max_pool == 9


def test_default_training_is_the_old_one():
    """800 steps at 2e-3, warm-up min(50, steps // 10), weight decay 0.01, log every 10 steps, CPU, seed 0."""
    t = CodeEncoderConfig().train
    assert (t.steps, t.lr, t.warmup, t.weight_decay, t.log_every, t.seed, t.cpu) == (800, 2e-3, 50, 0.01, 10, 0, True)
    assert CodeEncoderConfig.preset("tiny").train.warmup == 6
    assert IndexConfig().ltt == CodeEncoderConfig.preset("small") == EvalConfig().ltt
