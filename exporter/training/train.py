"""Fit a bundle from a labelled history, with an honest time-based split.

The history is cut in time into train / calibration / test periods (60/20/20 by
default). Rows within one window + horizon after a cut are dropped, so no
training window overlaps a calibration window and no label peeks across a cut.
The trees see only the train period, the calibration only its own, and the
test period is used once, for the metrics written into the manifest.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import numpy as np

from exporter.models.anomaly import AnomalyDetector
from exporter.models.bundle import Manifest, ModelBundle, library_versions
from exporter.models.classifier import FailureClassifier
from exporter.models.drift import reference_distribution
from exporter.training.dataset import Dataset, TrainingOptions
from exporter.training.evaluate import evaluation_report, iso_time

log = logging.getLogger(__name__)


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
    importance = classifier.importance(len(dataset.names))
    metrics = evaluation_report(dataset, test, probability, options.horizon_steps, step, importance, signals)
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
        reference=reference_distribution(dataset.X[train]),
        training=training_info
        | {
            "start": iso_time(dataset.time.min()),
            "end": iso_time(dataset.time.max()),
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
