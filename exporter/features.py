"""Window features for every target at once.

All arithmetic runs on ``[rows, time]`` arrays with NaN masks, so scoring 10,000
targets costs the same few numpy calls as scoring ten. Rows are targets in the
daemon and (target, time) samples in training: the same code serves both, which
is what keeps training and serving features identical.

Rates are per *step*, not per second: a window is a fixed number of steps, so a
model trained on 60 s steps reads a 1 s-step window of the same shape the same way.

Missing data has two meanings, and the features keep them apart:

- a signal a target does not report at all in its window (no histogram, no limit, a
  disabled or empty query) is *unknown*: every feature of it is NaN, which XGBoost
  routes down the branch it learned for "absent" (training masks whole signals at
  random, so that branch carries no evidence either way);
- a signal that *stops* (samples in the past, none in the recent steps) is evidence:
  ``<signal>_stale`` counts the steps since its last sample, and ``<signal>_recent_missing``
  the share of the recent steps without one (a pod that is often idle misses as many samples
  recently as before; a hung one misses all of them at once).

Spiky signals (p99s, error ratios) also get medians, of the window and of its recent steps:
a level that moved shows in them where one spike swings ``last``, ``max`` and the slopes.

There are no time-of-day features: incidents cluster in working hours on most
clusters, and a classifier that learns the clock pages by the clock.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from exporter.frame import Frame
from exporter.kernels import by_rows, series_stats

SHORT_SPAN = 10  # steps: the "recent" part of the window for short-span rates
EDGE = 5  # steps averaged at each end of the window for the long-span rate
LIMITED_SIGNALS = ("cpu", "memory")  # signals expressed as a fraction of a limit
EXHAUSTION_CAP = 1000.0  # steps; "not approaching the limit" is reported as this
# Both models read float32: a feature beyond its range is as unusable as an infinity.
FEATURE_LIMIT = float(np.finfo(np.float32).max)
PER_SIGNAL = (
    "last",
    "mean",
    "std",
    "min",
    "max",
    "slope",
    "zscore",
    "rate_short",
    "rate_long",
    "rel_change",
    "missing",
    "stale",
    "median",
    "recent_median",
    "level_shift",
    "recent_missing",
)


@dataclass(frozen=True)
class Features:
    """A feature matrix: one row per window, columns named by ``names``."""

    values: np.ndarray
    names: tuple[str, ...]

    def column(self, name: str) -> np.ndarray:
        return self.values[:, self.names.index(name)]


def feature_names(signals: Sequence[str]) -> tuple[str, ...]:
    """Column order for a signal list; the model bundle stores it to check at load."""
    return _feature_names(tuple(signals))


@functools.lru_cache(maxsize=16)
def _feature_names(signals: tuple[str, ...]) -> tuple[str, ...]:
    names = [f"{signal}_{stat}" for signal in signals for stat in PER_SIGNAL]
    names += [f"{signal}_exhaustion_steps" for signal in LIMITED_SIGNALS if signal in signals]
    if "cpu" in signals and "memory" in signals:
        names += ["cpu_x_memory", "resource_pressure"]
    if "errors" in signals and "latency" in signals:
        names += ["errors_latency_corr", "errors_x_latency"]
    return tuple(names)


def frame_features(frame: Frame) -> Features:
    """Features of every target in a Frame, as of its newest timestamp."""
    return window_features(frame.values, frame.signals)


def absent_signals(values: np.ndarray) -> np.ndarray:
    """``[rows, signals]``: True where a row has no sample of that signal in its whole window."""
    return ~np.isfinite(values).any(axis=1)


def reporting(frame: Frame, absent: np.ndarray | None = None) -> Frame:
    """The frame without targets that report no signal at all: those are not scored or exported.
    ``absent`` is ``absent_signals(frame.values)`` when the caller has it already."""
    keep = ~(absent_signals(frame.values) if absent is None else absent).all(axis=1)
    if keep.all():
        return frame
    return Frame(
        values=frame.values[keep],
        targets=tuple(t for t, kept in zip(frame.targets, keep, strict=True) if kept),
        timestamps=frame.timestamps,
        signals=frame.signals,
    )


def window_features(values: np.ndarray, signals: Sequence[str]) -> Features:
    """Features of ``values[rows, time, signals]`` windows, as of each window's newest step."""
    rows, _, count = values.shape
    # One compiled pass over every (row, signal) series, read in place (no transposed copy of
    # the window), so a target's features are computed alike alone (the API) and among all
    # targets (the cycle).
    stats = by_rows(series_stats, values.transpose(0, 2, 1), SHORT_SPAN, EDGE)

    def stat(signal: str, name: str) -> np.ndarray:
        return stats[:, signals.index(signal), PER_SIGNAL.index(name)]

    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        cross = _cross_signal(stat, values, signals)
    # feature_names' order: every signal's PER_SIGNAL, then the cross-signal features.
    cross_columns = np.column_stack(list(cross.values())) if cross else np.empty((rows, 0))
    matrix = np.concatenate([stats.reshape(rows, count * len(PER_SIGNAL)), cross_columns], axis=1)
    return Features(values=missing_if_unusable(matrix), names=feature_names(signals))


