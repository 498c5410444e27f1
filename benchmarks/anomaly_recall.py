"""anomaly_score against a trailing 60-minute z-score at the same false-alarm budget.

    python benchmarks/anomaly_recall.py [--suites simulation,backfill,nab] [--budget 1.0]

Both detectors score every row of every recording from its first sample on, causally (the
z-score of a sample against the samples of the 60 minutes before it, the largest over the
signals; ``anomaly_score`` as the daemon publishes it, models/normalize.py). For each detector
the threshold is the lowest at which it raises at most ``--budget`` false alarms per
target-day (an alarm episode, consecutive rows above the threshold, is false when no failure
starts within the horizon after it), found by bisection over the detector's own score values, so
neither is flattered by a threshold chosen for the other. Reported: the share of failures
warned within the horizon before they start, overall and for failures starting in each
recording's first hour (when a cold daemon used to be blind).

Suites: the bootstrap simulation (48 targets x 2 d, seed 0) and the backfill suite the tests
load into Prometheus (30 targets x 4 d, seed 5), failures as the simulator labels them, horizon
30 min, each cut into 6-hour recordings scored from a cold start (as after a restart without
history: the first-hour row is the blind spot the issue is about); NAB (58 files), a "failure"
being a labelled anomaly window, warned when a row inside the window or up to the window's length
before it crosses the threshold. On NAB a false alarm is every row above the threshold outside
those stretches, per file-day, as NAB itself counts false positives: files span weeks of 5-minute
rows, so counting episodes there would let a detector that stays above a near-zero threshold
for days pass the budget with one "alarm". Thresholds are chosen on the data reported (both
detectors alike).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "benchmarks"):
    if str(path) not in sys.path:  # run as a script: make the exporter package and incidents importable
        sys.path.insert(0, str(path))

from incidents import replay  # noqa: E402

from exporter import backtest as bt  # noqa: E402
from exporter.config import BOOTSTRAP_MODEL  # noqa: E402
from exporter.models.bundle import load_bundle  # noqa: E402
from exporter.sources.files import FilesSource  # noqa: E402
from exporter.sources.simulate import simulate_history  # noqa: E402
from exporter.training.evaluate import event_metrics  # noqa: E402
from exporter.training.labels import failure_starts  # noqa: E402

ZSCORE_SECONDS = 3600.0
FIRST_HOUR = 3600.0
PIECE_STEPS = 360  # simulated recordings of 6 h at 60 s steps, each starting cold


def trailing_z(values: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
    """``[targets, time]``: max over signals of |x - mean| / std of the previous 60 minutes
    (at least 3 samples; 0 where there is nothing to compare)."""
    step = float(np.median(np.diff(timestamps))) if len(timestamps) > 1 else 60.0
    width = max(3, round(ZSCORE_SECONDS / step))
    x = np.nan_to_num(values, nan=0.0)
    present = np.isfinite(values).astype(float)
    cumulative = [
        np.concatenate([np.zeros_like(a[:, :1]), np.cumsum(a, axis=1)], axis=1) for a in (present, x, x * x)
    ]
    steps = np.arange(values.shape[1])
    lo = np.maximum(steps - width, 0)
    n, s, ss = (c[:, steps] - c[:, lo] for c in cumulative)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = s / n
        std = np.sqrt(np.maximum(ss / n - mean**2, 0.0))
        # Floored like a dashboard would: a signal resting at 0 that moves by 0.001 is not "infinitely" far.
        z = np.abs(values - mean) / np.maximum(std, np.maximum(1e-3 * np.abs(mean), 1e-3))
    z[(n < 3) | ~np.isfinite(z)] = 0.0
    return z.max(axis=2)


def threshold_for(score_of: callable, scores: np.ndarray, budget: float) -> float:
    """The lowest candidate threshold whose false alarms per target-day stay within budget."""
    positive = np.unique(scores[scores > 0])
    if not len(positive):
        return np.inf
    candidates = positive  # every score value: a bisection needs ~20 evaluations
    lo, hi = 0, len(candidates) - 1
    if score_of(candidates[hi])[1] > budget:
        return np.inf
    while lo < hi:  # false alarms fall as the threshold rises
        mid = (lo + hi) // 2
        if score_of(candidates[mid])[1] <= budget:
            hi = mid
        else:
            lo = mid + 1
    return float(candidates[lo])


def simulation(
    bundle, targets: int, days: float, seed: int, budget: float, piece_steps: int = PIECE_STEPS
) -> dict:
    """The simulated history cut into recordings of ``piece_steps``, each scored from a cold
    start (both detectors), so that many failures fall into some recording's first hour."""
    history = simulate_history(targets=targets, steps=int(days * 1440), seed=seed)
    frame = history.frame
    anomaly, zscore = np.zeros(frame.values.shape[:2]), np.zeros(frame.values.shape[:2])
    for begin in range(0, len(frame.timestamps), piece_steps):
        piece = slice(begin, begin + piece_steps)
        _, anomaly[:, piece] = replay(bundle, frame.values[:, piece], frame.timestamps[piece], frame.signals)
        zscore[:, piece] = trailing_z(frame.values[:, piece], frame.timestamps[piece])
    horizon = bundle.manifest.horizon_seconds
    rows = ~history.failed
    target, step = np.nonzero(rows)
    starts_target, starts_step = np.nonzero(failure_starts(history.failed))
    start_time = frame.timestamps[starts_step]
    early = (starts_step % piece_steps) * (frame.timestamps[1] - frame.timestamps[0]) < FIRST_HOUR
    out = {}
    for name, score in (("anomaly_score", anomaly), ("zscore_60m", zscore)):
        values = score[target, step]

        def at(threshold, failures=(starts_target, start_time), values=values):
            m = event_metrics(target, frame.timestamps[step], values, *failures, horizon, threshold)
            return m["event_recall"], m["false_alarms_per_target_day"]

        threshold = threshold_for(at, values, budget)
        recall, false_alarms = at(threshold)
        first, _ = at(threshold, (starts_target[early], start_time[early]))
        out[name] = {
            "threshold": threshold,
            "recall": recall,
            "false_alarms_per_target_day": false_alarms,
            "first_hour_recall": first,
            "failures": len(start_time),
            "first_hour_failures": int(early.sum()),
        }
    return out


