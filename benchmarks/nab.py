"""Numenta Anomaly Benchmark (NAB) score of a detector's per-row anomaly scores.

    python benchmarks/nab.py score RESULTS_DIR [--detector NAME]   # score NAB-layout result files
    python benchmarks/nab.py baseline zscore --out DIR             # write the trailing z-score baseline
    python benchmarks/nab.py run [--out DIR] [--model PATH]        # backtest our anomaly_score, then score it

Our own implementation of NAB's published scoring rules (Lavin & Ahmad 2015; numenta/NAB):

- Anomaly windows come from ``labels/combined_windows.json`` (``"category/file.csv" -> [[start, end]]``).
- The first min(floor(15 % of rows), 750) rows of each file are probationary and not scored.
- A row is a detection when its score is >= the threshold.
- Inside a window only the earliest detection counts: it earns ``tp * S(p) / S(-1)`` where
  ``S(p) = 2 * sigmoid(-5 p) - 1`` is NAB's scaled sigmoid and ``p = -(end - i + 1) / width`` the
  row's relative position (-1 at the window start, so a detection there earns exactly ``tp``).
  A window without any detection costs ``-fn``.
- Every detection outside the windows counts: it earns ``fp * S(p)`` with ``p = (i - end) / (width - 1)``
  measured from the end of the previous window (``S(p) = -1`` once ``p >= 3`` and before the first
  window), so false positives right after a window cost little and later ones the full ``fp``.
- Profiles (NAB's ``config/profiles.json``): standard tp 1 / fp 0.11 / fn 1, reward_low_FP_rate
  tp 1 / fp 0.22 / fn 1, reward_low_FN_rate tp 1 / fp 0.11 / fn 2.
- Per profile, one threshold for the whole corpus is chosen to maximise the raw score. The sweep is
  exact: every score value of a scorable row is a candidate (NAB's sweep), evaluated in one pass.
- Normalised score = 100 * (raw - null) / (perfect - null), where the null detector never detects
  and the perfect detector detects at each window's first row only.

The data directory is ``$FAILURE_PREDICTOR_NAB_DIR`` or ``../shared/data/nab`` beside the repository
(``exporter.backtest.nab_dir``); nothing of NAB is copied into this repository.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make the exporter package importable
    sys.path.insert(0, str(ROOT))

from exporter.backtest import nab_dir  # noqa: E402

PROBATION_PERCENT = 0.15
PROBATION_MAX_ROWS = PROBATION_PERCENT * 5000  # 750 rows, as NAB writes it
WINDOWS_FILE = Path("labels") / "combined_windows.json"
ZSCORE_HISTORY = 1000
ZSCORE_STD_FLOOR = 0.001


@dataclass(frozen=True)
class Profile:
    tp: float
    fp: float
    fn: float
    tn: float = 1.0  # part of NAB's cost matrix, unused by its scoring


PROFILES: dict[str, Profile] = {
    "standard": Profile(tp=1.0, fp=0.11, fn=1.0),
    "reward_low_FP_rate": Profile(tp=1.0, fp=0.22, fn=1.0),
    "reward_low_FN_rate": Profile(tp=1.0, fp=0.11, fn=2.0),
}


def scaled_sigmoid(position: np.ndarray) -> np.ndarray:
    """NAB's reward by relative position: 2 * sigmoid(-5 p) - 1, and -1 from p >= 3 on."""
    position = np.asarray(position, dtype=float)
    value = 2.0 / (1.0 + np.exp(5.0 * position)) - 1.0
    return np.where(position >= 3.0, -1.0, value)


MAX_TP = float(scaled_sigmoid(np.array(-1.0)))  # S(-1) = 0.98661: a detection at a window's start


def probation_rows(rows: int) -> int:
    """Rows at the start of a file that are not scored: min(floor(15 % of rows), 750)."""
    return int(min(math.floor(PROBATION_PERCENT * rows), PROBATION_MAX_ROWS))