def missing_if_unusable(matrix: np.ndarray) -> np.ndarray:
    """Mark as missing (NaN) every feature that overflowed, here or in the models' float32.

    One absurd sample (1e308 in one pod's cpu) makes that pod's std, slope or products
    infinite; XGBoost and the forest refuse a whole matrix holding one such cell, which
    would stop scoring for every target. NaN is what both read as "unknown", so only the
    cells that overflowed, of that target only, lose their value.
    """
    with np.errstate(invalid="ignore"):
        matrix[~(np.abs(matrix) <= FEATURE_LIMIT)] = np.nan
    return matrix


def _cross_signal(
    stat: Callable[[str, str], np.ndarray], values: np.ndarray, signals: Sequence[str]
) -> dict[str, np.ndarray]:
    """The cross-signal features, in feature_names' order (``stat(signal, name)``: a column)."""
    cross: dict[str, np.ndarray] = {}
    for signal in LIMITED_SIGNALS:
        if signal in signals:
            cross[f"{signal}_exhaustion_steps"] = exhaustion_steps(
                stat(signal, "last"), stat(signal, "slope")
            )
    if "cpu" in signals and "memory" in signals:
        cpu, memory = stat("cpu", "last"), stat("memory", "last")
        cross["cpu_x_memory"] = cpu * memory
        cross["resource_pressure"] = np.maximum(cpu, memory)  # NaN without both, like every cross feature
    if "errors" in signals and "latency" in signals:
        errors = values[:, :, signals.index("errors")]
        latency = values[:, :, signals.index("latency")]
        cross["errors_latency_corr"] = nan_correlation(errors, latency)
        cross["errors_x_latency"] = stat("errors", "last") * stat("latency", "last") / stat("latency", "mean")
    return cross


def exhaustion_steps(last: np.ndarray, slope: np.ndarray) -> np.ndarray:
    """Steps until a limit ratio reaches 1.0 at the current slope, capped at EXHAUSTION_CAP."""
    steps = np.where(slope > 0, (1.0 - last) / slope, EXHAUSTION_CAP)
    steps = np.clip(steps, 0.0, EXHAUSTION_CAP)
    return np.where(np.isfinite(last) & np.isfinite(slope), steps, np.nan)


def nan_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation per row over times where both are present; 0 for flat series."""
    both = np.isfinite(a) & np.isfinite(b)
    count = both.sum(axis=1)
    a_mean = np.where(both, a, 0.0).sum(axis=1) / count
    b_mean = np.where(both, b, 0.0).sum(axis=1) / count
    da = np.where(both, a - a_mean[:, None], 0.0)
    db = np.where(both, b - b_mean[:, None], 0.0)
    spread = np.sqrt((da * da).sum(axis=1) * (db * db).sum(axis=1))
    corr = np.where(spread > 0, (da * db).sum(axis=1) / np.where(spread > 0, spread, 1.0), 0.0)
    return np.where(count >= 3, corr, np.nan)


def select(features: Features, names: Sequence[str]) -> np.ndarray:
    """Columns in the order a model expects (float64); a feature this frame lacks is all-NaN."""
    columns, absent = _column_order(tuple(features.names), tuple(names))
    out = np.ascontiguousarray(features.values[:, columns], dtype=np.float64)
    if absent.any():
        out[:, absent] = np.nan
    return out


@functools.lru_cache(maxsize=16)
def _column_order(have: tuple[str, ...], want: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Where each wanted name is among ``have`` (0 where absent) and which are absent: worked
    out once per pair of name lists, not per call (a model asks for the same ones every time)."""
    index = {name: i for i, name in enumerate(have)}
    columns = np.array([index.get(name, 0) for name in want], dtype=np.intp)
    absent = np.array([name not in index for name in want], dtype=bool)
    columns.flags.writeable = absent.flags.writeable = False
    return columns, absent


def signal_weights(names: Sequence[str], signals: Sequence[str]) -> np.ndarray:
    """``[features, signals]`` shares: how much of each feature belongs to each signal.

    Per-signal features belong wholly to their signal, cross-signal features are
    split evenly between the signals they combine; a name of no signal belongs to none.
    """
    weights = np.zeros((len(names), len(signals)))
    pairs = {"cpu_x_memory": ("cpu", "memory"), "resource_pressure": ("cpu", "memory")}
    pairs |= {"errors_latency_corr": ("errors", "latency"), "errors_x_latency": ("errors", "latency")}
    # Exact names, not prefixes: "cpu_throttle_mean" belongs to "cpu_throttle", not to "cpu".
    stats = (*PER_SIGNAL, "exhaustion_steps")
    pairs |= {f"{signal}_{stat}": (signal,) for signal in signals for stat in stats}
    for row, name in enumerate(names):
        owners = pairs.get(name, ())
        for owner in owners:
            if owner in signals:
                weights[row, list(signals).index(owner)] = 1.0 / len(owners)
    return weights
