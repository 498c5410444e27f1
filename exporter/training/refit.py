"""Scheduled refits: a fresh anomaly detector, or a retrained classifier that must earn its place.

Both write a new version into the models directory and activate it; the
daemon's hot reload picks it up at the next cycle. A retrained classifier is
activated only when its PR-AUC on its own held-out period is at least that of
the serving bundle on exactly the same rows, so a bad week of data cannot
silently replace a good model.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score

from exporter.config import Settings
from exporter.features import Features, select
from exporter.models.anomaly import AnomalyDetector
from exporter.models.bundle import ModelBundle, save_bundle
from exporter.models.registry import activate
from exporter.sources.prometheus import PrometheusClient
from exporter.training.dataset import Dataset, TrainingOptions
from exporter.training.history import HistoryReader
from exporter.training.train import split_rows, train_bundle

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RetrainOutcome:
    version: str
    candidate_pr_auc: float
    serving_pr_auc: float
    activated: bool


def serving_options(bundle: ModelBundle, stride: int = 2) -> TrainingOptions:
    manifest = bundle.manifest
    return TrainingOptions(
        window_steps=manifest.window_steps,
        horizon_steps=round(manifest.horizon_seconds / manifest.step_seconds),
        stride=stride,
        partial_history_share=0.0,
    )


def _stamp(now: float) -> str:
    return f"{datetime.fromtimestamp(now, UTC):%Y%m%dT%H%M%SZ}"


def serving_pr_auc(serving: ModelBundle, dataset: Dataset, rows: np.ndarray) -> float:
    """PR-AUC of the serving bundle on the given rows of a dataset."""
    features = Features(dataset.X[rows].astype(np.float64), dataset.names)
    probability = serving.predict_proba(select(features, serving.manifest.features))
    y = dataset.y[rows]
    return float(average_precision_score(y, probability)) if 0 < y.sum() < len(y) else float("nan")


class Refitter:
    """Runs the refit jobs against Prometheus for whatever bundle is serving."""

    def __init__(
        self,
        settings: Settings,
        models_dir: Path,
        serving: Callable[[], ModelBundle | None],
        clock: Callable[[], float] = time.time,
        seed: int = 0,
    ) -> None:
        self.settings = settings
        self.models_dir = models_dir
        self.serving = serving
        self.clock = clock
        self.seed = seed
        self._client = PrometheusClient(settings.prometheus)

    def _read(self, bundle: ModelBundle, window: float) -> Dataset:
        end = self.clock()
        return HistoryReader(self.settings, serving_options(bundle), self._client).read(end - window, end)

    def close(self) -> None:
        """Abandon the history queries in flight (shutdown): a hung Prometheus must not hold it."""
        self._client.close()

    def refit_anomaly(self) -> str | None:
        """Fit a new detector on the healthy windows of the last ``anomaly.fit_window``."""
        bundle = self.serving()
        if bundle is None:
            return None
        dataset = self._read(bundle, self.settings.anomaly.fit_window)
        healthy = dataset.y == 0
        if healthy.sum() < 100:
            log.warning("anomaly refit skipped: too little history", extra={"rows": int(healthy.sum())})
            return None
        features = Features(dataset.X[healthy].astype(np.float64), dataset.names)
        detector = AnomalyDetector(seed=self.seed).fit(select(features, bundle.manifest.features))
        now = self.clock()
        manifest = bundle.manifest
        version = f"{manifest.version.split('+')[0]}+anomaly-{_stamp(now)}"
        training = manifest.training | {
            "anomaly_refit": {
                "window_seconds": self.settings.anomaly.fit_window,
                "rows": int(healthy.sum()),
                "at": _stamp(now),
            }
        }
        refitted = ModelBundle(
            manifest=dataclasses.replace(manifest, version=version, training=training, files={}),
            classifier_model=bundle.classifier_model,
            detector=detector,
        )
        self._publish(refitted)
        return version

    def retrain(self) -> RetrainOutcome | None:
        """Train on the last ``retrain.window``; activate only if not worse than the serving bundle."""
        serving = self.serving()
        if serving is None:
            return None
        options = dataclasses.replace(
            serving_options(serving),
            seed=self.seed,
            partial_history_share=TrainingOptions.partial_history_share,
        )
        dataset = self._read(serving, self.settings.retrain.window)
        if dataset.y.sum() == 0:
            log.warning("retrain skipped: no failures in the window")
            return None
        candidate = train_bundle(
            dataset,
            tuple(self.settings.queries),
            self.settings.step,
            options,
            "trained",
            {"source": "scheduled retrain"},
        )
        test = split_rows(dataset, options, self.settings.step).test
        outcome = RetrainOutcome(
            version=candidate.manifest.version,
            candidate_pr_auc=float(candidate.manifest.metrics["pr_auc"]),
            serving_pr_auc=serving_pr_auc(serving, dataset, test),
            activated=False,
        )
        if not outcome.candidate_pr_auc >= outcome.serving_pr_auc:
            log.warning(
                "retrained model is worse than the serving one, not activated",
                extra=dataclasses.asdict(outcome),
            )
            save_bundle(candidate, self.models_dir / candidate.manifest.version)
            return outcome
        self._publish(candidate)
        return dataclasses.replace(outcome, activated=True)

    def _publish(self, bundle: ModelBundle) -> None:
        save_bundle(bundle, self.models_dir / bundle.manifest.version)
        activate(self.models_dir, bundle.manifest.version)
        log.info("new model version activated", extra={"version": bundle.manifest.version})
