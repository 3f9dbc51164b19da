import random

import pytest
import torch

from latentspace.core.errors import CheckpointError
from latentspace.rbsqa.config import RBSQAConfig
from latentspace.rbsqa.data import encode_document, generate_story
from latentspace.rbsqa.model import RBSQAModel
from latentspace.rbsqa.reading import answer_without_tracker, read_document
from latentspace.rbsqa.train import collate


@pytest.fixture(scope="module")
def tiny():
    config = RBSQAConfig.preset("tiny")
    torch.manual_seed(0)
    model = RBSQAModel(config).eval()
    docs = [encode_document(generate_story(random.Random(i), 10), model.tokenizer, config) for i in range(3)]
    return config, model, docs


def test_gmm_context_integration(tiny):
    """Memory written by earlier segments changes later segments' logits, and gradients flow back through it."""
    config, model, docs = tiny
    batch = collate(docs, None)
    hidden = model._encode_batch(batch).detach().requires_grad_(True)  # (B, S, L, D)
    out = model.forward_document(hidden, batch["attention_mask"], batch["context_mask"], batch["segment_mask"])
    B, S, L = batch["input_ids"].shape
    assert out["start"].shape == (B, S, L) and out["memory"].shape == (B, S, config.num_memory_slots, model.dim)
    last = int(batch["segment_mask"][0].sum()) - 1
    out["start"][0, last, 0].backward()
    assert hidden.grad[0, 0].abs().sum() > 0  # segment 0 influences the last segment through memory only
    with torch.no_grad():
        h = hidden[:, 1].detach()
        a = model.segment_forward(h, batch["attention_mask"][:, 1], batch["context_mask"][:, 1],
                                  model.init_memory(B))
        b = model.segment_forward(h, batch["attention_mask"][:, 1], batch["context_mask"][:, 1],
                                  out["memory"][:, 0])
    assert not torch.allclose(a["start"][batch["context_mask"][:, 1]], b["start"][batch["context_mask"][:, 1]])
    # positions outside the segment (question, separators) can never be chosen
    masked = ~batch["context_mask"].clone()
    masked[..., 0] = False
    assert torch.isinf(out["start"][masked]).all()


def test_batched_document_pass_matches_segment_by_segment_reference(tiny):
    _, model, docs = tiny
    batch = collate(docs, None)
    with torch.no_grad():
        out = model.forward_document(model._encode_batch(batch), batch["attention_mask"], batch["context_mask"],
                                     batch["segment_mask"])
    for b, doc in enumerate(docs):
        _, _, starts = answer_without_tracker(model, doc)
        for s, reference in enumerate(starts):
            assert torch.allclose(out["start"][b, s], reference, atol=1e-5)
        traj = read_document(model, doc)
        for s, step_logits in enumerate(traj.start_logits):
            assert torch.allclose(step_logits, starts[s], atol=1e-6)


def test_backward_compatibility_with_gmm(tiny, tmp_path):
    """Without the tracker the memory QA model trains, answers and checkpoints exactly as before."""
    config, with_tracker, docs = tiny
    plain = RBSQAModel(config.replace(use_belief_state=False))
    assert plain.tracker is None
    extra = set(with_tracker.state_dict()) - set(plain.state_dict())
    assert extra and all(k.startswith("tracker.") for k in extra)
    assert set(plain.state_dict()) <= set(with_tracker.state_dict())
    plain.load_state_dict({k: v for k, v in with_tracker.state_dict().items() if not k.startswith("tracker.")})
    plain.eval()
    loss = plain.qa_loss(collate(docs, None))
    loss.backward()
    assert torch.isfinite(loss) and plain.qa_head.weight.grad is not None
    span, text, _ = answer_without_tracker(plain, docs[0])
    assert span == answer_without_tracker(with_tracker, docs[0])[0] and isinstance(text, str)
    with pytest.raises(ValueError):
        read_document(plain, docs[0])
    plain.save(tmp_path / "plain")
    assert RBSQAModel.load(tmp_path / "plain").tracker is None


def test_checkpoint_serialization(tiny, tmp_path):
    config, model, docs = tiny
    model.tracker.log_temperature.data.fill_(0.3)
    model.tracker.confidence_bias.data.fill_(-0.2)
    read_document(model, docs[0])  # leaves a belief state mid-use
    belief = model.tracker.belief.to_dict()
    model.save(tmp_path / "ckpt")
    loaded = RBSQAModel.load(tmp_path / "ckpt")
    assert loaded.tracker.belief.to_dict() == belief
    assert loaded.tracker.temperature.item() == pytest.approx(model.tracker.temperature.item())
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    a, b = read_document(model, docs[1]), read_document(loaded, docs[1])
    assert [s.confidence for s in a.steps] == pytest.approx([s.confidence for s in b.steps])
    (tmp_path / "other").mkdir()
    from latentspace.core.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "other", {"x": torch.zeros(1)}, {}, family="ltt")
    with pytest.raises(CheckpointError, match="rbsqa"):
        RBSQAModel.load(tmp_path / "other")


