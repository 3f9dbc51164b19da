import torch

from latentspace.crsm import pipeline
from latentspace.crsm.config import PipelineConfig
from latentspace.crsm.generate import generate
from latentspace.crsm.model import CRSM
from latentspace.crsm.tasks import PathStarTask

TINY = PipelineConfig.preset("tiny")


def test_pipeline_stages_resume_and_share_one_checkpoint_format(tmp_path):
    root = tmp_path / "run"
    pipeline.train_backbone(TINY, root, quiet=True)
    assert pipeline.stage_done(root, "1-backbone") and not pipeline.stage_done(root, "2-distill")
    stage1 = (root / "1-backbone" / "model" / "model.safetensors").read_bytes()
    model = pipeline.run_pipeline(TINY, root, quiet=True)  # resumes: stage 1 is not redone
    assert (root / "1-backbone" / "model" / "model.safetensors").read_bytes() == stage1
    for stage in pipeline.STAGES:
        assert pipeline.stage_of(root / stage / "model") == stage
        loaded = CRSM.load(root / stage / "model")
        out = generate(loaded, loaded.encode("ab,bc|ac="), 3, planner="off", stop_at_eos=False)
        assert len(out.tokens) == 3
    # the assembled model holds stage 1's backbone and stage 2's dynamics
    s1, s2, s3 = (CRSM.load(root / s / "model") for s in pipeline.STAGES[:3])
    torch.testing.assert_close(s3.backbone.layers[0].mixer.A_log, s1.backbone.layers[0].mixer.A_log)
    torch.testing.assert_close(s3.dynamics.net[0].weight, s2.dynamics.net[0].weight)
    # stage 4 changed only the value head
    torch.testing.assert_close(model.backbone.embedding.weight, s3.backbone.embedding.weight)
    assert not torch.equal(model.value_head.net[0].weight, s3.value_head.net[0].weight)
    # deleting the last stage and rerunning redoes only that stage
    stage3 = (root / "3-assemble" / "model" / "model.safetensors").read_bytes()
    import shutil

    shutil.rmtree(root / "4-value")
    pipeline.run_pipeline(TINY, root, quiet=True)
    assert pipeline.stage_done(root, "4-value")
    assert (root / "3-assemble" / "model" / "model.safetensors").read_bytes() == stage3


def test_interrupted_stage_resumes_from_its_last_checkpoint(tmp_path):
    root = tmp_path / "run"
    config = TINY.override({"backbone.steps": 8})
    from latentspace.core.training import fit as real_fit

    calls = {}

    def interrupting_fit(*args, **kwargs):
        def stop(step, metrics):
            if step == 4 and not calls:
                calls["stopped"] = True
                raise KeyboardInterrupt
        kwargs["callbacks"] = [stop]
        return real_fit(*args, **kwargs)

    pipeline.fit = interrupting_fit
    try:
        try:
            pipeline.train_backbone(config, root, quiet=True)
        except KeyboardInterrupt:
            pass
        assert not pipeline.stage_done(root, "1-backbone")
        assert (root / "1-backbone" / "checkpoints" / "last").is_dir()
        pipeline.train_backbone(config, root, quiet=True)
    finally:
        pipeline.fit = real_fit
    steps = [r["step"] for r in pipeline.Run("crsm", path=root / "1-backbone").read_metrics()]
    assert steps[-1] == 8 and steps == sorted(steps)


def test_tiny_backbone_learns_beyond_chance(tmp_path):
    config = TINY.override({"backbone": {"steps": 40, "lr": 5e-3}, "data.batch_size": 16})
    model = pipeline.train_backbone(config, tmp_path / "r", quiet=True)
    tokens, mask = PathStarTask(2, 3).batch(model, 32, seed=999)
    with torch.no_grad():
        loss = pipeline.backbone_loss(model, (tokens, mask))
    assert float(loss) < 0.8 * torch.log(torch.tensor(260.0))  # far below a uniform guess over the vocabulary


def test_tiny_preset_is_the_flat_config_it_replaced():
    """The nested tree holds the same settings as the flat PipelineConfig did; an old run config.json converts."""
    flat = {"d_model": 32, "n_layers": 2, "d_state": 8, "backbone_steps": 12, "distill_steps": 4, "value_steps": 4,
            "batch_size": 8, "distill_sequences": 8, "value_rollouts": 8, "pathstar_length": 3,
            "mcts_simulations": 8, "seed": 0, "backbone_lr": 2e-3}
    old = PipelineConfig.from_dict(flat)
    assert old.override({f"{s}.checkpoint_every": 375 if s == "backbone" else 100 if s == "distill" else 75
                         for s in ("backbone", "distill", "value")}) == TINY
    assert old.backbone.checkpoint_every == 50 and old.backbone.warmup == 1 and TINY.value.warmup == 0
    model = TINY.model_config(260)
    assert (model.vocab_size, model.mcts_max_depth, model.d_model) == (260, 5, 32)
