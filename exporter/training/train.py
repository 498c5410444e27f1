"""Fit a bundle from a labelled history, with an honest time-based split.

The history is cut in time into train / calibration / test periods (60/20/20 by
default). Rows within one window + horizon after a cut are dropped, so no
training window overlaps a calibration window and no label peeks across a cut.
The trees see only the train period, the calibration only its own, and the
test period is used once, for the metrics written into the manifest.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from exporter.features import feature_names, window_features
from exporter.frame import Frame
from exporter.models.anomaly import AnomalyDetector
from exporter.models.bundle import Manifest, ModelBundle, library_versions
from exporter.models.classifier import FailureClassifier
from exporter.training.evaluate import event_metrics, reliability_table, row_metrics
from exporter.training.labels import horizon_labels

log = logging.getLogger(__name__)

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
class TrainingOptions:
    window_steps: int = 60
    horizon_steps: int = 30
    stride: int = 2
    fractions: tuple[float, float] = (0.6, 0.2)  # train, calibration; the rest is test
    partial_history_share: float = 0.1
    seed: int = 0


def build_dataset(
    frame: Frame,
    failed: np.ndarray,
    options: TrainingOptions,
    progress: Callable[[int, int], None] | None = None,
) -> Dataset:
    """Features for every eligible window ending on a stride of the history.

    A share of windows get their oldest samples blanked so the model also knows
    targets with short histories (new pods, a daemon that just started).
    """
    labels = horizon_labels(failed, options.horizon_steps)
    ends = np.arange(options.window_steps - 1, len(frame.timestamps), options.stride)
    rows_target, rows_end = np.nonzero(labels.eligible[:, ends])
    rows_end = ends[rows_end]
    views = sliding_window_view(
        frame.values, options.window_steps, axis=1
    )  # [targets, starts, signals, window]
    rng = np.random.default_rng(options.seed)
    parts = []
    for begin in range(0, len(rows_end), CHUNK_ROWS):
        target = rows_target[begin : begin + CHUNK_ROWS]
        end = rows_end[begin : begin + CHUNK_ROWS]
        windows = views[target, end - options.window_steps + 1].transpose(0, 2, 1).copy()
        _blank_prefixes(windows, options.partial_history_share, rng)
        parts.append(window_features(windows, frame.timestamps[end], frame.signals).values.astype(np.float32))
        if progress:
            progress(min(begin + CHUNK_ROWS, len(rows_end)), len(rows_end))
    starts_target, starts_index = np.nonzero(labels.starts)
    return Dataset(
        X=np.concatenate(parts) if parts else np.empty((0, len(feature_names(frame.signals))), np.float32),
        y=labels.positive[rows_target, rows_end].astype(np.int8),
        target=rows_target,
        time=frame.timestamps[rows_end],
        names=feature_names(frame.signals),
        failure_target=starts_target,
        failure_time=frame.timestamps[starts_index],
    )


def _blank_prefixes(windows: np.ndarray, share: float, rng: np.random.Generator) -> None:
    chosen = rng.random(len(windows)) < share
    keep = rng.integers(2, windows.shape[1], size=len(windows))
    positions = np.arange(windows.shape[1])
    blank = chosen[:, None] & (positions[None, :] < (windows.shape[1] - keep)[:, None])
    windows[blank] = np.nan


def time_split(times: np.ndarray, fractions: tuple[float, float], gap: float) -> tuple[np.ndarray, ...]:
    """Masks for train / calibration / test by time, with a gap after each cut."""
    first, last = times.min(), times.max()
    cut1 = first + fractions[0] * (last - first)
    cut2 = first + (fractions[0] + fractions[1]) * (last - first)
    train = times <= cut1
    calibration = (times > cut1 + gap) & (times <= cut2)
    test = times > cut2 + gap
    return train, calibration, test


def train_bundle(
    dataset: Dataset,
    signals: tuple[str, ...],
    step: float,
    options: TrainingOptions,
    kind: str,
    training_info: dict,
) -> ModelBundle:
    """Fit both models on the train period, calibrate, measure on the test period."""
    gap = (options.window_steps + options.horizon_steps) * step
    train, calibration, test = time_split(dataset.time, options.fractions, gap)
    log.info(
        "fitting",
        extra={
            "train_rows": int(train.sum()),
            "calibration_rows": int(calibration.sum()),
            "test_rows": int(test.sum()),
        },
    )
    classifier = FailureClassifier(seed=options.seed).fit(
        dataset.X[train], dataset.y[train], dataset.X[calibration], dataset.y[calibration]
    )
    healthy_train = train & (dataset.y == 0)
    detector = AnomalyDetector(seed=options.seed).fit(dataset.X[healthy_train])
    probability = classifier.predict_proba(dataset.X[test])
    metrics = measure(dataset, test, probability, options.horizon_steps * step)
    trained_at = datetime.now(UTC).replace(microsecond=0)
    manifest = Manifest(
        version=f"{kind}-{trained_at:%Y%m%dT%H%M%SZ}",
        kind=kind,
        trained_at=trained_at.isoformat(),
        horizon_seconds=options.horizon_steps * step,
        step_seconds=step,
        window_steps=options.window_steps,
        signals=signals,
        features=dataset.names,
        calibration=classifier.calibration_,
        training=training_info
        | {
            "start": _iso(dataset.time.min()),
            "end": _iso(dataset.time.max()),
            "rows": {
                "train": int(train.sum()),
                "calibration": int(calibration.sum()),
                "test": int(test.sum()),
            },
            "seed": options.seed,
        },
        metrics=metrics,
        libraries=library_versions(),
    )
    return ModelBundle(manifest=manifest, classifier=classifier, detector=detector)


def measure(dataset: Dataset, test: np.ndarray, probability: np.ndarray, horizon: float) -> dict:
    """Row and event metrics on the test period only."""
    test_start = dataset.time[test].min()
    in_test = dataset.failure_time >= test_start + horizon
    y = dataset.y[test]
    return {
        "split": "test",
        "period_start": _iso(test_start),
        **row_metrics(y, probability),
        **event_metrics(
            dataset.target[test],
            dataset.time[test],
            probability,
            dataset.failure_target[in_test],
            dataset.failure_time[in_test],
            horizon,
        ),
        "reliability": reliability_table(y, probability),
    }


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(float(timestamp), UTC).isoformat()
