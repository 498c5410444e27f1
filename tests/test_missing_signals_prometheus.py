"""Missing is not failing, against a real Prometheus: pods without HTTP series, a signal
whose query returns nothing, and a broken signal query.

Two real daemons (``failure-predictor run``) read one real Prometheus scraping a fake
workload in which three healthy pods export no request metrics at all, as databases and
queues do. One has the default signal queries; in the other the latency query returns
nothing and the errors query is broken.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest
from servers import TEST_SPEED, DaemonServer, PrometheusServer
from test_daemon_prometheus import eventually
from workload import Workload

from exporter.config import BOOTSTRAP_MODEL, Settings
from exporter.features import reporting
from exporter.frame import Frame
from exporter.models.bundle import load_bundle
from exporter.service.daemon import Daemon
from exporter.sources import Fetch

QUIET = 3
EMPTY_LATENCY = "histogram_quantile(0.99, sum by (le, {by}) (rate(no_such_histogram_bucket[{rate_window}])))"
BROKEN_ERRORS = "sum by ({by}) (rate(http_requests_total[{rate_window}]"
WINDOW = 60  # seconds of history the daemons' window holds (TEST_SPEED lookback)


@pytest.fixture(scope="module")
def quiet_workload() -> Iterator[Workload]:
    with Workload(pods=8, seed=2, without_http=QUIET) as served:
        yield served


@pytest.fixture(scope="module")
def daemons(
    quiet_workload: Workload, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, DaemonServer]]:
    prometheus = PrometheusServer(tmp_path_factory.mktemp("prometheus"))
    prometheus.add_target("workload", quiet_workload.address)
    variants = {"default": {}, "degraded": {"latency": EMPTY_LATENCY, "errors": BROKEN_ERRORS}}
    with prometheus:
        # Start the daemons once every signal has data, so that a warning about a signal that
        # returns nothing can only come from the query, not from Prometheus' first scrape.
        prometheus.wait_for("rate(http_requests_total[10s])", timeout=60)
        prometheus.wait_for("rate(container_cpu_usage_seconds_total[10s])", timeout=60)
        url = {"prometheus": {"url": prometheus.url, "timeout": "2s", "retries": 1, "backoff": "200ms"}}
        servers = {
            name: DaemonServer(tmp_path_factory.mktemp(name), {**url, **TEST_SPEED, "signals": signals})
            for name, signals in variants.items()
        }
        for server in servers.values():
            server.start(timeout=90)  # two daemons loading models at once on a busy machine
        try:
            yield servers
        finally:
            for server in servers.values():
                server.stop()


def missing(daemon: DaemonServer, signal: str) -> float | None:
    return daemon.metric_value("failure_predictor_targets_missing_signal", signal=signal)


def settled_scores(daemon: DaemonServer, pods: list[str]) -> dict[str, float]:
    """Scores once the window holds a full lookback of history for every pod."""
    eventually(lambda: daemon.get("/readyz").status_code == 200, 60, "daemon never became ready")
    started = daemon.metric_value("failure_predictor_last_success_timestamp_seconds")
    eventually(
        lambda: (
            (daemon.metric_value("failure_predictor_last_success_timestamp_seconds") or 0) > started + WINDOW
        ),
        WINDOW + 60,
        "daemon never scored a full window",
    )
    return eventually(lambda: {p: s for p, s in daemon.scores().items() if p in pods}, 10, "no scores")


def warnings(daemon: DaemonServer) -> list[dict]:
    lines = [json.loads(line) for line in daemon.log_path.read_text().splitlines() if line.startswith("{")]
    return [line for line in lines if "signal returns nothing" in line.get("msg", "")]


def test_pods_without_http_series_are_scored_from_cpu_and_memory_and_stay_low(daemons, quiet_workload):
    daemon = daemons["default"]
    scores = settled_scores(daemon, quiet_workload.pods)

    assert set(scores) == set(quiet_workload.pods)
    assert missing(daemon, "latency") == QUIET and missing(daemon, "errors") == QUIET
    assert missing(daemon, "cpu") == 0 and missing(daemon, "memory") == 0
    quiet = [scores[pod] for pod in quiet_workload.pods_without_http]
    assert max(quiet) < 0.2, scores
    assert warnings(daemon) == []  # the signals return data, only not for every pod


def test_a_signal_whose_query_returns_nothing_is_unknown_for_every_pod(daemons, quiet_workload):
    daemon, reference = daemons["degraded"], daemons["default"]
    scores = settled_scores(daemon, quiet_workload.pods)

    assert set(scores) == set(quiet_workload.pods)
    assert missing(daemon, "latency") == len(quiet_workload.pods)
    healthy = [scores[pod] for pod in quiet_workload.healthy_pods]
    assert np.median(healthy) < 0.05 and max(healthy) < 0.2, scores
    logged = [line for line in warnings(daemon) if line["signal"] == "latency"]
    assert len(logged) == 1, logged  # once, not every cycle
    assert logged[0]["reason"] == "its query returned no data"
    assert warnings(reference) == []


def test_a_broken_signal_query_is_counted_logged_once_and_scored_without(daemons, quiet_workload):
    daemon = daemons["degraded"]
    scores = settled_scores(daemon, quiet_workload.pods)

    assert set(scores) == set(quiet_workload.pods)
    assert daemon.metric_value("failure_predictor_query_errors_total", signal="errors", reason="promql") > 0
    assert missing(daemon, "errors") == len(quiet_workload.pods)
    healthy = [scores[pod] for pod in quiet_workload.healthy_pods]
    assert np.median(healthy) < 0.05 and max(healthy) < 0.2, scores
    logged = [line for line in warnings(daemon) if line["signal"] == "errors"]
    assert len(logged) == 1 and logged[0]["reason"] == "its query failed", logged


class _Recorded:
    """A Source replaying one fixed Frame (the contract in exporter/sources/__init__.py)."""

    def __init__(self, frame: Frame) -> None:
        self.frame = frame
        self.signals = frame.signals

    def fetch(self) -> Fetch:
        return Fetch(self.frame)


def test_a_target_with_no_signal_at_all_is_neither_scored_nor_exported():
    values = np.full((3, 60, 4), np.nan)
    values[0] = [0.3, 0.4, 0.1, 0.002]
    values[1, :, 1] = 0.5  # memory only
    frame = Frame(
        values,
        ({"pod": "a"}, {"pod": "b"}, {"pod": "silent"}),
        1_700_000_000.0 + 60 * np.arange(60),
        ("cpu", "memory", "latency", "errors"),
    )
    settings = Settings.model_validate({"target_labels": ["pod"]})
    daemon = Daemon(settings, _Recorded(frame), load_bundle(BOOTSTRAP_MODEL))

    snapshot = daemon.run_cycle()

    assert [t["pod"] for t in snapshot.targets] == ["a", "b"]
    assert len(reporting(frame).targets) == 2
    sample = daemon.registry.get_sample_value
    assert sample("failure_predictor_targets_missing_signal", {"signal": "latency"}) == 1
    assert sample("failure_predictor_targets_missing_signal", {"signal": "memory"}) == 0
    assert sample("failure_predictor_targets", {}) == 2
