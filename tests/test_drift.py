"""Feature drift: stable data reads low, a shifted signal reads high on its own gauge."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import Tiny
from prometheus_client.parser import text_string_to_metric_families

from exporter.config import load_settings
from exporter.models.drift import population_stability, reference_distribution
from exporter.service.daemon import Daemon
from exporter.service.drift import DriftTracker
from exporter.sources.simulate import SimulatedCluster, SimulateSource


def test_psi_is_zero_for_the_reference_itself_and_grows_with_a_shift() -> None:
    rng = np.random.default_rng(1)
    training = rng.normal(size=(4000, 2))
    reference = reference_distribution(training)
    same, shifted = rng.normal(size=(4000, 2)), rng.normal(size=(4000, 2)) + np.array([0.0, 1.0])

    assert population_stability(reference, training) == pytest.approx([0.0, 0.0], abs=1e-9)
    stable = population_stability(reference, same)
    moved = population_stability(reference, shifted)
    assert np.all(stable < 0.05)
    assert moved[0] < 0.05 and moved[1] > 0.5


def test_missing_values_count_as_their_own_bin() -> None:
    training = np.arange(1000.0)[:, None]
    reference = reference_distribution(training)
    half_missing = np.where(np.arange(1000) % 2 == 0, np.nan, np.arange(1000.0))[:, None]
    assert population_stability(reference, half_missing)[0] > 1.0


def test_shifted_memory_drifts_memory_only(tiny: Tiny) -> None:
    bundle, dataset = tiny.bundle, tiny.dataset
    later = np.flatnonzero(dataset.time > np.quantile(dataset.time, 0.6))  # after the training period
    recent = dataset.X[np.random.default_rng(0).choice(later, 3000, replace=False)].astype(np.float64)
    tracker = DriftTracker()
    stable = dict(zip(bundle.manifest.signals, tracker.update(bundle, recent), strict=True))

    shifted = recent.copy()
    for column, name in enumerate(bundle.manifest.features):
        if name in ("memory_last", "memory_mean", "memory_min", "memory_max"):
            shifted[:, column] += 0.35
    drifted = dict(zip(bundle.manifest.signals, DriftTracker().update(bundle, shifted), strict=True))

    assert max(stable.values()) < 0.25, stable
    assert drifted["memory"] > 0.25 > drifted["cpu"], drifted
    assert drifted["errors"] == pytest.approx(stable["errors"])


def test_daemon_exports_drift_per_signal(tiny: Tiny) -> None:
    source = SimulateSource(SimulatedCluster(targets=8, seed=4), window=60)
    daemon = Daemon(load_settings(None, environ={}), source, tiny.bundle)
    daemon.cycle()
    text = daemon.exposition.render()[0].decode()
    drift = {
        sample.labels["signal"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "failure_predictor_feature_drift"
    }
    assert set(drift) == {"cpu", "memory", "latency", "errors"}
    assert all(value >= 0 for value in drift.values())
