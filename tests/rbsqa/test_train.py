import pytest
import torch

from latentspace.rbsqa.config import RBSQAConfig
from latentspace.rbsqa.train import (
    collate,
    encode_split,
    evaluate_documents,
    exact_match,
    f1_score,
    normalize_answer,
    train_model,
)


def test_answer_metrics():
    assert normalize_answer("The  Kitchen.") == "kitchen"
    assert exact_match("the kitchen", "Kitchen") == 1.0
    assert f1_score("red cat", "cat") == pytest.approx(2 / 3)
    assert f1_score("", "cat") == 0.0


def test_tiny_model_learns_beyond_chance(tmp_path):
    """Training the tiny model lowers the QA loss well below its start and below a uniform guess."""
    config = RBSQAConfig.preset("tiny").replace(task="stories", train_docs=16, val_docs=6, test_docs=6, steps=60,
                                                lr=3e-3, batch_size=8, re_scoring_method="learned")
    from latentspace.core.runs import Run

    run = Run("rbsqa", path=tmp_path / "run")
    trained = train_model(config, run, quiet=True)
    losses = [r["loss"] for r in run.read_metrics() if "loss" in r]
    uniform = torch.log(torch.tensor(float(config.segment_len + 1))).item()
    assert losses[-1] < 0.6 * losses[0] and losses[-1] < 0.6 * uniform
    assert trained.calibration["val_candidates"] > 0 and trained.calibration["temperature"] > 0
    re_score = [r["re_score_loss"] for r in run.read_metrics() if "re_score_loss" in r]
    assert re_score and re_score[-1] < re_score[0]  # the learned re-scorer trains with the model
    metrics, rows = evaluate_documents(trained.model, encode_split(trained.model, config, "test"), None)
    for key in ("f1_with_tracker", "f1_without_tracker", "revision_detection_rate", "ece_calibrated",
                "ece_uncalibrated", "tracker_bytes_per_doc"):
        assert key in metrics
    assert 0.0 <= metrics["revision_detection_rate"] <= 1.0 and len(rows) == 6


def test_collate_pads_documents():
    config = RBSQAConfig.preset("tiny")
    from latentspace.rbsqa.model import RBSQAModel

    model = RBSQAModel(config)
    docs = encode_split(model, config, "val")[:3]
    batch = collate(docs, None)
    S = max(d.num_segments for d in docs)
    assert batch["input_ids"].shape == (3, S, config.seq_len)
    assert batch["segment_mask"].sum().item() == sum(d.num_segments for d in docs)
