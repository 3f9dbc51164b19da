import torch

from latentspace.logs.classify import LogClassifier
from latentspace.logs.train import evaluate_model, tensorise

from ..conftest import save_as_before_encoder_config
from .conftest import synthetic_severity, tiny_config


def test_shapes_and_gradients():
    model = LogClassifier(tiny_config(task="severity"))
    tokens, mask, labels = tensorise(model, synthetic_severity(8))
    logits = model.logits(tokens, mask, stochastic=True)
    assert logits.shape == (8, 4)
    torch.nn.functional.cross_entropy(logits, labels).backward()
    assert model.encoder.token_emb.weight.grad is not None
    assert model.anomaly(model.embed(tokens, mask)).shape == (8,)


def test_tiny_model_learns_beyond_chance(tiny_severity_model):
    model, test = tiny_severity_model
    assert evaluate_model(model, test)["acc"] > 0.6  # chance is 0.25


def test_fast_path_agrees_with_reference(tiny_severity_model):
    model, test = tiny_severity_model
    lines = test.lines[:30] + test.lines[:10]  # repeats hit the cache
    model.invalidate_cache()
    fast = model.classify_lines(lines, batch_size=7)
    slow = model.classify_lines_reference(lines)
    for f, s in zip(fast, slow, strict=True):
        assert f.label == s.label and f.true_label == s.true_label
        assert abs(f.confidence - s.confidence) < 1e-4 and abs(f.anomaly_score - s.anomaly_score) < 1e-3


def test_anomaly_score_flags_unfamiliar_lines(tiny_severity_model):
    model, test = tiny_severity_model
    familiar = [p.anomaly_score for p in model.classify_lines(test.lines)]
    strange = [p.anomaly_score for p in model.classify_lines(
        [f"zz qq kernel panic {w} totally unseen vocabulary words" for w in ("alpha", "beta", "gamma", "delta")])]
    assert sum(strange) / len(strange) > sorted(familiar)[len(familiar) // 2]


def test_checkpoint_round_trip(tiny_severity_model, tmp_path):
    model, test = tiny_severity_model
    model.save(tmp_path / "m")
    loaded = LogClassifier.load(tmp_path / "m")
    assert loaded.templates is not None and len(loaded.templates) == len(model.templates)
    a = model.classify_lines(test.lines[:20], templates=True)
    b = loaded.classify_lines(test.lines[:20], templates=True)
    assert [(p.label, round(p.anomaly_score, 4), p.template_id) for p in a] == [
        (p.label, round(p.anomaly_score, 4), p.template_id) for p in b]


def test_checkpoint_saved_before_encoder_config_loads(tiny_severity_model, tmp_path):
    model, test = tiny_severity_model
    save_as_before_encoder_config(model, tmp_path / "m")
    loaded = LogClassifier.load(tmp_path / "m")
    assert loaded.config == model.config
    assert [p.label for p in loaded.classify_lines(test.lines[:20])] == [
        p.label for p in model.classify_lines(test.lines[:20])]
