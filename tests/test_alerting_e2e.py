"""The shipped rules end to end: real Prometheus loaded with them (a copy whose ``for:`` is
3 s) scrapes the real daemon on the simulate source and sends to a real Alertmanager
configured from rules/alertmanager-example.yml, whose receivers post to a webhook here.

The simulator is seeded and rehearsed ahead of time (tests/mixin.py), so the test knows
which target heads to failure and which stays healthy before the daemon starts.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import requests
from mixin import (
    JOB,
    NOT_YET_EXPORTED,
    MonitoringStack,
    am_alerts,
    eventually,
    metric_name,
    routed_receiver,
    rules,
    selectors,
)

FAILURE_ALERTS = {"HighFailureProbability", "ElevatedFailureProbability"}
SIGNALS = ("cpu", "memory", "latency", "errors")


def prometheus_rules(stack: MonitoringStack) -> list[dict[str, Any]]:
    response = requests.get(f"{stack.prometheus.url}/api/v1/rules", timeout=10)
    response.raise_for_status()
    return [rule for group in response.json()["data"]["groups"] for rule in group["rules"]]


def is_high_for(pod: str) -> Any:
    def check(alert: dict[str, Any]) -> bool:
        labels = alert["labels"]
        return labels["alertname"] == "HighFailureProbability" and labels.get("pod") == pod

    return check


def test_prometheus_loads_every_shipped_rule_and_evaluates_it_without_errors(
    mixin_stack: MonitoringStack,
) -> None:
    shipped = {rule.get("alert") or rule["record"] for rule in rules()}
    loaded = prometheus_rules(mixin_stack)
    assert {rule["name"] for rule in loaded} == shipped

    def all_evaluated() -> list[dict[str, Any]]:
        current = prometheus_rules(mixin_stack)
        return current if all(rule["health"] != "unknown" for rule in current) else []

    evaluated = eventually(all_evaluated, timeout=20, message="rules were never evaluated")
    broken = {rule["name"]: rule.get("lastError") for rule in evaluated if rule["health"] != "ok"}
    assert not broken, broken


def test_every_rule_selector_has_data_from_the_real_daemons(mixin_stack: MonitoringStack) -> None:
    """Every series a rule reads exists in a Prometheus scraping the real daemons, so no alert
    is silently dead because of a misspelled metric or label. Allow-listed metrics (not exported
    yet) must still parse, and must return nothing: once they exist, drop them from the list."""
    prometheus = mixin_stack.prometheus
    for rule in rules():
        name = rule.get("alert") or rule["record"]
        prometheus.query(rule["expr"])  # raises with Prometheus's message on a bad expression
        for selector in selectors(rule["expr"]):
            if metric_name(selector) in NOT_YET_EXPORTED:
                assert not prometheus.query(selector), (
                    f"{selector} is exported now: drop it from NOT_YET_EXPORTED"
                )
                continue
            prometheus.wait_for(selector, timeout=30)
            assert prometheus.query(selector), f"{name}: {selector} returns no series"


def test_target_heading_to_failure_pages_its_namespace_team(mixin_stack: MonitoringStack) -> None:
    doomed = mixin_stack.casting.doomed
    path, alert = mixin_stack.webhook.wait_for_alert(is_high_for(doomed.pod), timeout=60)

    labels, annotations = alert["labels"], alert["annotations"]
    assert alert["status"] == "firing"
    assert labels["severity"] == "critical"
    assert (labels["namespace"], labels["pod"]) == (doomed.namespace, doomed.pod)
    assert labels["job"] == JOB and labels["horizon"] == "30m"
    assert path == "/" + routed_receiver(labels), "not routed as rules/alertmanager-example.yml says"
    assert annotations["summary"] == f"{doomed.namespace}/{doomed.pod} is likely to fail within 30m."
    assert f"gives {doomed.namespace}/{doomed.pod} a " in annotations["description"]
    assert any(f"Top contributing signal: {signal} (" in annotations["description"] for signal in SIGNALS), (
        annotations["description"]
    )
    assert annotations["runbook_url"].endswith("docs/runbooks.md#highfailureprobability")
    truth = mixin_stack.simulated.cluster.scenarios()[doomed.row]
    assert truth == mixin_stack.casting.doomed_kind, (
        f"the page should come before the failure; truth: {truth}"
    )


def test_critical_alert_inhibits_the_warning_for_the_same_pod(mixin_stack: MonitoringStack) -> None:
    doomed = mixin_stack.casting.doomed
    mixin_stack.webhook.wait_for_alert(is_high_for(doomed.pod), timeout=60)

    def inhibited() -> list[dict[str, Any]]:
        held = am_alerts(mixin_stack.alertmanager, alertname="ElevatedFailureProbability", pod=doomed.pod)
        return [alert for alert in held if alert["status"]["inhibitedBy"]]

    warning = eventually(inhibited, timeout=20, message="ElevatedFailureProbability was never inhibited")
    assert warning[0]["status"]["state"] == "suppressed"


def test_healthy_target_raises_no_failure_alert(mixin_stack: MonitoringStack) -> None:
    doomed, healthy = mixin_stack.casting.doomed, mixin_stack.casting.healthy
    mixin_stack.webhook.wait_for_alert(is_high_for(doomed.pod), timeout=60)
    time.sleep(3)  # a few more evaluation and group intervals

    assert mixin_stack.prometheus.query(f'failure_probability{{pod="{healthy.pod}"}}'), (
        "healthy pod not scraped"
    )
    notified = [
        alert["labels"]["alertname"]
        for _, alert in mixin_stack.webhook.alerts()
        if alert["labels"].get("pod") == healthy.pod and alert["labels"]["alertname"] in FAILURE_ALERTS
    ]
    assert not notified
    assert not mixin_stack.prometheus.query(
        f'ALERTS{{pod="{healthy.pod}", alertname=~"{"|".join(FAILURE_ALERTS)}"}}'
    )
    assert mixin_stack.simulated.cluster.scenarios()[healthy.row] == "healthy"


@pytest.mark.parametrize("alertname", ["FailurePredictorQueryErrors"])
def test_self_monitoring_alert_fires_for_the_daemon_with_a_broken_query(
    mixin_stack: MonitoringStack, alertname: str
) -> None:
    """The workload daemon's latency query is invalid (tests/mixin.py): its query errors reach
    the platform receiver with the reason Prometheus gave."""
    instance = mixin_stack.workload_daemon.address

    def broken(alert: dict[str, Any]) -> bool:
        labels = alert["labels"]
        return labels["alertname"] == alertname and labels.get("instance") == instance

    path, alert = mixin_stack.webhook.wait_for_alert(broken, timeout=60)
    assert path == "/platform"
    assert alert["labels"]["signal"] == "latency"
    assert "Most frequent reason: promql." in alert["annotations"]["description"]
