import dataclasses

import pytest
import torch
from torch import nn

from latentspace.core.checkpoint import CheckpointMixin, load_state
from latentspace.core.config import Config
from latentspace.core.runs import Run
from latentspace.core.training import StopTraining, TrainConfig, TrainingError, fit, lr_at


@dataclasses.dataclass
class NetConfig(Config):
    hidden: int = 16


class Net(CheckpointMixin, nn.Module):
    family = "test"
    config_class = NetConfig

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.body = nn.Sequential(nn.Linear(4, config.hidden), nn.Dropout(0.2), nn.ReLU(), nn.Linear(config.hidden, 1))

    def forward(self, x):
        return self.body(x)


def data(step):
    g = torch.Generator().manual_seed(step)
    x = torch.randn(32, 4, generator=g)
    return x, x.sum(-1, keepdim=True) + 0.01 * torch.randn(32, 1)  # global RNG: restored on resume


def loss_fn(model, batch):
    x, y = batch
    return nn.functional.mse_loss(model(x), y), {"abs": float((model(x) - y).abs().mean().detach())}


def _fresh():
    torch.manual_seed(123)
    return Net(NetConfig())


CONFIG = TrainConfig(steps=40, lr=1e-2, warmup_steps=5, checkpoint_every=0, log_every=1, seed=3)


def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path):
    straight = _fresh()
    fit(straight, loss_fn, data, CONFIG, run=Run("t", path=tmp_path / "a"), quiet=True)

    def stop_at_17(step, metrics):
        if step == 17:
            raise KeyboardInterrupt

    run = Run("t", path=tmp_path / "b")
    first = _fresh()
    result = fit(first, loss_fn, data, CONFIG, run=run, quiet=True, callbacks=[stop_at_17])
    assert result.interrupted and result.step == 17
    resumed = _fresh()  # a new process would build the model afresh
    result = fit(resumed, loss_fn, data, CONFIG, run=run, quiet=True, resume=True)
    assert result.step == 40 and not result.interrupted
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    steps = [r["step"] for r in run.read_metrics() if "loss" in r]
    assert steps == list(range(1, 41))


def test_stop_training_ends_normally_with_the_final_eval_and_checkpoint(tmp_path):
    def stop_at_9(step, metrics):
        if step == 9:
            raise StopTraining

    evals = []
    run = Run("t", path=tmp_path / "s")
    result = fit(_fresh(), loss_fn, data, CONFIG, run=run, quiet=True, callbacks=[stop_at_9],
                 eval_fn=lambda m: evals.append(1) or {"x": 1.0})
    assert result.step == 9 and not result.interrupted and evals == [1]  # the final evaluation ran
    assert result.checkpoint is not None and (result.checkpoint / "trainer_state.json").exists()


def test_loss_falls_and_metrics_and_checkpoints_are_written(tmp_path):
    run = Run("t", path=tmp_path / "r")
    evals = []
    model = _fresh()
    result = fit(model, loss_fn, data, CONFIG.replace(steps=200, eval_every=50, checkpoint_every=100),
                 run=run, quiet=True, eval_fn=lambda m: evals.append(1) or {"mse": 0.0})
    rows = [r for r in run.read_metrics() if "loss" in r]
    assert rows[-1]["loss"] < rows[0]["loss"] / 5
    assert len(evals) == 4  # at 50, 100, 150 and the end
    assert Net.load(run.checkpoints_dir / "last" / "model").config == NetConfig()
    assert result.checkpoint == run.checkpoints_dir / "last"
    assert run.plot_metrics(["loss", "lr"]).exists()


def test_non_finite_loss_stops_with_a_clear_error(tmp_path):
    def bad_loss(model, batch):
        return model(batch[0]).sum() * float("nan")

    with pytest.raises(TrainingError, match="loss became nan at step 0"):
        fit(_fresh(), bad_loss, data, CONFIG, run=Run("t", path=tmp_path / "n"), quiet=True)


def test_lr_schedule():
    config = TrainConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, config) == pytest.approx(0.1)
    assert lr_at(10, config) == pytest.approx(1.0)
    assert lr_at(100, config) == pytest.approx(0.1)
    assert lr_at(55, config) == pytest.approx(0.55)


def test_periodic_checkpoints_by_default():
    assert TrainConfig(steps=400).checkpoint_interval == 40 and TrainConfig(steps=5).checkpoint_interval == 1
    assert TrainConfig(steps=400, checkpoint_every=0).checkpoint_interval == 0
    assert TrainConfig(steps=400, checkpoint_every=7).checkpoint_interval == 7
    assert TrainConfig().checkpoint_seconds == 300.0


def test_checkpoints_by_time_when_steps_are_slow(tmp_path, monkeypatch):
    """checkpoint_seconds triggers a checkpoint between step intervals; the saved step is the one reached."""
    saved = []
    import latentspace.core.training as training

    real = training.save_state
    monkeypatch.setattr(training, "save_state", lambda path, state: saved.append(state["step"]) or real(path, state))
    import itertools

    monkeypatch.setattr(training.time, "monotonic", itertools.count(0, 100).__next__)  # each call: 100 s later
    fit(_fresh(), loss_fn, data, CONFIG.replace(steps=6, checkpoint_every=0, checkpoint_seconds=150), quiet=True,
        run=Run("t", path=tmp_path / "time"))
    assert saved[:-1] and saved[-1] == 6 and all(s < 6 for s in saved[:-1])


KILLED_FIT = """
import os, signal, sys, torch
torch.set_num_threads(2)
from tests.core.test_training import CONFIG, _fresh, data, loss_fn
from latentspace.core.runs import Run
from latentspace.core.training import fit

def kill_at_25(step, metrics):
    if step == 25:
        os.kill(os.getpid(), signal.SIGKILL)

torch.manual_seed(0)
fit(_fresh(), loss_fn, data, CONFIG.replace(checkpoint_every=None), run=Run("t", path=sys.argv[1]), quiet=True,
    callbacks=[kill_at_25])
"""


def test_resume_after_sigkill_equals_uninterrupted(tmp_path):
    """A process killed with SIGKILL at step 25 (default checkpoints: every 4 steps) resumes to the same result."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": f"{root / 'src'}{os.pathsep}{root}"}
    proc = subprocess.run([sys.executable, "-c", KILLED_FIT, str(tmp_path / "k")], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    last = tmp_path / "k" / "checkpoints" / "last"
    assert load_state(last / "trainer_state")["step"] == 24 and Net.load(last / "model").config == NetConfig()
    run = Run("t", path=tmp_path / "k")
    assert max(r["step"] for r in run.read_metrics()) == 25
    resumed = _fresh()
    result = fit(resumed, loss_fn, data, CONFIG.replace(checkpoint_every=None), run=run, quiet=True, resume=True)
    assert result.step == 40
    straight = _fresh()
    fit(straight, loss_fn, data, CONFIG, run=Run("t", path=tmp_path / "a"), quiet=True)
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert [r["step"] for r in run.read_metrics() if "loss" in r] == list(range(1, 41))
