"""Per-target online normalisation: what makes ``anomaly_score`` mean the same on every target.

A forest's raw score has no meaning across targets: a pod whose CPU is always noisy and one
whose latency never moves do not share a scale, and values far outside the training range
(10,000 taxi rides where the model saw ratios of a limit) saturate it. So each target is
measured against its own past only, from three kinds of evidence per step:

1. **value**: how far each signal's newest sample lies from that signal's running mean, in
   running standard deviations (a trailing z-score, scale-free);
2. **shape**: a null Isolation Forest's raw score of the newest ``EMBED_STEPS`` samples, each
   standardised by the same running mean and deviation. The forest is fitted on independent
   standard-normal windows, so it measures how unlike a stationary series of that mean and
   spread the recent stretch is (a spike, a shift, a flat line, a changed rhythm), whatever the
   unit. It needs no history of its own and serves every target;
3. **context**: the model bundle's Isolation Forest raw score over the window features of all
   signals together (the multi-signal view), as the bundle scores it.

The raw scores of 2 and 3 are themselves standardised against the target's running mean and
deviation of those raw scores, so a forest that reads every window of a target as "odd" reads
the usual oddness as 0. The evidence is z = mean(max over signals of 1, max over signals of 2,
3), reported as z / (1 + z) in [0, 1). Finally, only the first step of a burst is reported:
a step whose z is not above every z of the target's previous ``BURST_STEPS`` steps reads 0, so
one incident raises one alarm, not one per step.

Running means and variances are exact over a target's first ``MEMORY_STEPS`` samples and
exponentially weighted with that memory afterwards (Welford's update with a capped count):
constant state per target, no history kept. A target reads 0 until it has ``WARMUP_STEPS``
samples. Everything at step t depends on samples up to t only.

Contract: ``AnomalyNormaliser.score`` takes rows in time order per target; the daemon passes one
row per target per cycle, a backtest every row of a recording at once. Both run the same code.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import numpy as np
from pyod.models.iforest import IForest

from exporter.models.forest import ArrayForest

EMBED_STEPS = 60  # samples per shape window (the daemon's default window: an hour at 60 s steps)
MEMORY_STEPS = 10_000  # running statistics: exact up to this many samples, exponential afterwards
WARMUP_STEPS = 60  # samples a target needs before its score means anything
BURST_STEPS = 100  # a step must beat the previous this-many steps' evidence to be reported
Z_CLIP = 50.0  # standardised samples beyond this are "far", however far
NULL_ROWS = 10_000  # standard-normal windows the null forest is fitted on
SEED = 0

TargetKey = tuple[tuple[str, str], ...]


@functools.cache
def null_forest(steps: int = EMBED_STEPS) -> ArrayForest:
    """Isolation Forest fitted on independent standard-normal windows of ``steps`` samples, as
    arrays: every cycle scores all targets x signals in one numpy pass (models/forest.py)."""
    rng = np.random.default_rng(SEED)
    fitted = IForest(n_estimators=100, max_samples=256, random_state=SEED).fit(
        rng.standard_normal((NULL_ROWS, steps))
    )
    return ArrayForest.from_sklearn(fitted.detector_)


def target_key(labels: Mapping[str, str]) -> TargetKey:
    return tuple(sorted(labels.items()))


class RunningStats:
    """Running mean and variance per (state row, column), updated with a capped Welford step."""

    def __init__(self, columns: int, memory: int = MEMORY_STEPS) -> None:
        self.memory = memory
        self.count = np.zeros((0, columns))
        self.mean = np.zeros((0, columns))
        self.var = np.zeros((0, columns))

    def take(self, rows: np.ndarray) -> None:
        """Keep the given state rows, in that order; -1 starts a fresh row."""
        fresh = rows < 0
        for name in ("count", "mean", "var"):
            kept = getattr(self, name)[np.where(fresh, 0, rows)] if len(getattr(self, name)) else None
            values = np.zeros((len(rows), self.count.shape[1])) if kept is None else kept
            values[fresh] = 0.0
            setattr(self, name, values)

    def z(self, rows: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Signed z of ``x[rows, columns]`` against the statistics so far (NaN during warm-up)."""
        mean, scale = self.location(rows)
        return (x - mean) / scale

    def location(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mean, deviation) per row; NaN until WARMUP_STEPS samples. The deviation is floored at
        1e-3 of the mean's size, so a series that never moved reads any move as far."""
        count, mean = self.count[rows], self.mean[rows]
        scale = np.maximum(np.sqrt(self.var[rows]), 1e-3 * np.abs(mean) + 1e-9)
        warm = count >= WARMUP_STEPS
        return np.where(warm, mean, np.nan), np.where(warm, scale, np.nan)

    def update(self, rows: np.ndarray, x: np.ndarray) -> None:
        """Add one sample per row (rows distinct); NaN samples leave their statistics unchanged."""
        present = np.isfinite(x)
        count = np.minimum(self.count[rows] + present, self.memory)
        mean, var = self.mean[rows], self.var[rows]
        delta = np.where(present, x - mean, 0.0)
        weight = np.divide(1.0, count, out=np.zeros_like(count), where=present)
        new_mean = mean + delta * weight
        self.var[rows] = var + (delta * np.where(present, x - new_mean, 0.0) - var) * weight
        self.mean[rows] = new_mean
        self.count[rows] = count


