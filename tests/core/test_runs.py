"""core/runs.py's `set_threads`: the one place that sets torch's CPU threads."""

import torch

from latentspace.core.runs import set_threads


def test_set_threads_exact_and_at_most():
    before = torch.get_num_threads()
    try:
        assert set_threads(1) == 1 and torch.get_num_threads() == 1
        assert set_threads(3, at_most=True) == 1  # never raised above the current count
        assert set_threads(0) == 1  # at least one
        assert set_threads(2) == 2 and set_threads(1, at_most=True) == 1
        assert set_threads(1, blas=True) == 1
    finally:
        torch.set_num_threads(before)


LOCK_HOLDER = """
import sys, time
from latentspace.core.runs import Run
run = Run("t", path=sys.argv[1])
print("locked", flush=True)
time.sleep(60)
"""


def test_a_second_process_on_the_same_run_folder_gets_a_clear_error(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    import pytest

    from latentspace.core.errors import RunInUseError
    from latentspace.core.runs import Run

    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(tmp_path / "r")], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(root / "src")})
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(RunInUseError, match=f"run folder .* is in use by process {proc.pid}") as info:
            Run("t", path=tmp_path / "r")
        assert info.value.exit_code == 2
        other = Run("t", path=tmp_path / "other")  # another folder is free; the same folder twice in one process too
        assert Run("t", path=tmp_path / "other").path == other.path
    finally:
        proc.send_signal(signal.SIGKILL)  # the lock dies with its process: no stale lock
        proc.wait()
    run = Run("t", path=tmp_path / "r")
    run.close()


def test_a_metrics_line_torn_by_a_kill_is_dropped_on_resume(tmp_path):
    from latentspace.core.runs import Run

    run = Run("t", path=tmp_path / "m")
    for step in (1, 2, 3):
        run.log(step, loss=1.0)
    with open(run.metrics_path, "a") as handle:
        handle.write('{"step": 4, "lo')
    run.truncate_metrics(2)
    assert [r["step"] for r in run.read_metrics()] == [1, 2]
