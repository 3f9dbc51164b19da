import pytest
import torch

from latentspace.core.backbones import (
    EmbeddingCache,
    byte_tokenizer,
    load_causal_lm,
    load_sentence_encoder,
    tiny_causal_lm,
)
from latentspace.core.errors import BackboneError


@pytest.mark.parametrize("kind", ["llama", "granitemoehybrid"])
def test_tiny_causal_lm_forward_and_generate_offline(kind):
    model, tokenizer = tiny_causal_lm(kind)
    batch = tokenizer(["hello world", "hi"], return_tensors="pt", padding=True)
    out = model(**batch)
    assert out.logits.shape == (2, batch.input_ids.shape[1], len(tokenizer))
    generated = model.generate(**batch, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert generated.shape == (2, batch.input_ids.shape[1] + 5)


def test_byte_tokenizer_round_trips_any_text():
    tokenizer = byte_tokenizer(["<SUM0>", "<SUM1>"])
    text = "naïve café 🚀 <tab>\t{x: 1}"
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert tokenizer.convert_tokens_to_ids("<SUM1>") == len(tokenizer) - 1


def test_packaged_minilm_encodes_offline():
    encoder = load_sentence_encoder()
    emb = encoder.encode(["a cat sits on the mat", "a kitten rests on a rug", "stock prices fell"],
                         convert_to_tensor=True, normalize_embeddings=True)
    assert emb.shape == (3, 384)
    assert float(emb[0] @ emb[1]) > float(emb[0] @ emb[2]) + 0.2


def test_unreachable_hub_id_gives_one_clear_error():
    with pytest.raises(BackboneError, match="cannot load model 'someone/not-a-real-model-xyz'.*local path"):
        load_causal_lm("someone/not-a-real-model-xyz")
    with pytest.raises(BackboneError, match="local path"):
        load_sentence_encoder("someone/not-a-real-encoder-xyz")


def test_embedding_cache_encodes_each_text_once(tmp_path):
    calls = []

    def encode(texts):
        calls.append(list(texts))
        return torch.stack([torch.tensor([float(len(t)), 1.0]) for t in texts])

    cache = EmbeddingCache("m", tmp_path / "cache.safetensors")
    first = cache.encode(["ab", "abc", "ab"], encode)
    assert calls == [["ab", "abc"]]
    assert first[:, 0].tolist() == [2.0, 3.0, 2.0]
    cache.save()
    again = EmbeddingCache("m", tmp_path / "cache.safetensors").encode(["abc", "abcd"], encode)
    assert calls[-1] == ["abcd"] and again[:, 0].tolist() == [3.0, 4.0]
