"""The shipped rule file, its promtool unit tests, its documentation and the Alertmanager example.

These run the real promtool and amtool; what the rules do inside a running Prometheus
is tested in test_alerting_e2e.py.
"""

from __future__ import annotations

import re
import subprocess

import pytest
from mixin import (
    ALERTMANAGER_EXAMPLE,
    MODEL,
    NOT_YET_EXPORTED,
    REPO,
    RULE_TESTS,
    RULES,
    RUNBOOKS,
    alerts,
    amtool_bin,
    metric_name,
    routed_receiver,
    rules,
    selectors,
    simulated_daemon,
)
from prometheus_client.parser import text_string_to_metric_families
from servers import promtool_bin

from exporter.models.bundle import load_bundle
from exporter.sources.simulate import SimulatedCluster

RUNBOOK_BASE = "https://github.com/failure-predictor/failure-predictor/blob/main/docs/runbooks.md#"
SEVERITIES = {"critical", "warning", "info"}
TARGET_ALERTS = (
    "HighFailureProbability",
    "ElevatedFailureProbability",
    "AnomalousWorkloadBehaviour",
    "PredictedResourceExhaustion",
)


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def test_promtool_check_rules_accepts_the_rule_file() -> None:
    result = run(promtool_bin(), "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    result = run(promtool_bin(), "test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_unit_tests_that_see_it_fire_and_stay_quiet() -> None:
    text = RULE_TESTS.read_text()
    for alert in alerts():
        name = alert["alert"]
        fired = re.search(rf"alertname: {name}\n\s+exp_alerts:\n\s+- exp_labels:", text)
        quiet = re.search(rf"alertname: {name}\n\s+exp_alerts: \[\]", text)
        assert fired and quiet, f"{name} needs promtool cases where it fires and where it does not"


def test_alerts_follow_the_mixin_conventions() -> None:
    names = [alert["alert"] for alert in alerts()]
    assert len(names) == len(set(names)), "alert names must be unique"
    for alert in alerts():
        name = alert["alert"]
        assert re.fullmatch(r"(?:[A-Z][a-z]+)+", name), f"{name} is not CamelCase"
        assert alert["labels"]["severity"] in SEVERITIES, name
        assert {"summary", "description", "runbook_url"} <= set(alert["annotations"]), name
        assert alert.get("for"), f"{name} needs a for: so it does not flap"


def test_target_alerts_keep_the_target_labels() -> None:
    """The failure alerts aggregate only across replicas (max without the scrape-side `instance`),
    so namespace, pod, cluster and any other target label reach Alertmanager to route per team."""
    for alert in alerts():
        if alert["alert"] in TARGET_ALERTS:
            expr = alert["expr"]
            aggregations = re.findall(
                r"\b(sum|max|min|avg|count|topk)\b\s*(by|without)?\s*(\([^)]*\))?", expr
            )
            assert aggregations == [("max", "without", "(instance)")], alert["alert"]
            assert 'job="failure-predictor"' in expr, alert["alert"]


def test_alerts_named_in_the_issue_have_their_thresholds() -> None:
    by_name = {alert["alert"]: alert for alert in alerts()}
    high, elevated = by_name["HighFailureProbability"], by_name["ElevatedFailureProbability"]
    assert (high["expr"], high["for"], high["labels"]["severity"]) == (
        'max without (instance) (failure_probability{job="failure-predictor"}) > 0.35',
        "5m",
        "critical",
    )
    assert (elevated["expr"], elevated["for"], elevated["labels"]["severity"]) == (
        'max without (instance) (failure_probability{job="failure-predictor"}) > 0.2',
        "15m",
        "warning",
    )


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_runbook_url_points_at_a_section_of_docs_runbooks_md() -> None:
    anchors = {
        github_anchor(line[3:]) for line in RUNBOOKS.read_text().splitlines() if line.startswith("## ")
    }
    for alert in alerts():
        url = alert["annotations"]["runbook_url"]
        assert url.startswith(RUNBOOK_BASE), url
        assert url.removeprefix(RUNBOOK_BASE) in anchors, f"{alert['alert']}: no section for {url}"
    assert len(anchors) == len(alerts()), "one runbook section per alert, no orphans"


def test_rules_readme_documents_every_alert_threshold_and_for() -> None:
    """rules/README.md is what users (and later the Helm values) read: keep it in step."""
    table = {}
    for line in (REPO / "rules" / "README.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) == 5 and cells[0].startswith("`") and cells[1] in SEVERITIES:
            table[cells[0].strip("`")] = cells
    for alert in alerts():
        name = alert["alert"]
        assert name in table, f"{name} is missing from rules/README.md"
        _, severity, _, threshold, duration = table[name]
        assert severity == alert["labels"]["severity"], name
        assert duration == alert["for"], name
        if threshold != "-":
            assert re.search(rf"[<>] {re.escape(threshold)}\b", alert["expr"]), (
                f"{name}: threshold {threshold}"
            )
    assert set(table) == {alert["alert"] for alert in alerts()}


def exported_metric_names() -> set[str]:
    """Every series name a real daemon exports after one cycle, plus Prometheus's own ``up``."""
    daemon = simulated_daemon(load_bundle(MODEL), SimulatedCluster(targets=3), port=1)
    daemon.run_cycle()
    names = {"up"}
    for family in text_string_to_metric_families(daemon.exposition.render()[0].decode()):
        names.add(family.name + ("_total" if family.type == "counter" else ""))
        names.update(sample.name for sample in family.samples)
    return names


def test_rules_only_use_metrics_the_exporter_exports() -> None:
    """Catches a renamed or misspelled metric before Prometheus silently returns nothing."""
    exported = exported_metric_names()
    for rule in rules():
        for selector in selectors(rule["expr"]):
            name = metric_name(selector)
            assert name in exported or name in NOT_YET_EXPORTED, f"{rule.get('alert')}: unknown metric {name}"


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("failure_probability > 0.8", ["failure_probability"]),
        ('absent(up{job="x"})', ['up{job="x"}']),
        (
            'sum by (job, signal) (rate(a_total{job="x"}[10m])) / on (job) group_left () sum by (job) (rate(b[5m]))',
            ['a_total{job="x"}', "b"],
        ),
        (
            'count_values("level", failure_risk_level) and on (pod) time() - x offset 5m',
            ["failure_risk_level", "x"],
        ),
    ],
)
def test_selector_extraction(expr: str, expected: list[str]) -> None:
    assert selectors(expr) == expected


def test_amtool_accepts_the_alertmanager_example() -> None:
    result = run(amtool_bin(), "check-config", str(ALERTMANAGER_EXAMPLE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        ({"alertname": "HighFailureProbability", "severity": "critical", "namespace": "shop"}, "shop-pager"),
        (
            {"alertname": "HighFailureProbability", "severity": "critical", "namespace": "auth"},
            "payments-pager",
        ),
        (
            {"alertname": "HighFailureProbability", "severity": "critical", "namespace": "other"},
            "oncall-pager",
        ),
        (
            {"alertname": "ElevatedFailureProbability", "severity": "warning", "namespace": "shop"},
            "shop-chat",
        ),
        ({"alertname": "FailurePredictorDown", "severity": "warning"}, "platform"),
    ],
)
def test_alertmanager_example_routes_by_namespace(labels: dict[str, str], receiver: str) -> None:
    assert routed_receiver(labels) == receiver
