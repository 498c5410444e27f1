"""The real-server fixtures really scrape, answer and fail, so later tests can trust them."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from servers import AlertmanagerServer, PrometheusQueryError, PrometheusServer, prometheus_bin, promtool_bin
from workload import Workload

SCRATCH = "scratch"


@pytest.fixture(scope="module")
def young_workload() -> Iterator[Workload]:
    """A workload started by this module, so its leak is still climbing whatever ran before."""
    with Workload(pods=5, leak_seconds=60.0, seed=1, namespace=SCRATCH) as served:
        yield served


@pytest.fixture(scope="module")
def own_prometheus(
    young_workload: Workload, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrometheusServer]:
    """A Prometheus this module may stop and restart without disturbing the session one."""
    with PrometheusServer(tmp_path_factory.mktemp("own-prometheus")) as server:
        # Added while running, the way later tests add the daemon as a target.
        server.add_target(SCRATCH, young_workload.address)
        server.wait_for(f'count(rate(http_requests_total{{namespace="{SCRATCH}"}}[10s]))', timeout=30)
        yield server


def memory_ratios(prometheus: PrometheusServer, namespace: str) -> dict[str, float]:
    """Working set over memory limit, per pod."""
    result = prometheus.query(
        f'container_memory_working_set_bytes{{namespace="{namespace}"}}'
        " / on(namespace,pod,container) "
        f'kube_pod_container_resource_limits{{namespace="{namespace}",resource="memory"}}'
    )
    return {series["metric"]["pod"]: float(series["value"][1]) for series in result}


def error_ratios(prometheus: PrometheusServer, namespace: str) -> dict[str, float]:
    """Share of 5xx answers over the last 10 s, per pod."""
    errors = f'rate(http_requests_total{{namespace="{namespace}",code=~"5.."}}[10s])'
    answers = f'rate(http_requests_total{{namespace="{namespace}"}}[10s])'
    result = prometheus.query(f"sum by (pod) ({errors}) / sum by (pod) ({answers})")
    return {series["metric"]["pod"]: float(series["value"][1]) for series in result}


def test_session_prometheus_sees_every_pod_under_the_workload_job(
    prometheus: PrometheusServer, workload: Workload
) -> None:
    result = prometheus.query(f'container_memory_working_set_bytes{{namespace="{workload.namespace}"}}')
    assert {series["metric"]["pod"] for series in result} == set(workload.pods)
    assert {series["metric"]["job"] for series in result} == {"workload"}


def test_p99_latency_has_one_plausible_series_per_pod(
    prometheus: PrometheusServer, workload: Workload
) -> None:
    result = prometheus.query(
        "histogram_quantile(0.99, sum by (namespace,pod,le)"
        f'(rate(http_request_duration_seconds_bucket{{namespace="{workload.namespace}"}}[10s])))'
    )
    p99 = {series["metric"]["pod"]: float(series["value"][1]) for series in result}
    assert len(result) == len(p99) == len(workload.pods)
    assert all(0.05 < seconds < 0.5 for seconds in p99.values()), p99


def test_leaky_pod_memory_ratio_grows_while_healthy_pods_stay_low(
    own_prometheus: PrometheusServer, young_workload: Workload
) -> None:
    leaky = young_workload.leaky_pod
    before = memory_ratios(own_prometheus, SCRATCH)
    own_prometheus.wait_for(
        f'container_memory_working_set_bytes{{pod="{leaky}"}} / on(namespace,pod,container)'
        f' kube_pod_container_resource_limits{{resource="memory"}} > {before[leaky] + 0.03}',
        timeout=10,
    )
    after = memory_ratios(own_prometheus, SCRATCH)
    assert after[leaky] > before[leaky] + 0.03
    for ratios in (before, after):
        assert all(ratios[pod] < 0.6 for pod in young_workload.healthy_pods), ratios


def test_erroring_pod_error_ratio_rises_far_above_healthy_pods(
    own_prometheus: PrometheusServer, young_workload: Workload
) -> None:
    erroring = young_workload.erroring_pod
    own_prometheus.wait_for(
        f'sum(rate(http_requests_total{{pod="{erroring}",code="500"}}[10s]))'
        f' / sum(rate(http_requests_total{{pod="{erroring}"}}[10s])) > 0.03',
        timeout=15,
    )
    ratios = error_ratios(own_prometheus, SCRATCH)
    assert all(ratios[pod] < 0.01 for pod in young_workload.healthy_pods), ratios


def test_removed_pod_vanishes_at_the_next_scrape(
    own_prometheus: PrometheusServer, young_workload: Workload
) -> None:
    removed = young_workload.healthy_pods[-1]
    selector = f'{{namespace="{SCRATCH}",pod="{removed}"}}'
    assert own_prometheus.query(f"container_memory_working_set_bytes{selector}")

    young_workload.remove_pod(removed)

    # The scrape without the pod writes staleness markers, so it is gone at once, not after 5 min.
    own_prometheus.wait_for(
        f"count({{__name__!='',namespace='{SCRATCH}',pod='{removed}'}})", lambda r: not r, 5
    )
    assert set(memory_ratios(own_prometheus, SCRATCH)) == set(young_workload.pods)


def test_prometheus_restarts_on_the_same_port_with_its_history(own_prometheus: PrometheusServer) -> None:
    before_outage = time.time() - 1
    assert own_prometheus.query(f'up{{job="{SCRATCH}"}}', at=before_outage)

    own_prometheus.stop()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{own_prometheus.url}/-/ready", timeout=2)
    restarted = time.time()
    own_prometheus.start()

    own_prometheus.wait_for(f'timestamp(up{{job="{SCRATCH}"}}) > {restarted}', timeout=20)
    assert own_prometheus.query(f'up{{job="{SCRATCH}"}}', at=before_outage)


def test_bad_query_raises_with_prometheus_message(prometheus: PrometheusServer) -> None:
    with pytest.raises(PrometheusQueryError, match="parse error"):
        prometheus.query("sum(")


def test_wait_for_times_out_naming_the_query(prometheus: PrometheusServer) -> None:
    with pytest.raises(TimeoutError, match="never_exported_metric"):
        prometheus.wait_for("never_exported_metric", timeout=0.5)


def test_generated_config_passes_promtool(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yml"
    rules.write_text("groups: [{name: g, rules: [{record: 'job:up:sum', expr: 'sum by (job) (up)'}]}]\n")
    server = PrometheusServer(
        tmp_path / "prometheus", rule_files=[rules], alertmanager_url="http://127.0.0.1:9"
    )
    check = subprocess.run(
        [promtool_bin(), "check", "config", str(server.config_path)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_alertmanager_starts_with_clustering_disabled(tmp_path: Path) -> None:
    with AlertmanagerServer(tmp_path) as alertmanager:
        status = requests.get(f"{alertmanager.url}/api/v2/status", timeout=5).json()
    assert status["cluster"]["status"] == "disabled"


@pytest.mark.parametrize(("ci", "outcome"), [("", pytest.skip.Exception), ("true", pytest.fail.Exception)])
def test_missing_prometheus_skips_locally_and_fails_in_ci(
    monkeypatch: pytest.MonkeyPatch, ci: str, outcome: type[BaseException]
) -> None:
    monkeypatch.delenv("PROMETHEUS_BIN", raising=False)
    monkeypatch.setenv("PATH", "")
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="Debian package 'prometheus'"):
        prometheus_bin()
