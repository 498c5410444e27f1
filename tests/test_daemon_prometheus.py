"""The daemon end to end against a real Prometheus scraping a fake workload.

The daemon runs as a real ``failure-predictor run`` subprocess with the default
signal queries; only the time scale is shrunk (1 s steps, a 60 s window, 10 s
rate windows) so incidents unfold in seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from servers import TEST_SPEED, DaemonServer, PrometheusServer
from workload import Workload

T = TypeVar("T")
JOB = "failure-predictor"
WINDOW_SECONDS = 60  # TEST_SPEED lookback


def daemon_config(prometheus: PrometheusServer) -> dict:
    return {
        "prometheus": {"url": prometheus.url, "timeout": "2s", "retries": 1, "backoff": "200ms"},
        **TEST_SPEED,
    }


def eventually(check: Callable[[], T], timeout: float, message: str) -> T:
    """Poll until ``check`` returns something truthy; fail with the last value otherwise."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.5)
    pytest.fail(f"{message} within {timeout:g}s; last value: {last!r}")


@pytest.fixture(scope="module")
def daemon(prometheus: PrometheusServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonServer]:
    server = DaemonServer(tmp_path_factory.mktemp("daemon"), daemon_config(prometheus))
    with server:
        prometheus.add_target(JOB, server.address)
        yield server
        prometheus.remove_target(JOB, server.address)


def test_leaking_and_erroring_pods_rank_above_every_healthy_pod(
    daemon: DaemonServer, workload: Workload
) -> None:
    """The sick pods leak (or error) over and over: each time the window fills with a rising
    ramp both must stand above every healthy pod, the leak also above 0.5.

    Right after Prometheus starts, short rate windows make every pod look odd, so peaks
    are taken over two ramp periods once every pod has a full window of history."""
    eventually(lambda: len(daemon.scores()) == len(workload.pods), 60, "not every pod was scored")
    time.sleep(WINDOW_SECONDS)
    peaks: dict[str, float] = {}
    deadline = time.monotonic() + 2.5 * workload.leak_seconds
    while time.monotonic() < deadline:
        for pod, score in daemon.scores().items():
            peaks[pod] = max(score, peaks.get(pod, 0.0))
        healthy = sorted(peaks.get(pod, 1.0) for pod in workload.healthy_pods)
        leaky, erroring = peaks.get(workload.leaky_pod, 0.0), peaks.get(workload.erroring_pod, 0.0)
        if leaky > max(0.5, healthy[-1]) and erroring > healthy[-1]:
            return
        time.sleep(0.5)
    pytest.fail(f"sick pods never outranked the healthy ones: peaks {peaks}")


def test_failure_probability_is_queryable_back_from_prometheus_with_target_labels(
    daemon: DaemonServer, prometheus: PrometheusServer, workload: Workload
) -> None:
    query = f'failure_probability{{job="{JOB}", pod="{workload.leaky_pod}"}}'
    result = prometheus.wait_for(query, timeout=30)
    labels = result[0]["metric"]
    assert labels["namespace"] == workload.namespace
    assert labels["pod"] == workload.leaky_pod
    assert labels["horizon"] == "30s"
    contributions = prometheus.wait_for(f'failure_probability_contribution{{pod="{workload.leaky_pod}"}}')
    assert {series["metric"]["signal"] for series in contributions} == {"cpu", "memory", "latency", "errors"}


def test_vanished_pod_is_no_longer_exported(daemon: DaemonServer, workload: Workload) -> None:
    pod = workload.healthy_pods[-1]
    eventually(lambda: pod in daemon.scores(), timeout=30, message=f"{pod} was never scored")
    workload.remove_pod(pod)

    def gone() -> bool:
        text = daemon.get("/metrics").text
        return f'pod="{pod}"' not in text and pod not in daemon.scores()

    eventually(gone, timeout=30, message=f"{pod} is still exported after leaving the workload")


def test_daemon_survives_prometheus_outage_and_recovers(
    daemon: DaemonServer, prometheus: PrometheusServer
) -> None:
    eventually(
        lambda: daemon.get("/readyz").status_code == 200, timeout=30, message="daemon never became ready"
    )
    before = (
        daemon.metric_value("failure_predictor_query_errors_total", signal="memory", reason="connection")
        or 0.0
    )
    prometheus.stop()
    try:
        eventually(
            lambda: daemon.get("/readyz").status_code == 503, timeout=20, message="daemon stayed ready"
        )
        assert daemon.get("/healthz").status_code == 200
        assert "last successful cycle" in daemon.get("/readyz").json()["reason"]
        errors = daemon.metric_value(
            "failure_predictor_query_errors_total", signal="memory", reason="connection"
        )
        assert errors is not None and errors > before
        assert daemon.metric_value("failure_probability") is None, "stale scores are still exported"
    finally:
        prometheus.start()
    eventually(lambda: daemon.get("/readyz").status_code == 200, timeout=30, message="daemon did not recover")
    assert daemon.scores()


def test_daemon_config_file_is_valid_for_check_config(tmp_path: Path, prometheus: PrometheusServer) -> None:
    from exporter.cli import main

    server = DaemonServer(tmp_path, daemon_config(prometheus))
    assert main(["check-config", str(server.config_path)]) == 0


def test_without_kube_state_metrics_the_daemon_names_workloads_by_pattern_and_says_so(
    daemon: DaemonServer,
) -> None:
    """The fake workload exports no owner series: "auto" falls back, on the health metrics."""
    eventually(lambda: daemon.scores(), 60, "no cycle succeeded")
    assert daemon.metric_value("failure_predictor_workload_owner_fallback") == 1
    assert daemon.metric_value("failure_predictor_workload_owner_errors_total", reason="absent") >= 1


def test_with_kube_state_metrics_the_daemon_names_workloads_by_their_owners(tmp_path: Path) -> None:
    """A Prometheus of its own: the session's must keep exactly the session workload's pods."""
    with (
        Workload(pods=4, namespace="owned", deployment="cart") as owned,
        PrometheusServer(tmp_path) as prometheus,
    ):
        prometheus.add_target("owned", owned.address)
        prometheus.wait_for(
            'count(rate(container_cpu_usage_seconds_total{namespace="owned"}[10s])) == 4', timeout=30
        )
        with DaemonServer(tmp_path / "daemon", daemon_config(prometheus)) as server:
            eventually(lambda: set(server.scores()) == set(owned.pods), 60, "the owned pods were not scored")
            assert server.metric_value("failure_predictor_workload_owner_fallback") == 0
            assert (
                server.metric_value("failure_predictor_workload_owner_errors_total", reason="absent") is None
            )
            assert '"msg": "workloads are named by their owners (kube_pod_owner)"' in server.log_tail()
