"""The daemon's health as Prometheus metrics, on the registry ``/metrics`` starts with.

Self-monitoring metrics with bounded labels live in ordinary prometheus_client metrics; the
model's and the last Snapshot's health come from a custom Collector at scrape time. The
per-target families are not here: exposition.py renders them from each Snapshot, so a target
that vanished is simply not written (a long-lived ``Gauge.labels(...)`` per target would leak
stale series forever).
"""

from __future__ import annotations

import platform
from collections.abc import Iterator
from importlib import metadata

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter import __version__
from exporter.service.state import State

STAGES = ("query", "features", "score", "publish")
# The libraries a bundle's behaviour depends on (label prefix: distributions that provide it),
# reported next to the package version.
BUILD_LIBRARIES = {
    "numpy": ("numpy",),
    "scikit_learn": ("scikit-learn",),
    "xgboost": ("xgboost-cpu", "xgboost"),
    "pyod": ("pyod",),
}


def installed_version(distributions: tuple[str, ...]) -> str:
    """The version of the first of ``distributions`` installed, or "" when none is."""
    for name in distributions:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return ""


def build_labels() -> dict[str, str]:
    """Versions of the package, Python and the model libraries."""
    labels = {"version": __version__, "python_version": platform.python_version()}
    for prefix, distributions in BUILD_LIBRARIES.items():
        labels[f"{prefix}_version"] = installed_version(distributions)
    return labels


class SelfMetrics:
    """Counters and histograms the scoring cycle updates as it runs."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.cycle_duration = Histogram(
            "failure_predictor_cycle_duration_seconds",
            "Time spent per stage of a scoring cycle.",
            ["stage"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        )
        self.query_errors = Counter(
            "failure_predictor_query_errors_total",
            "Signal queries that failed, by signal and reason.",
            ["signal", "reason"],
            registry=registry,
        )
        self.model_load_errors = Counter(
            "failure_predictor_model_load_errors_total",
            "Model bundles that failed to load and were refused (the previous one kept serving).",
            registry=registry,
        )
        self.cycles = Counter(
            "failure_predictor_cycles_total",
            "Scoring cycles run, by outcome (success or failure).",
            ["outcome"],
            registry=registry,
        )
        self.targets_missing_signal = Gauge(
            "failure_predictor_targets_missing_signal",
            "Targets scored in the last cycle without any sample of this signal in their window "
            "(scored from the other signals).",
            ["signal"],
            registry=registry,
        )
        self.warmup_errors = Counter(
            "failure_predictor_anomaly_warmup_errors_total",
            "Anomaly warm-ups whose history could not be read (those targets started cold), by reason.",
            ["reason"],
            registry=registry,
        )
        self.warmup_running = Gauge(
            "failure_predictor_anomaly_warmup_running",
            "1 while anomaly statistics are being replayed from Prometheus history, else 0.",
            registry=registry,
        )
        self.warmed_targets = Counter(
            "failure_predictor_anomaly_warmed_targets_total",
            "Targets whose anomaly statistics were taken over from a history replay.",
            registry=registry,
        )
        self.targets_dropped = Gauge(
            "failure_predictor_targets_dropped",
            "Live targets not scored in the last cycle because there are more than max_targets.",
            registry=registry,
        )
        self.workload_owner_fallback = Gauge(
            "failure_predictor_workload_owner_fallback",
            "1 while pod owners are unknown (the owner query failed or found no kube_pod_owner series) "
            "and new pods inherit statistics by anomaly.workload_pattern, else 0.",
            registry=registry,
        )
        self.workload_owner_errors = Counter(
            "failure_predictor_workload_owner_errors_total",
            "Owner queries (kube_pod_owner) that failed or found no owner series, by reason.",
            ["reason"],
            registry=registry,
        )
        Info(
            "failure_predictor_build",
            "Versions of failure-predictor, Python and the model libraries (value is always 1).",
            registry=registry,
        ).info(build_labels())
        for stage in STAGES:
            self.cycle_duration.labels(stage)
        for outcome in ("success", "failure"):
            self.cycles.labels(outcome)


class SnapshotCollector(Collector):
    """Yields the serving model's and the last Snapshot's health gauges at scrape time (the
    per-target families are rendered once per Snapshot by exposition.py)."""

    def __init__(self, state: State) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        state = self._state
        bundle = state.bundle
        info = GaugeMetricFamily(
            "failure_predictor_model_info",
            "The model bundle serving predictions (value is always 1).",
            labels=["version", "trained_at", "kind"],
        )
        if bundle is not None:
            info.add_metric([bundle.manifest.version, bundle.manifest.trained_at, bundle.manifest.kind], 1)
        yield info
        yield GaugeMetricFamily(
            "failure_predictor_model_loaded",
            "1 when a model bundle is loaded and serving, else 0.",
            value=int(bundle is not None),
        )
        last = GaugeMetricFamily(
            "failure_predictor_last_success_timestamp_seconds",
            "Unix time at the end of the last successful cycle.",
        )
        if state.last_success is not None:
            last.add_metric([], state.last_success)
        yield last
        snapshot = state.snapshot
        drift = GaugeMetricFamily(
            "failure_predictor_feature_drift",
            "Population stability index of recent features vs training, per signal (>0.25: retrain).",
            labels=["signal"],
        )
        if snapshot is not None and snapshot.drift is not None:
            for signal, value in zip(snapshot.signals, snapshot.drift, strict=True):
                drift.add_metric([signal], value)
        yield drift
        yield GaugeMetricFamily(
            "failure_predictor_targets",
            "Targets scored in the last successful cycle.",
            value=0 if snapshot is None else len(snapshot.targets),
        )
