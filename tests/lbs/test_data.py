import numpy as np
import pytest

from latentspace.core.data import find_dataset
from latentspace.core.errors import DataError
from latentspace.lbs.data import REGIMES, Standardizer, generated_series, load_csv, load_time_mmd, windows


def test_generated_series_announces_regimes_before_they_show():
    s = generated_series(steps=300, seed=1)
    announce = {text: sign for text, sign in REGIMES.values()}
    diffs = []
    for t, text in enumerate(s.texts):
        if text in announce and t + 10 < len(s) and announce[text] != 0:
            diffs.append(announce[text] * (s.values[t + 3 : t + 10].mean() - s.values[t - 3 : t + 1].mean()))
    assert len(diffs) >= 5 and np.mean(diffs) > 0.5  # the announced direction shows up afterwards


def test_csv_loader(tmp_path):
    path = tmp_path / "s.csv"
    rows = ["date,value,text"] + [f"2020-{m:02d}-01,{m * 1.5},report {m}" for m in range(12, 0, -1)]
    rows[3] = "2020-10-01,15.0,NA"
    path.write_text("\n".join(rows) + "\n")
    s = load_csv(path)
    assert s.dates[0] == "2020-01-01" and s.values[0] == 1.5 and len(s) == 12
    assert s.texts[9] == ""


def test_csv_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_csv(tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("date,value\n2020-01-01,abc\n" + "2020-01-02,1\n" * 9)
    with pytest.raises(DataError, match="non-numeric"):
        load_csv(bad)
    nocol = tmp_path / "nocol.csv"
    nocol.write_text("when,value\n2020-01-01,1\n")
    with pytest.raises(DataError, match="missing"):
        load_csv(nocol)


def test_standardizer_and_windows():
    sc = Standardizer(np.array([1.0, 3.0]))
    assert sc(np.array([2.0]))[0] == 0 and sc.inverse(sc(np.array([5.0])))[0] == 5.0
    w = windows(100, 10, 8, step=3, end=50)
    assert w.shape == (8,) and int(w.max()) <= 40
    assert (windows(100, 10, 8, step=3, end=50) == w).all()
    with pytest.raises(DataError):
        windows(100, 60, 8, step=0, end=50)


@pytest.mark.skipif(find_dataset("time-mmd", required=False, sample=False) is None,
                    reason="Time-MMD not found: run `latentspace data fetch time-mmd` or set $LATENTSPACE_DATA")
def test_time_mmd_alignment():
    s = load_time_mmd("Economy")
    assert len(s) > 400 and s.period == 12 and s.text_coverage() > 0.9
    assert np.all(np.isfinite(s.values)) and s.dates == sorted(s.dates)
    health = load_time_mmd("Health_AFR")  # has inf targets, weekly
    assert np.all(np.isfinite(health.values)) and health.period == 52
    with pytest.raises(DataError):
        load_time_mmd("Energy")
