"""The chart's options that the best exporter charts have: HA replicas per shard, PodMonitor,
scrape TLS and authorization wired to the daemon's own, release label, extension points, VPA,
``helm test``, Artifact Hub metadata, and rules templated for selectors, clusters and replicas.

Rendered with real Helm code; the scripts the chart runs (shard wrapper, probes, helm test) run
here for real against the real CLI or a served daemon; templated rules go through promtool.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml
from apiserver import FixedSource, app_server, history_frame, serving
from helpers import Tiny
from servers import promtool_bin
from test_helm import CHART, daemon_config, only, render, workload

from exporter.config import Settings
from exporter.service.daemon import Daemon

RULES = Path(__file__).resolve().parent.parent / "rules" / "failure-predictor.rules.yml"


@pytest.fixture(scope="module")
def chart() -> Iterator[helm_python.Chart]:
    with helm_python.Chart.load(CHART) as loaded:
        yield loaded


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (found,) = workload(docs)["spec"]["template"]["spec"]["containers"]
    return found


def test_replicas_per_shard_without_shards_run_identical_replicas_of_everything(chart):
    docs = render(chart, {"replicasPerShard": 2})
    deployment = only(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert daemon_config(docs)["shard"] == {"index": 0, "count": 1}
    assert "command" not in container(docs)


@pytest.mark.parametrize("ordinal", range(6))
def test_replicas_per_shard_with_shards_give_ordinal_modulo_shards(chart, ordinal, tmp_path):
    docs = render(chart, {"shards": 3, "replicasPerShard": 2})
    assert only(docs, "StatefulSet")["spec"]["replicas"] == 6
    main = container(docs)
    env = {e["name"]: e for e in main["env"]}
    assert (
        env["POD_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"]
        == "metadata.labels['apps.kubernetes.io/pod-index']"
    )
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(daemon_config(docs)))
    # The pod's own command, with check-config in place of run: the real CLI says which shard it is.
    result = subprocess.run(
        [*main["command"], "check-config", "--offline", str(config)],
        env={
            **os.environ,
            "POD_INDEX": str(ordinal),
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        },
        capture_output=True,
        text=True,
        check=True,
    )
    assert yaml.safe_load(result.stdout)["shard"] == {"index": ordinal % 3, "count": 3, "by": None}


def test_release_label_lands_on_every_object_prometheus_selects(chart):
    values = {
        "releaseLabel": "kube-prometheus-stack",
        "podMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
    }
    docs = render(chart, values)
    for kind in ("PodMonitor", "PrometheusRule"):
        assert only(docs, kind)["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    sm = only(render(chart, {"releaseLabel": "kps", "serviceMonitor": {"enabled": True}}), "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "kps"
    assert (
        "release"
        not in only(render(chart, {"serviceMonitor": {"enabled": True}}), "ServiceMonitor")["metadata"][
            "labels"
        ]
    )


def test_pod_monitor_scrapes_the_pods_as_the_same_job(chart):
    docs = render(chart, {"podMonitor": {"enabled": True, "labels": {"team": "sre"}}})
    pm = only(docs, "PodMonitor")
    assert pm["metadata"]["labels"]["team"] == "sre"
    pod = workload(docs)["spec"]["template"]
    assert pm["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert pod["metadata"]["labels"][pm["spec"]["jobLabel"]] == "failure-predictor"
    (endpoint,) = pm["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] in {p["name"] for p in container(docs)["ports"]}
    assert (endpoint["path"], endpoint["scheme"], endpoint["honorLabels"]) == ("/metrics", "http", True)
    assert not [d for d in docs if d["kind"] == "ServiceMonitor"]
    with pytest.raises(helm_python.HelmRenderError, match="enable one"):
        render(chart, {"podMonitor": {"enabled": True}, "serviceMonitor": {"enabled": True}})


def test_tls_secret_serves_https_and_the_scrape_verifies_it(chart):
    docs = render(chart, {"api": {"tlsSecret": "fp-tls"}, "serviceMonitor": {"enabled": True}})
    api = daemon_config(docs)["api"]
    mounts = {m["name"]: m["mountPath"] for m in container(docs)["volumeMounts"]}
    assert api == {
        "tls_cert_file": f"{mounts['api-tls']}/tls.crt",
        "tls_key_file": f"{mounts['api-tls']}/tls.key",
    }
    volumes = {v["name"]: v for v in workload(docs)["spec"]["template"]["spec"]["volumes"]}
    assert volumes["api-tls"]["secret"]["secretName"] == "fp-tls"
    for probe in ("livenessProbe", "readinessProbe"):
        assert container(docs)[probe]["httpGet"]["scheme"] == "HTTPS"
    (endpoint,) = only(docs, "ServiceMonitor")["spec"]["endpoints"]
    service = only(docs, "Service")["metadata"]["name"]
    assert endpoint["scheme"] == "https"
    assert endpoint["tlsConfig"] == {
        "ca": {"secret": {"name": "fp-tls", "key": "ca.crt"}},
        "serverName": f"{service}.monitoring.svc",
    }
    assert "authorization" not in endpoint


def test_explicit_scheme_tls_config_and_authorization_win(chart):
    values = {
        "serviceMonitor": {
            "enabled": True,
            "scheme": "https",
            "tlsConfig": {"insecureSkipVerify": True},
            "authorization": {"type": "Bearer", "credentials": {"name": "mine", "key": "t"}},
        },
        "api": {"tlsSecret": "fp-tls"},
    }
    (endpoint,) = only(render(chart, values), "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["tlsConfig"] == {"insecureSkipVerify": True}
    assert endpoint["authorization"] == {"type": "Bearer", "credentials": {"name": "mine", "key": "t"}}


def test_protected_metrics_send_the_token_and_probe_with_it(chart, tiny: Tiny, tmp_path):
    values = {
        "api": {"tokenSecret": {"name": "fp-api", "key": "api-token"}, "protectMetrics": True},
        "podMonitor": {"enabled": True},
    }
    docs = render(chart, values)
    api = daemon_config(docs)["api"]
    mounts = {m["name"]: m["mountPath"] for m in container(docs)["volumeMounts"]}
    assert api == {"token_file": f"{mounts['api-token']}/token", "protect_metrics": True}
    volumes = {v["name"]: v for v in workload(docs)["spec"]["template"]["spec"]["volumes"]}
    assert volumes["api-token"]["secret"] == {
        "secretName": "fp-api",
        "items": [{"key": "api-token", "path": "token"}],
    }
    (endpoint,) = only(docs, "PodMonitor")["spec"]["podMetricsEndpoints"]
    assert endpoint["authorization"] == {
        "type": "Bearer",
        "credentials": {"name": "fp-api", "key": "api-token"},
    }

    # The readiness probe's script, run for real against a daemon that requires the token.
    (tmp_path / "token").write_text("s3cret\n")
    daemon = daemon_with_token(tiny, "s3cret")
    daemon.cycle()
    script = container(docs)["readinessProbe"]["exec"]["command"][2]
    with serving(app_server(daemon)) as base:
        port = base.rsplit(":", 1)[1]
        local = script.replace(mounts["api-token"], str(tmp_path)).replace(":9847/", f":{port}/")
        assert subprocess.run([sys.executable, "-c", local], capture_output=True).returncode == 0
        (tmp_path / "token").write_text("wrong\n")
        assert subprocess.run([sys.executable, "-c", local], capture_output=True).returncode != 0
    with pytest.raises(helm_python.HelmRenderError, match="tokenSecret"):
        render(chart, {"api": {"protectMetrics": True}})


def daemon_with_token(tiny: Tiny, token: str) -> Daemon:
    settings = Settings.model_validate({"api": {"token": token, "protect_metrics": True}})
    return Daemon(settings, FixedSource(history_frame(tiny)), tiny.bundle)


def test_extra_args_env_from_and_grace_period_reach_the_pod(chart):
    values = {
        "extraArgs": ["--log-format", "json"],
        "envFrom": [{"secretRef": {"name": "fp-env"}}],
        "terminationGracePeriodSeconds": 25,
    }
    docs = render(chart, values)
    main = container(docs)
    assert main["args"] == ["run", "--config", "/etc/failure-predictor/config.yaml", "--log-format", "json"]
    assert main["envFrom"] == [{"secretRef": {"name": "fp-env"}}]
    assert workload(docs)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 25
    default = workload(render(chart, {}))["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert 0 < default < 30, "below Kubernetes' 30 s default, above the daemon's 5 s drain"
    with pytest.raises(helm_python.HelmValuesError):
        chart.validate_schema({"terminationGracePeriodSeconds": 60})


def test_extra_manifests_are_templated_maps_or_strings(chart):
    values = {
        "extraManifests": [
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "{{ .Release.Name }}-extra"}},
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {{ .Release.Name }}-s\n",
        ]
    }
    docs = render(chart, values)
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {("ConfigMap", "fp-extra"), ("Secret", "fp-s")} <= names


def test_vpa_targets_the_workload(chart):
    for values, kind in (({}, "Deployment"), ({"shards": 2}, "StatefulSet")):
        docs = render(
            chart, {"verticalPodAutoscaler": {"enabled": True, "maxAllowed": {"memory": "2Gi"}}, **values}
        )
        vpa = only(docs, "VerticalPodAutoscaler")
        assert vpa["spec"]["targetRef"] == {
            "apiVersion": "apps/v1",
            "kind": kind,
            "name": workload(docs)["metadata"]["name"],
        }
        assert vpa["spec"]["updatePolicy"]["updateMode"] == "Off"
        (policy,) = vpa["spec"]["resourcePolicy"]["containerPolicies"]
        assert policy["containerName"] == container(docs)["name"]
        assert policy["maxAllowed"] == {"memory": "2Gi"}
    assert not [d for d in render(chart, {}) if d["kind"] == "VerticalPodAutoscaler"]


def test_helm_test_pod_waits_for_readyz_of_a_real_daemon(chart, tiny: Tiny):
    docs = render(chart, {})
    pod = next(d for d in docs if d["kind"] == "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["restartPolicy"] == "Never"
    (test,) = pod["spec"]["containers"]
    assert test["image"] == container(docs)["image"]
    script = test["command"][2]
    service = only(docs, "Service")
    url = f"http://{service['metadata']['name']}.monitoring.svc:{service['spec']['ports'][0]['port']}/readyz"
    assert url in script
    assert not [d for d in render(chart, {"tests": {"enabled": False}}) if d["kind"] == "Pod"]
    daemon = Daemon(Settings(), FixedSource(history_frame(tiny)), tiny.bundle)
    daemon.cycle()
    with serving(app_server(daemon)) as base:
        result = subprocess.run(
            [sys.executable, "-c", script.replace(url, f"{base}/readyz")],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 0, result.stderr
    assert "/readyz 200" in result.stdout


def test_artifact_hub_annotations_parse_and_name_the_released_image():
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    annotations = meta["annotations"]
    assert annotations["artifacthub.io/license"] == "Apache-2.0"
    (image,) = yaml.safe_load(annotations["artifacthub.io/images"])
    assert image["image"].endswith(f":{meta['appVersion']}")
    for key in ("artifacthub.io/links", "artifacthub.io/changes", "artifacthub.io/crds"):
        assert isinstance(yaml.safe_load(annotations[key]), list), key
    kinds = {crd["kind"] for crd in yaml.safe_load(annotations["artifacthub.io/crds"])}
    assert kinds == {"ServiceMonitor", "PodMonitor", "PrometheusRule"}


# ---------------------------------------------------------------------- templated rules

TEMPLATED = {
    "enabled": True,
    "selector": 'job="monitoring/fp"',
    "clusterLabel": "k8s_cluster",
    "replicaLabels": ["instance", "replica"],
}


def templated_rules(chart: helm_python.Chart, tmp_path: Path) -> Path:
    rule = only(render(chart, {"prometheusRule": TEMPLATED}), "PrometheusRule")
    path = tmp_path / "templated.rules.yml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
    return path


def test_templated_rules_use_the_selector_cluster_and_replica_labels_everywhere(chart, tmp_path):
    text = templated_rules(chart, tmp_path).read_text()
    assert 'job="failure-predictor"' not in text and 'job=\\"failure-predictor\\"' not in text
    assert "without (instance)" not in text and "(cluster," not in text and "$labels.cluster" not in text

    def strings(groups: list[dict[str, Any]]) -> str:
        return " ".join(
            text
            for g in groups
            for r in g["rules"]
            for text in [r["expr"], *r.get("annotations", {}).values()]
        )

    source = strings(yaml.safe_load(RULES.read_text())["groups"])
    templated = strings(yaml.safe_load(text)["groups"])
    assert templated.count("monitoring/fp") == source.count('"failure-predictor\\"') + source.count(
        '"failure-predictor"'
    )
    check = subprocess.run(
        [promtool_bin(), "check", "rules", str(tmp_path / "templated.rules.yml")],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_templated_rules_alert_once_per_cluster_across_replicas_in_promtool(chart, tmp_path):
    """Two clusters, two replicas each (told apart by `replica`, not `instance`), the same pod name:
    one alert per cluster, each naming its own cluster's top signal; a lost replica changes nothing."""
    templated_rules(chart, tmp_path)

    def series(metric: str, cluster: str, replica: str, values: str, **extra: str) -> dict[str, str]:
        labels = {"job": "monitoring/fp", "k8s_cluster": cluster, "replica": replica, "instance": "fp:9847"}
        labels |= {"namespace": "shop", "pod": "cart-1", **extra}
        matchers = ", ".join(f'{k}="{v}"' for k, v in labels.items())
        return {"series": f"{metric}{{{matchers}}}", "values": values}

    inputs = []
    for cluster, signal, p in (("eu", "memory", "0.9"), ("us", "errors", "0.95")):
        for replica, tail in (("a", f"{p}x10"), ("b", f"{p}x3 stale")):
            inputs.append(series("failure_probability", cluster, replica, tail, horizon="30m"))
            inputs.append(
                series("failure_probability_contribution", cluster, replica, "0.8x10", signal=signal)
            )
    expected = [
        {
            "exp_labels": {
                "severity": "critical",
                "job": "monitoring/fp",
                "k8s_cluster": cluster,
                "namespace": "shop",
                "pod": "cart-1",
                "horizon": "30m",
            },
            "exp_annotations": {
                "summary": "shop/cart-1 is likely to fail within 30m.",
                "description": f"failure-predictor gives shop/cart-1 a {p} probability of failing within the next 30m. "
                f"Top contributing signal: {signal} (80% of the risk).",
                "runbook_url": "https://github.com/failure-predictor/failure-predictor/blob/main/docs/runbooks.md#highfailureprobability",
            },
        }
        for cluster, signal, p in (("eu", "memory", "90%"), ("us", "errors", "95%"))
    ]
    test = {
        "rule_files": ["templated.rules.yml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": inputs,
                "alert_rule_test": [
                    {"eval_time": "8m", "alertname": "HighFailureProbability", "exp_alerts": expected}
                ],
                "promql_expr_test": [
                    {
                        "expr": "namespace:failure_probability:max",
                        "eval_time": "8m",
                        "exp_samples": [
                            {
                                "labels": 'namespace:failure_probability:max{k8s_cluster="eu", namespace="shop"}',
                                "value": 0.9,
                            },
                            {
                                "labels": 'namespace:failure_probability:max{k8s_cluster="us", namespace="shop"}',
                                "value": 0.95,
                            },
                        ],
                    }
                ],
            }
        ],
    }
    (tmp_path / "templated.test.yml").write_text(yaml.safe_dump(test, sort_keys=False))
    result = subprocess.run(
        [promtool_bin(), "test", "rules", "templated.test.yml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_default_selector_follows_the_job_the_monitors_scrape_as(chart):
    rule = only(render(chart, {"nameOverride": "fp2", "prometheusRule": {"enabled": True}}), "PrometheusRule")
    exprs = " ".join(r["expr"] for g in rule["spec"]["groups"] for r in g["rules"])
    assert 'job="fp2"' in exprs and 'job="failure-predictor"' not in exprs
    assert re.search(r'up\{job="fp2"\} == 0', exprs)
