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
    config = RBSQAConfig.preset("tiny").override({
        "task": "stories", "train_docs": 16, "val_docs": 6, "test_docs": 6, "batch_size": 8,
        "re_scoring_method": "learned", "train": {"steps": 60, "lr": 3e-3}})
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


def test_revisions_are_measured_on_the_answer():
    """Detected: the belief changes to the new answer at the segment where the true answer changes. False: the
    believed answer changes where the true one does not. A move to a newer span of the same answer is neither."""
    import types

    from latentspace.rbsqa.reading import Trajectory, TrajectoryStep
    from latentspace.rbsqa.train import _revisions

    def step(s: int, span: tuple[int, int], text: str, revised: bool) -> TrajectoryStep:
        return TrajectoryStep(s, span, text, 0.9, 3.0, span, text, 0.9, revised, False)

    # truth: kitchen, kitchen (she left and came back: a newer "kitchen"), garden, garden, office
    doc = types.SimpleNamespace(states=["kitchen", "kitchen", "garden", "garden", "office"], revision_points=[2, 4])
    steps = [step(0, (3, 3), "kitchen", False), step(1, (20, 20), "kitchen", True),  # span-only move
             step(2, (30, 30), "garden", True),  # detected
             step(3, (40, 40), "cellar", True),  # false: the answer changes, the truth does not
             step(4, (40, 40), "cellar", False)]  # missed: no change at the true revision point
    traj = Trajectory(steps, (40, 40), "cellar", 5, 5, None, 0.0, 0.0, 0)
    detected, false, span_only = _revisions(traj, doc)
    assert detected == [2] and false == [3] and span_only == [1]
    steps[4] = step(4, (50, 50), "the Office", True)  # revised to the new answer (normalised text)
    assert _revisions(Trajectory(steps, (50, 50), "the Office", 5, 5, None, 0.0, 0.0, 0), doc)[0] == [2, 4]


def test_training_is_reproducible_with_a_pretrained_encoder():
    """Two trainings of one config give the same weights: the layers built on a pretrained (frozen) encoder
    are seeded too (they once took whatever the global RNG held)."""
    config = RBSQAConfig.preset("tiny").replace(encoder="all-MiniLM-L6-v2", encoder_layers=1, task="stories",
                                                train_docs=4, val_docs=2, test_docs=2, batch_size=2,
                                                halting_f1_tolerance=None).override({"train.steps": 3})
    torch.manual_seed(1)  # a different global RNG state before each run
    first = train_model(config, None, quiet=True).model
    torch.manual_seed(2)
    second = train_model(config, None, quiet=True).model
    a, b = first.state_dict(), second.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