@dataclass(frozen=True)
class DataFile:
    """One corpus file and its geometry, independent of any detector or profile.

    ``windows`` holds inclusive row index pairs ``(first, last)``. ``tp_reward[i]`` is the
    unweighted reward S(p) / S(-1) of a detection at row ``i`` inside a window (NaN outside);
    ``fp_cost[i]`` the unweighted S(p) <= 0 of a detection outside (NaN inside).
    """

    key: str  # "category/file.csv"
    timestamps: pd.Series
    values: np.ndarray
    windows: tuple[tuple[int, int], ...]
    probation: int
    window_of: np.ndarray  # window number per row, -1 outside windows
    tp_reward: np.ndarray
    fp_cost: np.ndarray

    @property
    def category(self) -> str:
        return self.key.split("/", 1)[0]

    @property
    def name(self) -> str:
        return self.key.split("/", 1)[1]

    def __len__(self) -> int:
        return len(self.values)


def make_data_file(key: str, timestamps: pd.Series, values: np.ndarray, limits: list) -> DataFile:
    """Locate the windows ``[[start, end], ...]`` (timestamps) in the rows and precompute rewards."""
    times = pd.to_datetime(timestamps).to_numpy()
    rows = len(times)
    windows = []
    scan = 0  # as NAB walks the rows: a window opens at the first row (from here) stamped at its start
    for start, end in limits:
        starts = np.flatnonzero(times[scan:] == np.datetime64(pd.Timestamp(start)))
        ends = np.flatnonzero(times == np.datetime64(pd.Timestamp(end)))
        if not len(starts) or not len(ends):
            raise ValueError(f"{key}: window [{start}, {end}] does not start and end on rows of the file")
        # A few NAB files repeat or reorder timestamps; like NAB, take the first row stamped `end`.
        first, last = scan + int(starts[0]), int(ends[0])
        if last < first:
            raise ValueError(f"{key}: window [{start}, {end}] ends before it starts")
        windows.append((first, last))
        scan = last + 1
    window_of = np.full(rows, -1, dtype=np.int64)
    tp_reward = np.full(rows, np.nan)
    index = np.arange(rows)
    for number, (first, last) in enumerate(windows):
        width = last - first + 1
        window_of[first : last + 1] = number
        position = -(last - index[first : last + 1] + 1) / width
        tp_reward[first : last + 1] = scaled_sigmoid(position) / MAX_TP
    # Outside windows: the position past the most recent window's end (none yet: far away).
    position = np.full(rows, 3.0)
    outside = window_of < 0
    if windows:
        ends = np.array([last for _, last in windows])
        widths = np.array([last - first + 1 for first, last in windows], dtype=float)
        previous = np.searchsorted(ends, index, side="left") - 1  # last window ending before the row
        seen = outside & (previous >= 0)
        span = np.maximum(widths[previous[seen]] - 1.0, 1.0)
        position[seen] = (index[seen] - ends[previous[seen]]) / span
    fp_cost = np.where(outside, scaled_sigmoid(position), np.nan)
    return DataFile(
        key=key,
        timestamps=timestamps,
        values=np.asarray(values, dtype=float),
        windows=tuple(windows),
        probation=probation_rows(rows),
        window_of=window_of,
        tp_reward=tp_reward,
        fp_cost=fp_cost,
    )


def load_corpus(root: Path | None = None) -> list[DataFile]:
    """Every data file of the NAB corpus at ``root`` (default: ``nab_dir()``), sorted by key."""
    root = Path(root) if root is not None else nab_dir()
    labels_path = root / WINDOWS_FILE
    if not labels_path.is_file():
        raise FileNotFoundError(f"no NAB labels at {labels_path}; set FAILURE_PREDICTOR_NAB_DIR")
    labels = json.loads(labels_path.read_text())
    files = []
    for key in sorted(labels):
        table = pd.read_csv(root / "data" / key)
        files.append(make_data_file(key, table["timestamp"], table["value"].to_numpy(float), labels[key]))
    return files


# ---------------------------------------------------------------------------------------------
# Scoring


@dataclass(frozen=True)
class Events:
    """Where the raw score changes as the threshold falls, per file (profile-independent parts).

    False positives: ``fp_score`` (the row's anomaly score) and ``fp_cost``. Windows: each row that
    becomes a window's earliest detection as the threshold falls to its score (its score beats every
    earlier scorable row of the window), with its reward and the reward of the detection it
    replaces (NaN: the window was missed until then).
    """

    fp_score: np.ndarray
    fp_cost: np.ndarray
    tp_score: np.ndarray
    tp_reward: np.ndarray
    tp_replaced: np.ndarray
    windows: int  # windows with at least one scorable row


