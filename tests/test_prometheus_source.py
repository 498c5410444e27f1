"""The Prometheus source against a real Prometheus (behind a real proxy where auth matters)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from servers import AuthProxy, PrometheusServer, SilentServer
from workload import Workload

from exporter.config import Settings
from exporter.sources.prometheus import PrometheusSource


def settings(url: str, **overrides: object) -> Settings:
    prometheus = {"url": url, **overrides.pop("prometheus", {})}  # type: ignore[dict-item]
    base = {"step": "1s", "lookback": "30s", "rate_window": "10s", "interval": "1s", "stale_after": "5s"}
    return Settings.model_validate({**base, **overrides, "prometheus": prometheus})


@pytest.fixture(autouse=True)
def history(prometheus: PrometheusServer) -> None:
    """A few seconds of scrapes, so the aligned window (which ends on a whole step
    before now) already holds rate() values when the session Prometheus is new."""
    prometheus.wait_for('count_over_time(up{job="workload"}[10s]) >= 4', timeout=20)


@pytest.fixture
def proxy(prometheus: PrometheusServer) -> Iterator[AuthProxy]:
    server = AuthProxy(prometheus.url)
    yield server
    server.close()


def test_one_range_query_per_signal_covers_every_target(proxy: AuthProxy, workload: Workload) -> None:
    fetch = PrometheusSource(settings(proxy.url)).fetch()

    # and one instant query names the pods' owners (anomaly.workload_source "auto")
    assert proxy.paths() == ["/api/v1/query_range"] * 4 + ["/api/v1/query"]
    assert fetch.errors == ()
    frame = fetch.frame
    assert frame.values.shape == (len(workload.pods), 30, 4)
    assert {target["pod"] for target in frame.targets} == set(workload.pods)
    memory = frame.signal("memory")[:, -1]
    assert np.all((memory > 0.1) & (memory < 1.0))
    assert np.all(np.diff(frame.timestamps) == 1.0)


def test_bad_promql_in_one_signal_is_reported_and_the_others_are_still_read(
    prometheus: PrometheusServer, workload: Workload
) -> None:
    broken = settings(prometheus.url, signals={"errors": "rate(http_requests_total[", "latency": None})
    fetch = PrometheusSource(broken).fetch()

    assert [(e.signal, e.reason) for e in fetch.errors] == [("errors", "promql")]
    assert "parse error" in fetch.errors[0].message
    assert fetch.frame.signals == ("cpu", "memory", "errors")
    assert np.isfinite(fetch.frame.signal("memory")[:, -1]).all()
    assert np.isnan(fetch.frame.signal("errors")).all()


def test_series_without_the_target_labels_are_reported(
    prometheus: PrometheusServer, workload: Workload
) -> None:
    flat = settings(prometheus.url, signals={"latency": "sum(rate(http_requests_total[10s]))"})
    fetch = PrometheusSource(flat).fetch()

    assert [(e.signal, e.reason) for e in fetch.errors] == [("latency", "missing_labels")]
    assert len(fetch.frame.targets) == len(workload.pods)


def test_hanging_prometheus_times_out_after_bounded_retries() -> None:
    silent = SilentServer()
    try:
        hanging = settings(silent.url, prometheus={"timeout": "300ms", "retries": 2, "backoff": "10ms"})
        fetch = PrometheusSource(hanging).fetch()
    finally:
        silent.close()

    assert sorted((e.signal, e.reason) for e in fetch.errors) == [
        ("cpu", "timeout"),
        ("errors", "timeout"),
        ("latency", "timeout"),
        ("memory", "timeout"),
    ]
    assert len(silent.connections) == 4 * 3, "each signal: one try and two retries"
    assert fetch.frame.values.shape[0] == 0


def test_bearer_token_file_and_tenant_header_reach_the_proxy(
    prometheus: PrometheusServer, workload: Workload, tmp_path: Path
) -> None:
    required = {"Authorization": "Bearer s3cret", "X-Scope-OrgID": "tenant-a"}
    proxy = AuthProxy(prometheus.url, required)
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    try:
        good = settings(
            proxy.url, prometheus={"bearer_token_file": str(token), "headers": {"X-Scope-OrgID": "tenant-a"}}
        )
        assert PrometheusSource(good).fetch().errors == ()
        token.write_text("rotated")  # re-read per request, as Kubernetes rotates projected tokens
        rejected = PrometheusSource(good).fetch()
    finally:
        proxy.close()

    assert {e.reason for e in rejected.errors} == {"http_4xx"}
    assert "HTTP 401" in rejected.errors[0].message


def test_basic_auth_password_file_reaches_the_proxy(
    prometheus: PrometheusServer, workload: Workload, tmp_path: Path
) -> None:
    credentials = base64.b64encode(b"reader:pa55").decode()
    proxy = AuthProxy(prometheus.url, {"Authorization": f"Basic {credentials}"})
    password = tmp_path / "password"
    password.write_text("pa55\n")
    try:
        auth = {"basic_auth": {"username": "reader", "password_file": str(password)}}
        fetch = PrometheusSource(settings(proxy.url, prometheus=auth)).fetch()
    finally:
        proxy.close()

    assert fetch.errors == ()
    assert len(fetch.frame.targets) >= len(workload.pods) - 1
