"""Fit a bundle from a labelled history, with an honest split.

Rows are divided into train / calibration / test (training/dataset.py SplitOptions):
by time (60/20/20 by default, or at given times), leaving one window + horizon out
before each cut so no training window overlaps a later one and no label peeks across
a cut; or by whole targets. The trees see only the train rows, the calibration only
its own, and the test rows are used once, for the metrics written into the manifest.

Little data is common (two days with a handful of incidents): when the calibration
period holds no failure, the calibration is cross-validated on the train and
calibration rows together (contiguous time folds, gaps around each); when a part
cannot be used at all the error says which part lacks what and where to move the cut.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from exporter.models.anomaly import AnomalyDetector
from exporter.models.bundle import Manifest, ModelBundle, library_versions
from exporter.models.classifier import FailureClassifier
from exporter.models.drift import reference_distribution
from exporter.training.dataset import Dataset, SplitOptions, TrainingOptions, drop_signals
from exporter.training.evaluate import evaluation_report, iso_time, threshold_for_false_alarms

log = logging.getLogger(__name__)

CV_FOLDS = 3


class SplitError(ValueError):
    """The history cannot be split as asked; the message says what is missing."""


@dataclass(frozen=True)
class Periods:
    """Row masks of the three parts, and how they were made (for the manifest)."""

    train: np.ndarray
    calibration: np.ndarray
    test: np.ndarray
    description: dict


def split_rows(dataset: Dataset, options: TrainingOptions, step: float) -> Periods:
    """Train / calibration / test masks as ``options.split`` asks; raises SplitError."""
    split = options.split
    gap = split.gap if split.gap is not None else (options.window_steps + options.horizon_steps) * step
    if len(dataset.time) == 0:
        raise SplitError("no windows to train on: is the history longer than one window?")
    if split.by == "target":
        if split.calibrate_from is not None or split.test_from is not None:
            raise SplitError("--split-by target divides whole targets; it takes fractions, not times")
        periods = _by_target(dataset, split, options.seed)
    elif split.by == "time":
        periods = _by_time(dataset, split, gap)
    else:
        raise SplitError(f"split by {split.by!r}: expected 'time' or 'target'")
    _require_failures(dataset, periods, options, step, gap)
    return periods


def _by_time(dataset: Dataset, split: SplitOptions, gap: float) -> Periods:
    times = dataset.time
    first, last = float(times.min()), float(times.max())
    f_train, f_cal = split.fractions
    if not (f_train > 0 and f_cal >= 0 and f_train + f_cal < 1):
        raise SplitError(f"split fractions {split.fractions}: need train > 0, calibration >= 0, sum < 1")
    test_from = split.test_from if split.test_from is not None else first + (f_train + f_cal) * (last - first)
    if split.calibrate_from is not None:
        calibrate_from = split.calibrate_from
    elif split.test_from is not None:  # keep the default proportion of train to calibration
        calibrate_from = first + f_train / (f_train + f_cal) * (test_from - first)
    else:
        calibrate_from = first + f_train * (last - first)
    for name, cut in (("--test-from", test_from), ("--calibrate-from", calibrate_from)):
        if not first < cut <= last:
            raise SplitError(
                f"{name} {iso_time(cut)} is outside the history ({iso_time(first)} .. {iso_time(last)})"
            )
    if calibrate_from > test_from:
        raise SplitError(
            f"--calibrate-from {iso_time(calibrate_from)} is after --test-from {iso_time(test_from)}"
        )
    return Periods(
        train=times < calibrate_from - gap,
        calibration=(times >= calibrate_from) & (times < test_from - gap),
        test=times >= test_from,
        description={
            "by": "time",
            "calibrate_from": iso_time(calibrate_from),
            "test_from": iso_time(test_from),
            "gap_seconds": gap,
        },
    )


def _by_target(dataset: Dataset, split: SplitOptions, seed: int) -> Periods:
    targets = np.unique(dataset.target)
    shuffled = np.random.default_rng(seed).permutation(targets)
    n_train = round(split.fractions[0] * len(targets))
    n_cal = round(split.fractions[1] * len(targets))
    if n_train < 1 or len(targets) - n_train - n_cal < 1:
        raise SplitError(
            f"--split-by target needs at least one target for training and one for testing; "
            f"the history has {len(targets)} target(s) (fractions {split.fractions})"
        )
    groups = shuffled[:n_train], shuffled[n_train : n_train + n_cal], shuffled[n_train + n_cal :]
    train, calibration, test = (np.isin(dataset.target, group) for group in groups)
    return Periods(train, calibration, test, {"by": "target", "targets": [len(g) for g in groups]})


def _require_failures(
    dataset: Dataset, periods: Periods, options: TrainingOptions, step: float, gap: float
) -> None:
    horizon = options.horizon_steps * step
    starts = np.sort(dataset.failure_time)
    where = (
        f"failures start at {', '.join(iso_time(t) for t in starts[:8])}" if len(starts) else "no failures"
    )
    if not len(starts) or dataset.y.sum() == 0:
        raise SplitError(
            "the history holds no failures: check the failure definition (failure.query / --incidents)"
        )
    by_time = periods.description["by"] == "time"
    for name, mask in (("training", periods.train | periods.calibration), ("test", periods.test)):
        classes = set(np.unique(dataset.y[mask]).tolist())
        if classes == {0, 1}:
            continue
        if not mask.any():
            raise SplitError(f"the {name} part holds no windows; move the cuts ({where})")
        lacking = "failures" if 1 not in classes else "healthy windows"
        if by_time and name == "test" and lacking == "failures":
            latest = iso_time(starts[-1] - horizon)
            raise SplitError(f"the test period holds 0 failures: move --test-from before {latest} ({where})")
        if by_time and lacking == "failures":
            earliest = iso_time(starts[0] + horizon + gap)
            raise SplitError(
                f"the training period holds 0 failures: move --calibrate-from (and --test-from) after "
                f"{earliest} ({where})"
            )
        raise SplitError(f"the {name} part holds no {lacking} ({where}); change the split")


def fit_classifier(
    dataset: Dataset, periods: Periods, options: TrainingOptions, signals: tuple[str, ...], step: float
) -> tuple[FailureClassifier, np.ndarray, np.ndarray, str]:
    """Trees on the train rows, Platt on the calibration rows (or cross-validated when those
    hold no failure). Returns the classifier, the rows its calibration was measured on,
    their calibrated probabilities, and which calibration was used.

    The trees learn from rows that lost whole signals at random (``signal_dropout``, see
    dataset.drop_signals), so that absence carries no evidence; the calibration and the
    test read the rows as recorded, so probabilities are calibrated on what is served.
    """
    rng = np.random.default_rng([options.seed, 1])
    dropped = drop_signals(dataset.X, dataset.names, signals, options.signal_dropout, rng)
    X, y = dataset.X, dataset.y
    train, calibration = periods.train, periods.calibration
    if set(np.unique(y[calibration]).tolist()) == {0, 1} and set(np.unique(y[train]).tolist()) == {0, 1}:
        classifier = FailureClassifier(seed=options.seed).fit(
            dropped[train], y[train], X[calibration], y[calibration]
        )
        return classifier, calibration, classifier.predict_proba(X[calibration]), "calibration period"
    pool = train | calibration
    margins, scored = _out_of_fold_margins(
        dropped, X, y, dataset.time, dataset.target, pool, periods, options, step
    )
    if set(np.unique(y[scored]).tolist()) != {0, 1}:
        raise SplitError("too few failures to cross-validate the calibration: record longer or add incidents")
    classifier = FailureClassifier(seed=options.seed).fit_trees(dropped[pool], y[pool])
    classifier.fit_calibration(margins, y[scored])
    return classifier, scored, classifier.calibrate(margins), f"{CV_FOLDS}-fold cross-validated"


def _out_of_fold_margins(dropped, X, y, time, target, pool, periods, options, step):
    """Margins of each pool row (as recorded) from trees fitted on the other folds' rows
    (with signals dropped), never on its own fold nor its gap."""
    rows = np.flatnonzero(pool)
    if periods.description["by"] == "target":
        groups = np.unique(target[rows])
        fold_of = {g: i % CV_FOLDS for i, g in enumerate(groups)}
        folds = np.array([fold_of[t] for t in target[rows]])
        gap = 0.0
    else:
        edges = np.quantile(time[rows], np.linspace(0, 1, CV_FOLDS + 1))
        folds = np.clip(np.searchsorted(edges, time[rows], side="right") - 1, 0, CV_FOLDS - 1)
        gap = (options.window_steps + options.horizon_steps) * step
    margins, scored = [], []
    for fold in range(CV_FOLDS):
        held = rows[folds == fold]
        if not len(held):
            continue
        lo, hi = time[held].min() - gap, time[held].max() + gap
        outside = (time[rows] < lo) | (time[rows] > hi) if gap else np.ones(len(rows), bool)
        fit = rows[(folds != fold) & outside]
        if set(np.unique(y[fit]).tolist()) != {0, 1}:
            continue
        trees = FailureClassifier(seed=options.seed).fit_trees(dropped[fit], y[fit])
        margins.append(trees.margin(X[held]))
        scored.append(held)
    if not scored:
        raise SplitError("too few failures to cross-validate the calibration: record longer or add incidents")
    scored_rows = np.concatenate(scored)
    mask = np.zeros(len(y), bool)
    mask[scored_rows] = True
    order = np.argsort(scored_rows)
    return np.concatenate(margins)[order], mask


def train_bundle(
    dataset: Dataset,
    signals: tuple[str, ...],
    step: float,
    options: TrainingOptions,
    kind: str,
    training_info: dict,
) -> ModelBundle:
    """Fit both models on the train part, calibrate, measure on the test part."""
    periods = split_rows(dataset, options, step)
    log.info(
        "fitting",
        extra={
            "train_rows": int(periods.train.sum()),
            "calibration_rows": int(periods.calibration.sum()),
            "test_rows": int(periods.test.sum()),
        },
    )
    classifier, tuned, tuned_probability, calibrated_on = fit_classifier(
        dataset, periods, options, signals, step
    )
    horizon = options.horizon_steps * step
    supported = threshold_for_false_alarms(
        dataset.target[tuned],
        dataset.time[tuned],
        tuned_probability,
        (dataset.failure_target, dataset.failure_time),
        horizon,
    )
    trees_saw = (
        periods.train if calibrated_on == "calibration period" else periods.train | periods.calibration
    )
    healthy_train = trees_saw & (dataset.y == 0)
    detector = AnomalyDetector(seed=options.seed).fit(dataset.X[healthy_train])
    probability = classifier.predict_proba(dataset.X[periods.test])
    importance = classifier.importance(len(dataset.names))
    metrics = evaluation_report(
        dataset, periods.test, probability, options.horizon_steps, step, importance, signals, supported
    )
    trained_at = datetime.now(UTC).replace(microsecond=0)
    manifest = Manifest(
        version=f"{kind}-{trained_at:%Y%m%dT%H%M%SZ}",
        kind=kind,
        trained_at=trained_at.isoformat(),
        horizon_seconds=horizon,
        step_seconds=step,
        window_steps=options.window_steps,
        signals=signals,
        features=dataset.names,
        calibration=classifier.calibration_,
        reference=reference_distribution(dataset.X[periods.train]),
        training=training_info
        | {
            "start": iso_time(dataset.time.min()),
            "end": iso_time(dataset.time.max()),
            "split": periods.description | {"calibration": calibrated_on},
            "signal_dropout": options.signal_dropout,
            "rows": {
                "train": int(periods.train.sum()),
                "calibration": int(periods.calibration.sum()),
                "test": int(periods.test.sum()),
            },
            "seed": options.seed,
        },
        metrics=metrics,
        libraries=library_versions(),
    )
    return ModelBundle(manifest=manifest, classifier_model=classifier.model_bytes(), detector=detector)