def file_events(data: DataFile, scores: np.ndarray) -> Events:
    scores = np.asarray(scores, dtype=float)
    if scores.shape != (len(data),):
        raise ValueError(f"{data.key}: {scores.shape[0]} scores for {len(data)} rows")
    scores = np.nan_to_num(scores, nan=0.0)
    scorable = np.arange(len(data)) >= data.probation
    false_positive = scorable & (data.window_of < 0)
    tp_score, tp_reward, tp_replaced, windows = [], [], [], 0
    for first, last in data.windows:
        first = max(first, data.probation)
        if first > last:
            continue  # the whole window is probationary: NAB does not score it
        windows += 1
        window_scores = scores[first : last + 1]
        best_before = np.maximum.accumulate(np.concatenate([[-np.inf], window_scores[:-1]]))
        records = np.flatnonzero(window_scores > best_before)
        rewards = data.tp_reward[first : last + 1][records]
        tp_score.append(window_scores[records])
        tp_reward.append(rewards)
        # Each record beats all earlier rows, so the later records are detected first as the
        # threshold falls: record k replaces record k + 1, and the last record replaces the miss.
        tp_replaced.append(np.concatenate([rewards[1:], [np.nan]]))
    empty = np.empty(0)
    return Events(
        fp_score=scores[false_positive],
        fp_cost=data.fp_cost[false_positive],
        tp_score=np.concatenate(tp_score) if tp_score else empty,
        tp_reward=np.concatenate(tp_reward) if tp_reward else empty,
        tp_replaced=np.concatenate(tp_replaced) if tp_replaced else empty,
        windows=windows,
    )


@dataclass(frozen=True)
class Sweep:
    """The raw corpus score for every candidate threshold, highest threshold first."""

    thresholds: np.ndarray  # thresholds[0] = inf: nothing detected
    raw: np.ndarray
    null: float
    perfect: float

    def best(self) -> tuple[float, float]:
        """(threshold, raw score) maximising the raw score; the highest threshold among ties (as NAB)."""
        at = int(np.argmax(self.raw))
        return float(self.thresholds[at]), float(self.raw[at])


def sweep(events: list[Events], profile: Profile) -> Sweep:
    """Exact raw score at every threshold: sum the score changes of all rows at or above it."""
    fp_score = np.concatenate([e.fp_score for e in events])
    fp_delta = profile.fp * np.concatenate([e.fp_cost for e in events])
    tp_score = np.concatenate([e.tp_score for e in events])
    reward = np.concatenate([e.tp_reward for e in events])
    replaced = np.concatenate([e.tp_replaced for e in events])
    tp_delta = profile.tp * reward - np.where(np.isnan(replaced), -profile.fn, profile.tp * replaced)
    windows = sum(e.windows for e in events)
    null = -profile.fn * windows
    score = np.concatenate([fp_score, tp_score])
    delta = np.concatenate([fp_delta, tp_delta])
    order = np.argsort(-score, kind="stable")
    score, total = score[order], null + np.cumsum(delta[order])
    last_of_level = np.append(score[1:] != score[:-1], True)
    return Sweep(
        thresholds=np.concatenate([[np.inf], score[last_of_level]]),
        raw=np.concatenate([[null], total[last_of_level]]),
        null=null,
        perfect=profile.tp * windows,
    )


def raw_at(data: DataFile, scores: np.ndarray, threshold: float, profile: Profile) -> tuple[float, int]:
    """Direct (non-sweep) raw score of one file at one threshold, and its scored window count."""
    scores = np.nan_to_num(np.asarray(scores, dtype=float), nan=0.0)
    detected = scores >= threshold
    detected[: data.probation] = False
    outside = data.window_of < 0
    raw = profile.fp * float(data.fp_cost[detected & outside].sum())
    windows = 0
    for first, last in data.windows:
        first = max(first, data.probation)
        if first > last:
            continue
        windows += 1
        hits = np.flatnonzero(detected[first : last + 1])
        raw += profile.tp * data.tp_reward[first + hits[0]] if len(hits) else -profile.fn
    return raw, windows


