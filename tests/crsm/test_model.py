import json

import pytest
import torch

from latentspace.core.errors import CheckpointError, ConfigError
from latentspace.crsm.config import CRSMConfig
from latentspace.crsm.model import CRSM
from latentspace.crsm.tokenizer import make_tokenizer, train_bpe_tokenizer


def test_checkpoint_round_trip_keeps_weights_and_tokenizer(tmp_path):
    torch.manual_seed(0)
    model = CRSM(CRSMConfig.preset("tiny")).eval()
    model.save(tmp_path / "ck", metadata={"stage": "x"})
    loaded = CRSM.load(tmp_path / "ck").eval()
    tokens = torch.tensor([model.encode("def f(x): return x")])
    torch.testing.assert_close(loaded(tokens)[0], model(tokens)[0])
    assert loaded.decode(loaded.encode("héllo ✓")) == "héllo ✓"  # byte level: no <unk> possible
    assert (tmp_path / "ck" / "tokenizer.json").is_file()


def test_bpe_tokenizer_is_saved_and_a_mismatch_is_refused(tmp_path):
    tok = train_bpe_tokenizer(["def foo(bar):\n    return bar\n"] * 50, vocab_size=300)
    model = CRSM(CRSMConfig.preset("tiny").replace(vocab_size=len(tok), tokenizer="bpe"), tok)
    model.save(tmp_path / "ck")
    assert CRSM.load(tmp_path / "ck").encode("def foo") == model.encode("def foo")
    header = json.loads((tmp_path / "ck" / "config.json").read_text())
    header["config"]["vocab_size"] = 260
    (tmp_path / "ck" / "config.json").write_text(json.dumps(header))
    with pytest.raises(CheckpointError):
        CRSM.load(tmp_path / "ck")
    with pytest.raises(ConfigError):
        CRSM(CRSMConfig.preset("tiny").replace(vocab_size=999), make_tokenizer("byte"))


def test_missing_tokenizer_and_wrong_family_are_refused(tmp_path):
    model = CRSM(CRSMConfig.preset("tiny"))
    model.save(tmp_path / "ck")
    (tmp_path / "ck" / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="tokenizer"):
        CRSM.load(tmp_path / "ck")
    with pytest.raises(CheckpointError):
        CRSM.load(tmp_path / "nothing")


def test_config_validation():
    with pytest.raises(ConfigError):
        CRSMConfig(scan="cuda")
    with pytest.raises(ConfigError):
        CRSMConfig(d_state=12)


def test_latent_views_and_delta():
    torch.manual_seed(0)
    model = CRSM(CRSMConfig.preset("tiny")).eval()
    tokens = torch.tensor([model.encode("abc")])
    logits, hidden = model(tokens)
    latent, caches = model.prefill(tokens)
    torch.testing.assert_close(latent, hidden[:, -1])
    value = model.value(latent).detach()
    assert value.shape == (1,) and 0 <= float(value) <= 1
    assert model.dynamics_step(latent, torch.tensor([5])).shape == latent.shape
    with pytest.raises(RuntimeError):
        model.apply_state_delta(torch.ones(1, 32))
    model.set_latent_state(latent)
    model.apply_state_delta(torch.ones(1, 32), scale=0.5)
    torch.testing.assert_close(model.get_latent_state(), latent + 0.5)