class AnomalyNormaliser:
    """Per-target state keyed by label set: running statistics of each signal and of each raw
    score, and the last BURST_STEPS evidence values. Targets not passed to ``retain`` are dropped,
    so the state is bounded by the targets currently watched."""

    def __init__(self, signals: Sequence[str], embed_steps: int = EMBED_STEPS) -> None:
        self.signals = tuple(signals)
        self.embed_steps = embed_steps
        self._rows: dict[TargetKey, int] = {}
        self._values = RunningStats(len(self.signals))
        self._raw = RunningStats(len(self.signals) + 1)  # shape per signal, then the bundle forest
        self._recent = np.zeros((0, BURST_STEPS))
        self._forest = null_forest(embed_steps)

    def __len__(self) -> int:
        return len(self._rows)

    def retain(self, targets: Sequence[Mapping[str, str]]) -> np.ndarray:
        """Keep exactly these targets (new ones start fresh); returns their state rows, in order."""
        keys = [target_key(labels) for labels in targets]
        old = np.array([self._rows.get(key, -1) for key in keys], dtype=np.int64)
        self._rows = {key: row for row, key in enumerate(keys)}
        self._values.take(old)
        self._raw.take(old)
        recent = (
            self._recent[np.where(old < 0, 0, old)]
            if len(self._recent)
            else np.zeros((len(old), BURST_STEPS))
        )
        recent[old < 0] = -np.inf
        self._recent = recent
        return np.arange(len(keys))

    def score_frame(
        self, values: np.ndarray, targets: Sequence[Mapping[str, str]], forest_raw: np.ndarray
    ) -> np.ndarray:
        """One daemon cycle: ``values[targets, time, signals]`` is the newest window of every
        target watched now (targets not in it are dropped), ``forest_raw`` the bundle forest's raw
        score of each. The newest step is taken as one new sample per target."""
        return self.score(self.retain(targets), values, forest_raw)

    def forget_model(self) -> None:
        """A new bundle forest scores on a scale of its own: restart its raw statistics."""
        for name in ("count", "mean", "var"):
            getattr(self._raw, name)[:, -1] = 0.0

    def score(self, rows: np.ndarray, windows: np.ndarray, forest_raw: np.ndarray) -> np.ndarray:
        """``anomaly_score`` in [0, 1) of each input row.

        ``rows[i]`` is the state row (from ``retain``) of input row i, ``windows[i]`` its
        ``[steps, signals]`` samples ending at its own (NaN where missing; at least
        ``embed_steps`` steps, the newest last) and ``forest_raw[i]`` the bundle forest's raw score
        of that window. Input rows of one target must be in time order.
        """
        rows = np.asarray(rows, dtype=np.int64)
        windows = np.asarray(windows, dtype=float)[:, -self.embed_steps :, :]
        out = np.zeros(len(rows))
        if not len(rows):
            return out
        steps = _steps(rows)
        # Pass 1: where each row's samples stand against the statistics before them.
        mean = np.full((len(rows), len(self.signals)), np.nan)
        scale = np.full_like(mean, np.nan)
        for step in steps:
            mean[step], scale[step] = self._values.location(rows[step])
            self._values.update(rows[step], windows[step, -1, :])
        with np.errstate(invalid="ignore", divide="ignore"):
            standard = (windows - mean[:, None, :]) / scale[:, None, :]
            value_z = np.abs(standard[:, -1, :])
            # A missing sample reads as the mean; a window with nothing to compare reads nothing.
            embedded = np.clip(np.nan_to_num(standard, nan=0.0), -Z_CLIP, Z_CLIP)
            shape = self._forest.decision_function(embedded.transpose(0, 2, 1).reshape(-1, self.embed_steps))
        shape = shape.reshape(len(rows), len(self.signals))
        shape[~np.isfinite(scale)] = np.nan
        raw = np.column_stack([shape, forest_raw])
        # Pass 2: raw scores against the target's own raw scores so far, then bursts.
        for step in steps:
            with np.errstate(invalid="ignore", divide="ignore"):
                raw_z = np.abs(self._raw.z(rows[step], raw[step]))
            self._raw.update(rows[step], raw[step])
            evidence = np.column_stack(
                [_nanmax(value_z[step]), _nanmax(raw_z[:, :-1]), np.nan_to_num(raw_z[:, -1], nan=0.0)]
            ).mean(axis=1)
            recent = self._recent[rows[step]]
            fresh = evidence > recent.max(axis=1)
            self._recent[rows[step]] = np.column_stack([recent[:, 1:], evidence])
            out[step] = np.where(fresh, evidence / (1.0 + evidence), 0.0)
        return out


def _nanmax(x: np.ndarray) -> np.ndarray:
    """Row maxima ignoring NaN; 0 where a row has no value."""
    return np.where(np.isfinite(x), x, -np.inf).max(axis=1).clip(min=0.0)


def _steps(rows: np.ndarray) -> list[np.ndarray]:
    """Input row indices grouped so that each group holds each target at most once, groups in
    time order: the k-th row of every target goes into group k."""
    order = np.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    starts = np.flatnonzero(np.r_[True, sorted_rows[1:] != sorted_rows[:-1]])
    first = np.repeat(starts, np.diff(np.r_[starts, len(rows)]))
    occurrence = np.empty(len(rows), dtype=np.int64)
    occurrence[order] = np.arange(len(rows)) - first
    if occurrence.max() == 0:
        return [np.arange(len(rows))]
    group_order = np.argsort(occurrence, kind="stable")
    bounds = np.flatnonzero(np.diff(occurrence[group_order])) + 1
    return np.split(group_order, bounds)