def normalised(raw: float, null: float, perfect: float) -> float:
    return 100.0 * (raw - null) / (perfect - null) if perfect != null else float("nan")


@dataclass(frozen=True)
class ProfileScore:
    profile: str
    threshold: float
    score: float
    raw: float
    categories: dict[str, float]  # normalised per category at the corpus threshold


def score_corpus(
    corpus: list[DataFile], scores: Mapping[str, np.ndarray], profiles: Mapping[str, Profile] = PROFILES
) -> dict[str, ProfileScore]:
    """NAB scores of per-row ``scores`` (keyed like the corpus files) for each profile."""
    missing = [data.key for data in corpus if data.key not in scores]
    if missing:
        raise KeyError(f"no scores for {len(missing)} corpus file(s), e.g. {missing[0]}")
    events = [file_events(data, scores[data.key]) for data in corpus]
    results = {}
    for name, profile in profiles.items():
        swept = sweep(events, profile)
        threshold, raw = swept.best()
        per_category: dict[str, list[float]] = {}
        for data in corpus:
            file_raw, windows = raw_at(data, scores[data.key], threshold, profile)
            totals = per_category.setdefault(data.category, [0.0, 0.0, 0.0])
            totals[0] += file_raw
            totals[1] += -profile.fn * windows
            totals[2] += profile.tp * windows
        categories = {
            category: normalised(*totals)
            for category, totals in sorted(per_category.items())
            if totals[1] != totals[2]  # categories without windows (no anomalies) have no scale
        }
        results[name] = ProfileScore(
            profile=name,
            threshold=threshold,
            score=normalised(raw, swept.null, swept.perfect),
            raw=raw,
            categories=categories,
        )
    return results


def null_scores(corpus: list[DataFile]) -> dict[str, np.ndarray]:
    return {data.key: np.zeros(len(data)) for data in corpus}


def perfect_scores(corpus: list[DataFile]) -> dict[str, np.ndarray]:
    """1 at the first scorable row of each window, 0 elsewhere."""
    scores = {}
    for data in corpus:
        row = np.zeros(len(data))
        for first, last in data.windows:
            if max(first, data.probation) <= last:
                row[max(first, data.probation)] = 1.0
        scores[data.key] = row
    return scores


# ---------------------------------------------------------------------------------------------
# Result files and the trailing z-score baseline


def result_path(out: Path, detector: str, key: str) -> Path:
    category, name = key.split("/", 1)
    return out / detector / category / f"{detector}_{name}"


def detector_of(results: Path) -> str:
    """The single ``<detector>`` directory under ``results`` (the backtest's ``--out``)."""
    found = sorted(p.name for p in results.iterdir() if p.is_dir()) if results.is_dir() else []
    if len(found) != 1:
        raise SystemExit(f"{results}: expected one detector directory, found {found}; pass --detector")
    return found[0]


def read_results(results: Path, detector: str, corpus: list[DataFile]) -> dict[str, np.ndarray]:
    scores = {}
    for data in corpus:
        path = result_path(results, detector, data.key)
        if not path.is_file():
            raise SystemExit(f"missing result file {path}")
        column = pd.read_csv(path, usecols=["anomaly_score"])["anomaly_score"].to_numpy(float)
        if len(column) != len(data):
            raise SystemExit(f"{path}: {len(column)} rows, the data file has {len(data)}")
        scores[data.key] = column
    return scores


def write_results(out: Path, detector: str, corpus: list[DataFile], scores: Mapping[str, np.ndarray]) -> None:
    for data in corpus:
        path = result_path(out, detector, data.key)
        path.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(
            {"timestamp": data.timestamps, "value": data.values, "anomaly_score": scores[data.key]}
        ).to_csv(path, index=False)


def zscore_baseline(data: DataFile) -> np.ndarray:
    """Trailing z-score: z = |x_t - mean| / std over the previous 1,000 rows (std floored at
    0.001 x the std of the probationary rows), score z / (1 + z), 0 during the probation."""
    values = pd.Series(data.values)
    history = values.rolling(ZSCORE_HISTORY, min_periods=1)
    mean = history.mean().shift(1).to_numpy()
    std = history.std().shift(1).to_numpy()
    floor = ZSCORE_STD_FLOOR * float(np.std(data.values[: max(data.probation, 2)], ddof=1))
    std = np.maximum(np.nan_to_num(std, nan=0.0), floor)
    deviation = np.abs(data.values - mean)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(deviation == 0, 0.0, deviation / std)  # std 0 and x off the mean: z = inf
    score = np.where(np.isinf(z), 1.0, z / (1.0 + z))
    score = np.nan_to_num(score, nan=0.0)
    score[: data.probation] = 0.0
    return score


