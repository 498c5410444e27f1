"""High availability and several clusters, for real: two identical replicas of the daemon for
cluster "eu" and one for cluster "us" (each an in-process daemon on the same seeded simulation,
so all three see the same doomed pod), scraped by one real Prometheus loaded with the shipped
rules and sending to a real Alertmanager configured from rules/alertmanager-example.yml.

The two "eu" replicas must page once, not twice; "us" pages for its own copy of the pod, naming
its own cluster; stopping one "eu" replica keeps the alert firing and says the replica is down.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mixin import (
    DEMO_INCIDENT_RATE,
    JOB,
    MODEL,
    SEED,
    TARGETS,
    Casting,
    SimulatedDaemon,
    WebhookReceiver,
    alertmanager_config,
    am_alerts,
    eventually,
    fast_rules,
    rehearse,
)
from servers import AlertmanagerServer, PrometheusServer

from exporter.models.bundle import load_bundle
from exporter.sources.simulate import SimulatedCluster


@dataclass
class Stack:
    prometheus: PrometheusServer
    alertmanager: AlertmanagerServer
    webhook: WebhookReceiver
    replicas: dict[str, SimulatedDaemon]  # "eu-0", "eu-1", "us-0"
    casting: Casting


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir: Path = tmp_path_factory.mktemp("ha")
    bundle = load_bundle(MODEL)
    casting = rehearse(bundle)
    with ExitStack() as running:
        webhook = running.enter_context(WebhookReceiver())
        alertmanager = running.enter_context(
            AlertmanagerServer(workdir / "alertmanager", alertmanager_config(webhook.url))
        )
        prometheus = PrometheusServer(
            workdir / "prometheus", rule_files=[fast_rules(workdir)], alertmanager_url=alertmanager.url
        )
        running.enter_context(prometheus)
        replicas = {}
        for name in ("eu-0", "eu-1", "us-0"):
            cluster = SimulatedCluster(targets=TARGETS, seed=SEED, incident_rate=DEMO_INCIDENT_RATE)
            replicas[name] = SimulatedDaemon(bundle, cluster, skip=casting.skip)
            prometheus.add_target(JOB, replicas[name].address, {"cluster": name.split("-")[0]})
        for replica in replicas.values():  # last and together: they stay in step
            running.enter_context(replica)
        yield Stack(prometheus, alertmanager, webhook, replicas, casting)


def high_for(stack: Stack) -> list[dict[str, Any]]:
    pod = stack.casting.doomed.pod
    return [
        alert
        for _, alert in stack.webhook.alerts()
        if alert["labels"]["alertname"] == "HighFailureProbability" and alert["labels"]["pod"] == pod
    ]


def test_replicas_page_once_per_cluster_and_losing_one_silences_nothing(stack: Stack) -> None:
    doomed = stack.casting.doomed
    eventually(
        lambda: {a["labels"].get("cluster") for a in high_for(stack)} == {"eu", "us"},
        timeout=90,
        message="HighFailureProbability did not reach Alertmanager's webhook from both clusters",
    )
    time.sleep(3)  # more evaluation and group intervals: a second "eu" alert would show up by now

    distinct = {frozenset(a["labels"].items()) for a in high_for(stack)}
    assert len(distinct) == 2, f"one alert per cluster, not per replica: {distinct}"
    for alert in high_for(stack):
        labels = alert["labels"]
        assert "instance" not in labels
        assert (labels["namespace"], labels["pod"], labels["job"]) == (doomed.namespace, doomed.pod, JOB)
    held = am_alerts(stack.alertmanager, alertname="HighFailureProbability", pod=doomed.pod)
    assert sorted(a["labels"]["cluster"] for a in held) == ["eu", "us"]

    # Lose one "eu" replica for real; the other keeps exporting the pod's probability.
    lost = stack.replicas["eu-0"]
    notified = len(stack.webhook.alerts())
    lost.stop()
    stack.prometheus.wait_for(f'up{{instance="{lost.address}"}} == 0', timeout=20)
    stack.webhook.wait_for_alert(
        lambda a: (
            a["labels"]["alertname"] == "FailurePredictorDown" and a["labels"]["instance"] == lost.address
        ),
        timeout=30,
    )
    firing = stack.prometheus.query(
        f'ALERTS{{alertname="HighFailureProbability", alertstate="firing", cluster="eu", pod="{doomed.pod}"}}'
    )
    assert len(firing) == 1, "the surviving replica keeps the alert firing"
    resolved = [
        a
        for _, a in stack.webhook.alerts()[notified:]
        if a["labels"]["alertname"] == "HighFailureProbability"
        and a["labels"]["pod"] == doomed.pod
        and a["status"] == "resolved"
    ]
    assert not resolved, resolved


def test_description_lookup_stays_inside_the_alerts_cluster(stack: Stack) -> None:
    eventually(
        lambda: {a["labels"].get("cluster") for a in high_for(stack)} == {"eu", "us"},
        timeout=90,
        message="HighFailureProbability did not reach the webhook from both clusters",
    )
    for alert in high_for(stack):
        if alert["status"] != "firing":
            continue
        cluster = alert["labels"]["cluster"]
        top = stack.prometheus.query(
            f'topk(1, max without (instance) (failure_probability_contribution{{cluster="{cluster}", '
            f'pod="{stack.casting.doomed.pod}"}}) > 0)'
        )
        if top:
            assert (
                f"Top contributing signal: {top[0]['metric']['signal']} ("
                in alert["annotations"]["description"]
            )
    recorded = stack.prometheus.wait_for(
        f'namespace:failure_probability:max{{namespace="{stack.casting.doomed.namespace}"}}',
        lambda result: len(result) == 2,
        timeout=20,
    )
    assert sorted(r["metric"]["cluster"] for r in recorded) == ["eu", "us"]


@pytest.mark.parametrize("board", ["failure-risk-overview.json", "predictor-health.json"])
def test_dashboards_show_only_the_chosen_cluster(stack: Stack, board: str) -> None:
    from test_dashboards import REPO, load, queries, resolve_variables, run_query, substitute

    dashboard = load(REPO / "grafana" / "dashboards" / board)
    url = stack.prometheus.url
    eventually(
        lambda: stack.prometheus.query("failure_predictor_model_info"), timeout=20, message="no scrape"
    )
    values = resolve_variables(dashboard, url, {"cluster": "eu"})
    clusters: set[str] = set()
    for _, target in queries(dashboard):
        for series in run_query(url, substitute(target["expr"], values), instant=True):
            clusters.add(series["metric"].get("cluster", "-"))
    assert "eu" in clusters, "the eu replicas' series are on the dashboard"
    assert "us" not in clusters
