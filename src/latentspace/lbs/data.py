"""Numeric + text series for LBS: a CSV loader, the Time-MMD loader and a generated default series.

A `TextSeries` holds T steps of (date, value, text). Text at step t is what was known by the end of
step t (Time-MMD texts are aligned by their end date), so it never leaks the future into a forecast.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..core.data import find_dataset
from ..core.errors import DataError

TIME_MMD_DOMAINS = ("Agriculture", "Climate", "Economy", "Environment", "Health_AFR", "Security", "SocialGood",
                    "Traffic")


@dataclasses.dataclass
class TextSeries:
    """One series: dates (T,), float values (T,), texts (T,) ('' = no text that step)."""

    name: str
    dates: list[str]
    values: np.ndarray
    texts: list[str]
    period: int = 12  # the seasonal period used by the seasonal-naive baseline

    def __post_init__(self) -> None:
        self.values = np.asarray(self.values, dtype=np.float64)
        if not (len(self.dates) == len(self.values) == len(self.texts)):
            raise DataError(f"series {self.name}: dates ({len(self.dates)}), values ({len(self.values)}) and "
                            f"texts ({len(self.texts)}) differ in length")
        if len(self.values) < 8:
            raise DataError(f"series {self.name}: {len(self.values)} steps; at least 8 are needed")
        if not np.all(np.isfinite(self.values)):
            raise DataError(f"series {self.name}: values contain NaN or inf")

    def __len__(self) -> int:
        return len(self.values)

    def split(self, train_frac: float = 0.7, val_frac: float = 0.1) -> tuple[int, int]:
        """Chronological split points (train_end, val_end) as step indices."""
        n = len(self)
        return int(n * train_frac), int(n * (train_frac + val_frac))

    def text_coverage(self) -> float:
        return float(np.mean([bool(t) for t in self.texts]))


class Standardizer:
    """z = (y - mean) / std with statistics from the training part only."""

    def __init__(self, values: np.ndarray):
        self.mean = float(np.mean(values))
        self.std = float(np.std(values)) or 1.0

    def __call__(self, values):
        return (values - self.mean) / self.std

    def inverse(self, z):
        return z * self.std + self.mean


def load_csv(path: str | Path, date_col: str = "date", value_col: str = "value", text_col: str = "text",
             period: int = 12) -> TextSeries:
    """A (date, value, text) CSV, one row per step, sorted by date; missing text is ''."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"CSV file {path} does not exist")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        raise DataError(f"{path} is not a readable CSV ({type(err).__name__}: {err})") from None
    missing = [c for c in (date_col, value_col) if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: column(s) {missing} missing; expected {date_col}, {value_col} and optionally "
                        f"{text_col}; found {list(frame.columns)}")
    values = pd.to_numeric(frame[value_col], errors="coerce")
    if values.isna().any():
        bad = int(values.isna().idxmax())
        raise DataError(f"{path}: value column {value_col!r} has a missing or non-numeric entry at row {bad + 2}")
    texts = frame[text_col].fillna("").astype(str).tolist() if text_col in frame.columns else [""] * len(frame)
    texts = ["" if t.strip() in ("NA", "nan") else t.strip() for t in texts]
    dates = pd.to_datetime(frame[date_col], errors="coerce")
    if dates.isna().any():
        row = int(dates.isna().idxmax()) + 2
        raise DataError(f"{path}: date column {date_col!r} has an unparseable entry at row {row}")
    order = np.argsort(dates.values, kind="stable")
    return TextSeries(path.stem, [str(dates.iloc[i].date()) for i in order], values.values[order],
                      [texts[i] for i in order], period)


def _clean(text) -> str:
    if not isinstance(text, str):
        return ""
    text = text.strip()
    if text in ("", "NA", "nan") or text.startswith("NA"):
        return ""
    return " ".join(text.split())