BASELINES = {"zscore": zscore_baseline}


# ---------------------------------------------------------------------------------------------
# CLI


def report(results: dict[str, ProfileScore], title: str) -> None:
    print(title)
    print(f"  {'profile':<20} {'score':>7} {'threshold':>10}")
    for result in results.values():
        print(f"  {result.profile:<20} {result.score:7.1f} {result.threshold:10.4f}")
    print("  standard score per category:")
    for category, value in results["standard"].categories.items():
        print(f"    {category:<22} {value:7.1f}")


def cmd_score(args: argparse.Namespace) -> int:
    corpus = load_corpus(args.nab_dir)
    detector = args.detector or detector_of(args.results)
    started = time.perf_counter()
    results = score_corpus(corpus, read_results(args.results, detector, corpus))
    report(results, f"NAB scores of {detector} ({len(corpus)} files):")
    print(f"scored in {time.perf_counter() - started:.1f}s")
    return 0


def cmd_baseline(args: argparse.Namespace) -> int:
    corpus = load_corpus(args.nab_dir)
    detector = args.detector or args.name
    scores = {data.key: BASELINES[args.name](data) for data in corpus}
    write_results(args.out, detector, corpus, scores)
    print(f"wrote {len(corpus)} result files to {args.out / detector}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from exporter import backtest as bt
    from exporter.config import BOOTSTRAP_MODEL
    from exporter.models.bundle import load_bundle
    from exporter.models.registry import resolve
    from exporter.sources.files import FilesSource

    root = args.nab_dir or nab_dir()
    with tempfile.TemporaryDirectory(prefix="nab-") as scratch:
        out = args.out or Path(scratch)
        started = time.perf_counter()
        source = FilesSource(bt.nab_files(root), bt.NAB_COLUMNS)
        bundle = load_bundle(resolve(args.model or BOOTSTRAP_MODEL))
        summary = bt.run_backtest(source, bundle, out, "nab", bt.DEFAULT_DETECTOR)
        backtested = time.perf_counter()
        print(
            f"backtest: {summary.files} files, {summary.rows:,} rows in {backtested - started:.1f}s -> {out}"
        )
        corpus = load_corpus(root)
        results = score_corpus(corpus, read_results(out, bt.DEFAULT_DETECTOR, corpus))
        scored = time.perf_counter()
    report(results, f"NAB scores of {bt.DEFAULT_DETECTOR} anomaly_score ({len(corpus)} files):")
    print(
        f"runtime: {scored - started:.1f}s (backtest {backtested - started:.1f}s, "
        f"scoring {scored - backtested:.1f}s)"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nab-dir", type=Path, help="NAB corpus (default $FAILURE_PREDICTOR_NAB_DIR)")
    commands = parser.add_subparsers(dest="command", required=True)
    score = commands.add_parser("score", help="score NAB-layout result files")
    score.add_argument("results", type=Path, help="results directory (holding <detector>/<category>/...)")
    score.add_argument("--detector", help="detector name (default: the only directory in RESULTS)")
    score.set_defaults(handler=cmd_score)
    baseline = commands.add_parser("baseline", help="write a baseline detector's result files")
    baseline.add_argument("name", choices=sorted(BASELINES))
    baseline.add_argument("--out", type=Path, required=True, help="results directory")
    baseline.add_argument("--detector", help="detector name in the layout (default: the baseline's name)")
    baseline.set_defaults(handler=cmd_baseline)
    run = commands.add_parser("run", help="backtest our anomaly_score on all files, then score it")
    run.add_argument("--out", type=Path, help="keep the result files here (default: a temporary directory)")
    run.add_argument("--model", type=Path, help="model bundle (default: the bootstrap bundle)")
    run.set_defaults(handler=cmd_run)
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