def test_frozen_pretrained_encoder_is_left_out_of_checkpoints(tmp_path):
    config = RBSQAConfig(encoder_layers=1)
    model = RBSQAModel(config)
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert len(model.encoder.encoder.layer) == 1
    model.save(tmp_path / "m")
    from latentspace.core.checkpoint import load_checkpoint

    _, state = load_checkpoint(tmp_path / "m")
    assert state and not any(k.startswith("encoder.") for k in state)
    loaded = RBSQAModel.load(tmp_path / "m")
    assert torch.equal(loaded.qa_head.weight, model.qa_head.weight)


def test_re_score_loss_matches_per_pair_reference(tiny):
    """The batched re-scorer loss equals a loop over documents and segment pairs (s < s', gold span at s)."""
    config, model, docs = tiny
    assert model.tracker.re_score_network is not None  # the default re-scoring method is "learned"
    batch = collate(docs, None)
    out = model._forward_batch(batch)
    loss = model.re_score_loss(batch, out)
    terms = []
    for b, doc in enumerate(docs):
        for s in range(doc.num_segments):
            a, e = int(doc.gold_start[s]), int(doc.gold_end[s])
            if a == 0:
                continue
            span = out["states"][b, s, a : e + 1].mean(0)
            for later in range(s + 1, doc.num_segments):
                context = out["memory"][b, later].mean(0)
                prob = model.tracker.re_score_network(torch.cat([span, context])).squeeze()
                target = torch.tensor(float(doc.states[later] == doc.states[s]))
                terms.append(torch.nn.functional.binary_cross_entropy(prob, target))
    assert terms and {0.0, 1.0} <= {float(doc.states[i] == doc.states[0]) for doc in docs
                                    for i in range(doc.num_segments)}
    assert torch.allclose(loss, torch.stack(terms).mean(), atol=1e-5)
    # its gradient reaches the memory write, so the memory learns what re-scoring needs
    model.zero_grad()
    loss.backward()
    assert model.memory.write_attn.in_proj_weight.grad.abs().sum() > 0
    model.zero_grad()
    total, parts = model.training_loss(batch)
    assert set(parts) == {"qa_loss", "re_score_loss"}
    assert total.item() == pytest.approx(parts["qa_loss"] + parts["re_score_loss"], rel=1e-5)


def test_position_embedding_is_used_and_old_checkpoints_load(tiny, tmp_path):
    """The learned positions feed the trainable path; a checkpoint written before the option loads without it."""
    import json

    config, model, docs = tiny
    assert model.position is not None and model.position.shape == (config.seq_len, model.dim)
    batch = collate(docs[:1], None)
    hidden = model._encode_batch(batch)[:, 0]
    args = (hidden, batch["attention_mask"][:, 0], batch["context_mask"][:, 0], model.init_memory(1))
    with torch.no_grad():
        before = model.segment_forward(*args)["start"]
        saved = model.position.clone()
        model.position.zero_()
        after = model.segment_forward(*args)["start"]
        model.position.copy_(saved)
    assert not torch.allclose(before[torch.isfinite(before)], after[torch.isfinite(after)])
    old = RBSQAModel(config.replace(position_embedding=False))
    assert old.position is None
    old.save(tmp_path / "old")
    header = json.loads((tmp_path / "old" / "config.json").read_text())
    header["config"].pop("position_embedding")  # as written before the option existed
    (tmp_path / "old" / "config.json").write_text(json.dumps(header))
    loaded = RBSQAModel.load(tmp_path / "old")
    assert loaded.position is None and not loaded.config.position_embedding


def test_flat_checkpoint_config_from_before_train_loads(tiny, tmp_path):
    """A checkpoint whose config.json holds steps, lr and seed flat (before `train: TrainConfig`) still loads."""
    import json

    config, model, _ = tiny
    model.save(tmp_path / "flat")
    header = json.loads((tmp_path / "flat" / "config.json").read_text())
    train = header["config"].pop("train")
    header["config"].update(steps=300, lr=2e-3, seed=train["seed"])  # as written before the tree
    (tmp_path / "flat" / "config.json").write_text(json.dumps(header))
    loaded = RBSQAModel.load(tmp_path / "flat")
    assert (loaded.config.train.steps, loaded.config.train.lr, loaded.config.train.log_every) == (300, 2e-3, 6)
    assert loaded.config.train.warmup == 30 and loaded.config.seed == config.seed
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