def load_time_mmd(domain: str, data_dir: str | Path | None = None, max_steps: int | None = 1200,
                  sources: tuple[str, ...] = ("report", "search"), max_text_chars: int = 1000) -> TextSeries:
    """One Time-MMD domain: target OT by date, with report/search texts aligned by end date.

    A text whose end_date falls inside step t's [start_date, end_date] (or, for texts after the last
    step's end, nowhere) is attached to step t; the facts of all texts of a step are joined. 'NA' texts
    are missing. Rows with a missing or infinite OT are dropped; duplicate dates are averaged. `max_steps` keeps
    the most recent steps (Environment is daily, ~16k steps).
    """
    root = Path(data_dir) if data_dir is not None else find_dataset("time-mmd")
    if domain not in TIME_MMD_DOMAINS:
        raise DataError(f"unknown Time-MMD domain {domain!r}; known: {', '.join(TIME_MMD_DOMAINS)}")
    num_path = root / "numerical" / domain / f"{domain}.csv"
    if not num_path.is_file():
        raise DataError(f"Time-MMD numeric file {num_path} is missing")
    frame = pd.read_csv(num_path)
    frame = frame.loc[:, ~frame.columns.duplicated()]
    if "OT" not in frame.columns or "start_date" not in frame.columns:
        if "date" in frame.columns and "start_date" not in frame.columns:
            frame["start_date"] = frame["date"]
        if "OT" not in frame.columns:
            raise DataError(f"{num_path}: no OT column")
    if "end_date" not in frame.columns:
        frame["end_date"] = frame["start_date"]
    frame["OT"] = pd.to_numeric(frame["OT"], errors="coerce")
    frame = frame[np.isfinite(frame["OT"])]  # drops missing and infinite targets (Health_AFR has inf)
    frame["start"] = pd.to_datetime(frame["start_date"], errors="coerce")
    frame["end"] = pd.to_datetime(frame["end_date"], errors="coerce")
    frame = frame.dropna(subset=["start", "end"])
    frame = frame.groupby("start", as_index=False).agg(OT=("OT", "mean"), end=("end", "max")).sort_values("start")
    if max_steps is not None and len(frame) > max_steps:
        frame = frame.iloc[-max_steps:]
    starts = frame["start"].values
    ends = frame["end"].values
    texts: list[list[str]] = [[] for _ in range(len(frame))]
    for source in sources:
        text_path = root / "textual" / domain / f"{domain}_{source}.csv"
        if not text_path.is_file():
            continue
        tf = pd.read_csv(text_path)
        tf["end"] = pd.to_datetime(tf.get("end_date"), errors="coerce")
        tf = tf.dropna(subset=["end"]).sort_values("end")
        text_ends = tf["end"].values
        idx = np.searchsorted(ends, text_ends, side="left")  # first step whose end >= the text's end
        facts = tf["fact"] if "fact" in tf.columns else [""] * len(tf)
        preds = tf["preds"] if "preds" in tf.columns else [""] * len(tf)
        for i, text_end, fact, pred in zip(idx, text_ends, facts, preds, strict=True):
            if i >= len(frame) or (i == 0 and text_end < starts[0]):
                continue  # after the last step, or before the (kept) series begins
            for part in (_clean(fact), _clean(pred)):
                if part:
                    texts[i].append(part)
    joined = [" ".join(t)[:max_text_chars] for t in texts]
    deltas = np.diff(starts).astype("timedelta64[D]").astype(float)
    step_days = float(np.median(deltas)) if len(deltas) else 30.0
    period = 12 if step_days > 20 else (52 if step_days > 5 else 7)
    return TextSeries(domain, [str(pd.Timestamp(s).date()) for s in starts], frame["OT"].values, joined, period)


REGIMES = {
    "surge": ("Analysts expect a strong surge in demand over the coming months.", 1.0),
    "slump": ("Reports warn of a sharp slump; demand is expected to fall.", -1.0),
    "calm": ("Conditions look stable; no major change is expected.", 0.0),
}


def generated_series(steps: int = 480, seed: int = 0, lead: int = 3, period: int = 12) -> TextSeries:
    """The embedded default: regime changes announced in text `lead` steps before they show in the values.

    The level drifts toward a regime target (surge +2, slump -2, calm 0) that switches every 12-30 steps;
    a report announcing the next regime appears `lead` steps before the switch, routine reports
    elsewhere. Values = level + seasonality + noise, so the numbers alone cannot see a switch coming.
    """
    rng = np.random.default_rng(seed)
    names = list(REGIMES)
    regime = np.empty(steps, dtype=object)
    t, current = 0, "calm"
    announcements: dict[int, str] = {}
    while t < steps:
        length = int(rng.integers(12, 31))
        regime[t : t + length] = current
        t += length
        nxt = rng.choice([n for n in names if n != current])
        if t - lead >= 0 and t < steps:
            announcements[t - lead] = nxt
        current = nxt
    level = 0.0
    values, texts, dates = [], [], []
    start = pd.Timestamp("2000-01-01")
    for i in range(steps):
        target = 2.0 * REGIMES[regime[i]][1]
        level += 0.35 * (target - level)
        values.append(level + 0.5 * math.sin(2 * math.pi * i / period) + 0.25 * rng.standard_normal())
        if i in announcements:
            texts.append(REGIMES[announcements[i]][0])
        elif rng.random() < 0.5:
            texts.append(f"Routine monthly report number {i}: markets as usual.")
        else:
            texts.append("")
        dates.append(str((start + pd.DateOffset(months=i)).date()))
    return TextSeries("generated", dates, np.array(values), texts, period)


def windows(n_steps: int, window: int, batch: int, step: int, seed: int = 0, end: int | None = None) -> torch.Tensor:
    """Start indices (B,) of `batch` training windows of length `window` inside [0, end), chosen by step."""
    end = n_steps if end is None else end
    high = end - window
    if high < 0:
        raise DataError(f"training part has {end} steps, fewer than one window of {window}")
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return torch.randint(0, high + 1, (batch,), generator=gen)


def load_series(spec: str, data_dir: str | Path | None = None, max_steps: int | None = 1200) -> TextSeries:
    """A series by name: "generated", "time-mmd:<Domain>" (or just the domain name), or a CSV path."""
    if spec == "generated":
        return generated_series()
    if spec.startswith("time-mmd:") or spec in TIME_MMD_DOMAINS:
        return load_time_mmd(spec.split(":", 1)[-1], data_dir, max_steps=max_steps)
    if spec.endswith(".csv") or Path(spec).exists():
        return load_csv(spec)
    raise DataError(f"unknown series {spec!r}: expected 'generated', 'time-mmd:<Domain>' "
                    f"({', '.join(TIME_MMD_DOMAINS)}) or a CSV file with date,value,text columns")
