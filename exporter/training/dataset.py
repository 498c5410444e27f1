"""Training rows: features of many (target, time) windows with their labels.

The same ``window_rows`` serves the in-memory simulator history and chunks
of Prometheus history, so both produce identical features for identical data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from exporter.features import feature_names, signal_weights, window_features
from exporter.frame import Frame
from exporter.training.labels import horizon_labels

CHUNK_ROWS = 50_000


@dataclass(frozen=True)
class Dataset:
    """Feature rows of many (target, time) windows with their labels."""

    X: np.ndarray
    y: np.ndarray
    target: np.ndarray  # row -> target index
    time: np.ndarray  # row -> Unix seconds at the window's end
    names: tuple[str, ...]
    failure_target: np.ndarray  # every failure start in the history
    failure_time: np.ndarray


@dataclass(frozen=True)
class SplitOptions:
    """How rows are divided into train / calibration / test (see training/train.py).

    ``by="time"``: periods cut at ``calibrate_from`` / ``test_from`` (Unix s), or at the
    ``fractions`` of the history when not given; ``by="target"``: whole targets, the
    ``fractions`` of them, so no target is in two parts. ``gap`` (seconds, default one
    window + horizon) is left out before each time cut.
    """

    fractions: tuple[float, float] = (0.6, 0.2)  # train, calibration; the rest is test
    calibrate_from: float | None = None
    test_from: float | None = None
    gap: float | None = None
    by: str = "time"


DEFAULT_SPLIT = SplitOptions()


@dataclass(frozen=True)
class TrainingOptions:
    window_steps: int = 60
    horizon_steps: int = 30
    stride: int = 2
    split: SplitOptions = DEFAULT_SPLIT
    partial_history_share: float = 0.1
    # Chance that a training window loses a whole signal: see drop_signals.
    signal_dropout: float = 0.35
    seed: int = 0


def build_dataset(
    frame: Frame,
    failed: np.ndarray,
    options: TrainingOptions,
    progress: Callable[[int, int], None] | None = None,
) -> Dataset:
    """Features for every eligible window ending on a stride of an in-memory history."""
    labels = horizon_labels(failed, options.horizon_steps)
    ends = np.arange(options.window_steps - 1, len(frame.timestamps), options.stride)
    rows_target, rows_end = np.nonzero(labels.eligible[:, ends])
    rows_end = ends[rows_end]
    rng = np.random.default_rng(options.seed)
    X = window_rows(
        frame.values, frame.timestamps, rows_target, rows_end, frame.signals, options, rng, progress
    )
    starts_target, starts_index = np.nonzero(labels.starts)
    return Dataset(
        X=X,
        y=labels.positive[rows_target, rows_end].astype(np.int8),
        target=rows_target,
        time=frame.timestamps[rows_end],
        names=feature_names(frame.signals),
        failure_target=starts_target,
        failure_time=frame.timestamps[starts_index],
    )


def window_rows(
    values: np.ndarray,
    timestamps: np.ndarray,
    target: np.ndarray,
    end: np.ndarray,
    signals: tuple[str, ...],
    options: TrainingOptions,
    rng: np.random.Generator,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """float32 features of the windows of ``values[target]`` ending at index ``end``.

    A share of windows get their oldest samples blanked so the model also knows
    targets with short histories (new pods, a daemon that just started).
    """
    views = sliding_window_view(values, options.window_steps, axis=1)  # [targets, starts, signals, window]
    parts = [np.empty((0, len(feature_names(signals))), np.float32)]
    for begin in range(0, len(end), CHUNK_ROWS):
        rows_target = target[begin : begin + CHUNK_ROWS]
        rows_end = end[begin : begin + CHUNK_ROWS]
        windows = views[rows_target, rows_end - options.window_steps + 1].transpose(0, 2, 1).copy()
        _blank_prefixes(windows, options.partial_history_share, rng)
        parts.append(window_features(windows, signals).values.astype(np.float32))
        if progress:
            progress(min(begin + CHUNK_ROWS, len(end)), len(end))
    return np.concatenate(parts)


def _blank_prefixes(windows: np.ndarray, share: float, rng: np.random.Generator) -> None:
    chosen = rng.random(len(windows)) < share
    keep = rng.integers(2, windows.shape[1], size=len(windows))
    positions = np.arange(windows.shape[1])
    blank = chosen[:, None] & (positions[None, :] < (windows.shape[1] - keep)[:, None])
    windows[blank] = np.nan


def drop_signals(
    X: np.ndarray, names: tuple[str, ...], signals: tuple[str, ...], share: float, rng: np.random.Generator
) -> np.ndarray:
    """A copy of feature rows in which each signal a row has is dropped with probability ``share``.

    Real pods lack whole signals (no HTTP histogram, no limit, a broken query) for reasons
    that have nothing to do with failing. Dropping signals at random, from failures and
    healthy windows alike, teaches XGBoost's missing-value branches that absence is no
    evidence: a window without a signal scores what the remaining signals say. A signal
    absent from the whole window has NaN in every feature it owns (features.py), so
    blanking those columns is the same as never having had the signal. A row keeps at
    least one signal it had, since a target with none is not scored at all.
    """
    weights = signal_weights(names, signals) > 0  # [features, signals]
    had = np.isfinite(X[:, [names.index(f"{s}_missing") for s in signals]])
    dropped = (rng.random(had.shape) < share) & had
    emptied = had.any(axis=1) & ~(had & ~dropped).any(axis=1)
    if emptied.any():
        keep = np.argmax(had[emptied] * rng.random((int(emptied.sum()), len(signals))), axis=1)
        dropped[np.flatnonzero(emptied), keep] = False
    out = X.copy()
    out[(dropped.astype(np.int8) @ weights.T.astype(np.int8)) > 0] = np.nan
    return out