def nab(bundle, budget: float) -> dict:
    """Window recall at the budget over NAB, both detectors from each file's first row."""
    root = bt.nab_dir()
    windows = json.loads((root / "labels" / "combined_windows.json").read_text())
    source = FilesSource(bt.nab_files(root), bt.NAB_COLUMNS)
    rows_target, rows_time, ours, theirs, excused = [], [], [], [], []
    failure_target, failure_time, lead = [], [], []
    days = 0.0
    for number, recording in enumerate(source.recordings()):
        anomaly = np.concatenate([s.anomaly for _, s in bt.score_rows(recording, bundle)])
        times = recording.row_time
        z = trailing_z(recording.row_values[None, :, :], times)[0]
        key = f"{recording.path.parent.name}/{recording.path.name}"
        warns = np.zeros(len(times), dtype=bool)  # rows whose detection warns of a window
        for start, end in windows.get(key, []):
            t0, t1 = pd.Timestamp(start).timestamp(), pd.Timestamp(end).timestamp()
            warns |= (times >= t0 - (t1 - t0)) & (times <= t1)
            failure_target.append(number)
            failure_time.append(t1)  # "warned" = a detection before the window ends ...
            lead.append(t1 - t0)  # ... and not earlier than one window length before it starts
        rows_target.append(np.full(len(times), number))
        rows_time.append(times)
        ours.append(anomaly)
        theirs.append(z)
        excused.append(warns)
        days += (times[-1] - times[0]) / 86_400.0
    target, when, warns = map(np.concatenate, (rows_target, rows_time, excused))
    failure_target, failure_time, lead = map(np.array, (failure_target, failure_time, lead))
    out = {}
    for name, score in (("anomaly_score", np.concatenate(ours)), ("zscore_60m", np.concatenate(theirs))):

        def at(threshold, score=score):
            warned = score >= threshold
            caught = [
                ((target == t) & (when <= end) & (when >= end - 2 * width) & warned).any()
                for t, end, width in zip(failure_target, failure_time, lead, strict=True)
            ]
            return float(np.mean(caught)), float((warned & ~warns).sum() / days)

        threshold = threshold_for(at, score, budget)
        recall, false_alarms = at(threshold)
        out[name] = {
            "threshold": threshold,
            "recall": recall,
            "false_alarms_per_target_day": false_alarms,
            "failures": len(failure_time),
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=BOOTSTRAP_MODEL)
    parser.add_argument("--suites", default="simulation,backfill,nab")
    parser.add_argument("--budget", type=float, default=1.0, help="false alarms per target-day")
    args = parser.parse_args()
    bundle = load_bundle(args.model)
    suites = {
        "simulation": lambda: simulation(bundle, 48, 2, 0, args.budget),
        "backfill": lambda: simulation(bundle, 30, 4, 5, args.budget),
        "nab": lambda: nab(bundle, args.budget),
    }
    for name in args.suites.split(","):
        started = time.perf_counter()
        result = suites[name]()
        print(
            f"{name} (budget {args.budget:g} false alarms per target-day)  [{time.perf_counter() - started:.0f}s]"
        )
        for detector, m in result.items():
            first = (
                f"  first hour {m['first_hour_recall']:.1%} of {m['first_hour_failures']}"
                if "first_hour_recall" in m
                else ""
            )
            print(
                f"  {detector:<14} recall {m['recall']:6.1%} of {m['failures']:<4} at threshold {m['threshold']:.4g}"
                f" ({m['false_alarms_per_target_day']:.2f} false alarms/target-day){first}"
            )
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
