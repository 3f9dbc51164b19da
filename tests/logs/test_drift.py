from latentspace.logs.data import Examples
from latentspace.logs.drift import DriftResult, drift_metrics, plot_drift, run_drift

from .conftest import tiny_config


def test_drift_metrics_follow_avalanche_definitions():
    result = DriftResult("m", correct=[0, 0, 1, 1, 1, 1, 0, 1], stream_systems=["a"] * 4 + ["b"] * 4)
    result.acc = [[0.9], [0.8, 0.7], [0.6, 0.5, 1.0]]
    tests = [Examples(["x"] * 2, ["INFO"] * 2, ["s"] * 2)] * 3
    metrics = drift_metrics(result, tests, adapt_window=2, adapt_target=1.0)
    assert abs(metrics["forgetting_base"] - 30.0) < 1e-9  # 0.9 just after base training, 0.6 at the end
    assert abs(metrics["bwt"] - (-25.0)) < 1e-9  # mean of (0.6 - 0.9, 0.5 - 0.7)
    assert abs(metrics["final_acc"] - 0.7) < 1e-9
    assert metrics["adapt_acc_first"] == 0.5  # system a: 0/2 first lines right, system b: 2/2
    assert metrics["adapt_lines_to_target"] == 3.0  # a reaches 2/2 at line 4, b at line 2


def test_tiny_drift_run(loghub, tmp_path):
    config = tiny_config(task="severity", steps=10, memory_size=40)
    results = run_drift(config, base_systems=("HDFS",), stream_systems=("Apache", "Android"), per_system_stream=32,
                        per_system_test=10, eval_every=32, data_dir=loghub.parent)
    assert set(results) == {"raccoon", "naive", "frozen"}
    assert results["frozen"].metrics["forgetting_base"] == 0.0
    assert results["raccoon"].metrics["memory_items"] == 40
    assert len(results["naive"].correct) == 64 and len(results["naive"].acc) == 3
    assert plot_drift(results, tmp_path / "drift.png", window=10).stat().st_size > 1000
