"""SIGKILL at chosen moments of long jobs, then resume: the last checkpoint or index is intact, at most one
checkpoint interval is redone, and the result equals an uninterrupted run's (CPU, same seed).

Each command runs in a subprocess (tests/faults/harness.py); benchmarks/faults.py runs a heavier sweep.
"""

import pytest

from tests.faults.harness import (
    Kill,
    cli,
    codesearch_args,
    index_vectors,
    kill_and_resume_fit,
    kill_when,
    ltt_args,
    ltt_weights,
    make_code_tree,
    reached,
    same_tensors,
)

LTT_STEPS = 30  # the default interval: max(1, 30 // 10) = 3 steps


def test_ltt_train_killed_at_a_step_and_inside_checkpoint_writes_resumes_to_the_same_weights(tmp_path):
    straight = cli(ltt_args(tmp_path / "runs", LTT_STEPS, "straight"), tmp_path)
    assert straight.returncode == 0, straight.stderr[-3000:]
    run_dir = tmp_path / "runs" / "ltt" / "killed"
    kills = [Kill("step", at=7), Kill("checkpoint.write")]  # benchmarks/faults.py adds the moment before the swap
    result = kill_and_resume_fit(ltt_args(tmp_path / "runs", LTT_STEPS, "killed"), ["--resume"], tmp_path, run_dir,
                                 kills)
    assert result.returncode == 0, result.stderr[-3000:]
    interval = LTT_STEPS // 10
    for kill in kills:
        assert kill.landed and kill.recovered, kill
        assert kill.checkpoint_step is not None and 0 <= kill.work_lost() <= interval, kill
    assert kills[1].work_lost() == interval  # killed inside the write of the next checkpoint: the previous one holds
    assert same_tensors(ltt_weights(run_dir), ltt_weights(tmp_path / "runs" / "ltt" / "straight"))
    assert not list((run_dir / "checkpoints").glob(".last.*"))  # no leftovers of the killed writes


def test_codesearch_index_killed_inside_the_index_write_keeps_the_previous_index(tmp_path):
    from latentspace.codesearch.index import CodeIndex

    tree = make_code_tree(tmp_path / "tree")
    output = tmp_path / "idx"
    first = cli(codesearch_args(tree, output, 12), tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    before = index_vectors(output)
    log = tmp_path / "faults.log"
    fault = {"LATENTSPACE_FAULT_LOG": str(log), "LATENTSPACE_FAULT_POINT": "index.write",
             "LATENTSPACE_FAULT_SLEEP": "60"}
    args = [*codesearch_args(tree, output, 12), "--rebuild"]
    assert kill_when(args, tmp_path, lambda: reached(log, "index.write"), fault)
    assert same_tensors(index_vectors(output), before)  # the previous index is intact and loads
    again = cli(args, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert same_tensors(index_vectors(output), before)  # same tree and seed: the same index
    assert len(list(output.glob("gen-*"))) == 1 and CodeIndex.load(output).path.name == "gen-000002"
    assert not (tmp_path / ".idx.build").exists()


@pytest.mark.parametrize("case", ["full_disk", "read_only"])
def test_a_full_disk_or_a_read_only_run_folder_gets_one_clear_message_and_keeps_the_checkpoint(tmp_path, monkeypatch,
                                                                                                 case):
    """Writes fail with ENOSPC (a full disk) or EROFS (a read-only folder; the tests run as root, so chmod would
    not stop them): one DiskError naming the folder, exit code 2, and the earlier checkpoint still loads."""
    import errno
    import os

    from latentspace import cli as top
    from latentspace.core import data
    from latentspace.core.errors import DiskError
    from latentspace.core.runs import Run
    from latentspace.core.training import fit
    from tests.core.test_training import CONFIG, Net, _fresh, loss_fn
    from tests.core.test_training import data as batches

    run = Run("t", path=tmp_path / "r")
    fit(_fresh(), loss_fn, batches, CONFIG.replace(steps=6), run=run, quiet=True)
    code = errno.ENOSPC if case == "full_disk" else errno.EROFS
    real_mkdtemp = data.tempfile.mkdtemp

    def failing_mkdtemp(*args, **kwargs):
        raise OSError(code, os.strerror(code), str(kwargs.get("dir", "")))

    monkeypatch.setattr(data.tempfile, "mkdtemp", failing_mkdtemp)
    with pytest.raises(DiskError) as info:
        fit(_fresh(), loss_fn, batches, CONFIG.replace(steps=12), run=run, quiet=True, resume=True)
    message = str(info.value)
    assert str(run.checkpoints_dir / "last") in message and "earlier results are intact" in message
    assert ("no space left" if case == "full_disk" else "read-only") in message and info.value.exit_code == 2
    monkeypatch.setattr(data.tempfile, "mkdtemp", real_mkdtemp)
    assert Net.load(run.checkpoints_dir / "last" / "model").config == Net(Net.config_class()).config

    # a read-only run folder (or a full disk) met before any checkpoint: the lock file cannot be made
    monkeypatch.setattr(os, "open", lambda *a, **k: (_ for _ in ()).throw(OSError(code, os.strerror(code), a[0])))
    with pytest.raises(DiskError, match="cannot write run folder"):
        Run("t", path=tmp_path / "fresh")
    monkeypatch.undo()
    # and an OSError of that kind anywhere in a command: one line and exit code 2 from the console entry point
    monkeypatch.setattr(top, "app", lambda **_: (_ for _ in ()).throw(OSError(code, os.strerror(code), "x")))
    with pytest.raises(SystemExit) as exited:
        top.main()
    assert exited.value.code == 2
