"""The Helm chart, rendered and linted with real Helm code (helm-python-sdk, Helm SDK v4).

Built-in kinds are validated offline against the Kubernetes schemas (kubernetes-validate,
strict); the Prometheus operator's kinds, which have no schema there, against the fields the
operator reads. The rules and dashboards the chart embeds are copies kept in the chart (Helm
cannot read outside it); ``test_chart_copies_match_the_sources`` keeps them identical to
rules/ and grafana/, the single source of truth.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml

from exporter.cli import main as cli_main
from exporter.config import BOOTSTRAP_MODEL, Settings, load_settings
from exporter.models.registry import activate

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "helm" / "failure-predictor"
RULES = REPO / "rules" / "failure-predictor.rules.yml"
DASHBOARDS = REPO / "grafana" / "dashboards"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
CHART_DEFAULTS = yaml.safe_load((CHART / "values.yaml").read_text())
KUBE_VERSION = "1.30.0"
RELEASE, NAMESPACE = "fp", "monitoring"
SECRET_DIR = "/etc/failure-predictor/secrets"
OPERATOR_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule", "VerticalPodAutoscaler"}
ALL_ON = {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}}


@pytest.fixture(scope="module")
def chart() -> Iterator[helm_python.Chart]:
    with helm_python.Chart.load(CHART) as loaded:
        yield loaded


def values_of(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) or {}


def render(chart: helm_python.Chart, values: dict[str, Any]) -> list[dict[str, Any]]:
    """Every rendered manifest, parsed; NOTES.txt is text, not a manifest."""
    rendered = chart.render(values, name=RELEASE, namespace=NAMESPACE)
    return [
        doc
        for name, text in sorted(rendered.items())
        if name.endswith((".yaml", ".yml"))
        for doc in yaml.safe_load_all(text)
        if doc
    ]


def only(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def workload(docs: list[dict[str, Any]]) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    assert len(found) == 1
    return found[0]


def daemon_config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    configmap = next(d for d in docs if d["kind"] == "ConfigMap" and "config.yaml" in d.get("data", {}))
    return yaml.safe_load(configmap["data"]["config.yaml"])


def check_service_monitor(sm: dict[str, Any]) -> None:
    """The fields of monitoring.coreos.com/v1 ServiceMonitor the operator reads."""
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    spec = sm["spec"]
    endpoints = "endpoints" if sm["kind"] == "ServiceMonitor" else "podMetricsEndpoints"
    assert set(spec) <= {
        "jobLabel",
        "namespaceSelector",
        "selector",
        endpoints,
        "targetLabels",
        "podTargetLabels",
    }
    assert spec["selector"]["matchLabels"]
    assert spec[endpoints]
    duration = re.compile(r"^(\d+(ms|s|m|h))+$")
    endpoint_fields = {
        "port", "path", "scheme", "interval", "scrapeTimeout", "honorLabels", "relabelings",
        "metricRelabelings", "tlsConfig", "bearerTokenSecret", "authorization", "basicAuth",
    }  # fmt: skip
    relabel_fields = {"sourceLabels", "separator", "targetLabel", "regex", "modulus", "replacement", "action"}
    for endpoint in spec[endpoints]:
        assert set(endpoint) <= endpoint_fields
        assert endpoint.get("scheme", "http") in {"http", "https"}
        assert isinstance(endpoint["port"], str)
        assert duration.match(endpoint["interval"]) and duration.match(endpoint["scrapeTimeout"])
        assert isinstance(endpoint["honorLabels"], bool)
        for relabel in endpoint.get("relabelings", []) + endpoint.get("metricRelabelings", []):
            assert set(relabel) <= relabel_fields
            assert relabel.get("action", "replace") in {
                "replace", "keep", "drop", "hashmod", "labelmap", "labeldrop", "labelkeep",
                "lowercase", "uppercase", "keepequal", "dropequal",
            }  # fmt: skip


def check_vertical_pod_autoscaler(vpa: dict[str, Any]) -> None:
    """The fields of autoscaling.k8s.io/v1 VerticalPodAutoscaler the VPA reads."""
    assert vpa["apiVersion"] == "autoscaling.k8s.io/v1"
    spec = vpa["spec"]
    assert set(spec) <= {"targetRef", "updatePolicy", "resourcePolicy", "recommenders"}
    assert spec["targetRef"]["apiVersion"] == "apps/v1"
    assert spec["targetRef"]["kind"] in {"Deployment", "StatefulSet"}
    assert spec["updatePolicy"]["updateMode"] in {"Off", "Initial", "Recreate", "Auto"}
    for policy in spec["resourcePolicy"]["containerPolicies"]:
        assert set(policy) <= {"containerName", "mode", "minAllowed", "maxAllowed", "controlledResources"}
        assert set(policy["controlledResources"]) <= {"cpu", "memory"}


def check_prometheus_rule(rule: dict[str, Any]) -> None:
    """The fields of monitoring.coreos.com/v1 PrometheusRule the operator reads."""
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(rule["spec"]) == {"groups"}
    names = [g["name"] for g in rule["spec"]["groups"]]
    assert len(names) == len(set(names)), "group names must be unique"
    for group in rule["spec"]["groups"]:
        assert set(group) <= {"name", "interval", "rules", "partial_response_strategy", "limit"}
        for r in group["rules"]:
            assert set(r) <= {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}
            assert ("alert" in r) != ("record" in r)
            assert isinstance(r["expr"], str) and r["expr"].strip()
            for key in ("labels", "annotations"):
                assert all(isinstance(v, str) for v in r.get(key, {}).values())


@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda p: p.name)
def test_every_manifest_is_valid_kubernetes(chart, values_file):
    docs = render(chart, values_of(values_file))
    assert {"Deployment", "StatefulSet"} & {d["kind"] for d in docs}
    for doc in docs:
        if doc["kind"] in ("ServiceMonitor", "PodMonitor"):
            check_service_monitor(doc)
        elif doc["kind"] == "PrometheusRule":
            check_prometheus_rule(doc)
        elif doc["kind"] == "VerticalPodAutoscaler":
            check_vertical_pod_autoscaler(doc)
        else:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        assert doc["metadata"]["namespace"] == NAMESPACE


@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda p: p.name)
def test_lint_finds_nothing(values_file):
    report = helm_python.lint(
        CHART, values_of(values_file), strict=True, namespace=NAMESPACE, kube_version=f"v{KUBE_VERSION}"
    )
    assert report["errors"] == []
    assert report["messages"] == []


@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda p: p.name)
def test_ci_values_pass_the_schema(chart, values_file):
    chart.validate_schema(values_of(values_file))


@pytest.mark.parametrize(
    "bad",
    [
        {"shards": -1},
        {"shards": 0},
        {"shards": "3"},
        {"image": {"pullPolicy": "Sometimes"}},
        {"service": {"type": "ExternalName"}},
        {"service": {"port": 70000}},
        {"containerPort": "9847"},
        {"config": {"interval": "soon"}},
        {"config": {"log_level": "verbose"}},
        {"config": {"target_labels": []}},
        {"config": {"anomaly": {"workload_source": "owners"}}},
        {"config": {"anomaly": {"owners": {"selector": '{cluster="a"}'}}}},
        {"config": {"listen": {"port": 1}}},
        {"prometheus": {"url": "prometheus:9090"}},
        {"prometheusRule": {"alerts": {"HighFailureProbability": {"threshold": "high"}}}},
        {"prometheusRule": {"alerts": {"HighFailureProbability": {"severity": "page"}}}},
        {"serviceMonitor": {"enabled": "yes"}},
        {"trainer": {"concurrencyPolicy": "Sometimes"}},
        {"model": {"persistence": {"accessModes": ["ReadWriteSometimes"]}}},
        {"unknownTopLevel": 1},
    ],
    ids=lambda v: json.dumps(v),
)
def test_schema_rejects_bad_values(chart, bad):
    with pytest.raises(helm_python.HelmValuesError):
        chart.validate_schema(bad)


def test_chart_copies_match_the_sources():
    fix = "copy them: cp rules/failure-predictor.rules.yml grafana/dashboards/*.json into helm/failure-predictor/files/"
    assert (CHART / "files" / RULES.name).read_bytes() == RULES.read_bytes(), fix
    copies = sorted(p.name for p in (CHART / "files" / "dashboards").iterdir())
    assert copies == sorted(p.name for p in DASHBOARDS.glob("*.json")), fix
    for name in copies:
        assert (CHART / "files" / "dashboards" / name).read_bytes() == (DASHBOARDS / name).read_bytes(), fix


def test_prometheus_rule_groups_equal_the_rules_file(chart):
    rule = only(render(chart, ALL_ON), "PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]


def alerts_by_name(groups: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}


def test_rule_overrides_change_exactly_what_they_claim(chart):
    overrides = {
        "HighFailureProbability": {"threshold": 0.9, "for": "10m"},
        "FailurePredictorCycleStale": {"threshold": 600, "severity": "critical"},
        "ElevatedFailureProbability": {"severity": "info"},
    }
    values = {
        "prometheusRule": {
            "enabled": True,
            "alerts": overrides,
            "disabled": ["AnomalousWorkloadBehaviour"],
            "runbookUrl": "https://wiki.example.com/runbooks/",
            "additionalLabels": {"release": "kube-prometheus-stack"},
        }
    }
    rule = only(render(chart, values), "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    source = yaml.safe_load(RULES.read_text())["groups"]
    expected = alerts_by_name(source)
    del expected["AnomalousWorkloadBehaviour"]
    for name, alert in expected.items():
        override = overrides.get(name, {})
        if "threshold" in override:
            assert len(re.findall(r">\s*[0-9.]+", alert["expr"])) >= 1
            alert["expr"] = re.sub(r">\s*[0-9.]+", f"> {override['threshold']}", alert["expr"], count=1)
        if "for" in override:
            alert["for"] = override["for"]
        if "severity" in override:
            alert["labels"]["severity"] = override["severity"]
        anchor = alert["annotations"]["runbook_url"].split("#")[1]
        alert["annotations"]["runbook_url"] = f"https://wiki.example.com/runbooks#{anchor}"
    got = alerts_by_name(rule["spec"]["groups"])
    assert got == expected
    assert got["HighFailureProbability"]["expr"] == (
        'max without (instance) (failure_probability{job="failure-predictor"}) > 0.9'
    )
    assert got["FailurePredictorCycleStale"]["expr"].startswith(
        'time() - failure_predictor_last_success_timestamp_seconds{job="failure-predictor"} > 600\n'
    )
    records = [r for g in rule["spec"]["groups"] for r in g["rules"] if "record" in r]
    assert records == [r for g in source for r in g["rules"] if "record" in r]


@pytest.mark.parametrize(
    "values",
    [
        {"alerts": {"NoSuchAlert": {"for": "1m"}}},
        {"disabled": ["NoSuchAlert"]},
        {"alerts": {"FailurePredictorDown": {"threshold": 1}}},
    ],
    ids=["unknown alert", "unknown disabled", "alert without threshold"],
)
def test_rule_overrides_naming_nothing_fail_the_render(chart, values):
    with pytest.raises(helm_python.HelmRenderError):
        render(chart, {"prometheusRule": {"enabled": True, **values}})


def test_dashboard_configmaps_carry_the_exact_json(chart):
    values = {"grafanaDashboards": {"enabled": True, "label": "dash", "labelValue": "yes", "folder": "SRE"}}
    maps = [d for d in render(chart, values) if d["kind"] == "ConfigMap" and "config.yaml" not in d["data"]]
    carried = {}
    for cm in maps:
        assert cm["metadata"]["labels"]["dash"] == "yes"
        assert cm["metadata"]["annotations"]["grafana_folder"] == "SRE"
        carried.update(cm["data"])
    assert carried == {p.name: p.read_text() for p in DASHBOARDS.glob("*.json")}


def test_dashboards_default_to_the_grafana_sidecar_label(chart):
    maps = [
        d
        for d in render(chart, {"grafanaDashboards": {"enabled": True}})
        if "grafana_dashboard" in d["metadata"]["labels"]
    ]
    assert len(maps) == len(list(DASHBOARDS.glob("*.json")))
    assert {cm["metadata"]["labels"]["grafana_dashboard"] for cm in maps} == {"1"}


def mount_secrets(docs: list[dict[str, Any]], config_text: str, directory: Path) -> str:
    """What the kubelet does: the Secret's keys become files; the config points at them."""
    secrets = [d for d in docs if d["kind"] == "Secret"]
    if secrets:
        for key, value in secrets[0]["data"].items():
            (directory / key).write_bytes(base64.b64decode(value))
    else:  # an existingSecret: stand in for the user's Secret with the keys the config names
        for path in re.findall(rf"{SECRET_DIR}/(\S+)", config_text):
            (directory / path).write_text("stand-in\n")
    return config_text.replace(SECRET_DIR, str(directory))


def mount_models(config_text: str, directory: Path) -> str:
    """What the volume holds once the trainer ran: a models directory whose ``active`` is a bundle
    (check-config loads model.path, which on this machine is not the pod's volume)."""
    path = (yaml.safe_load(config_text).get("model") or {}).get("path")
    if path is None:
        return config_text
    shutil.copytree(BOOTSTRAP_MODEL, directory / "bootstrap")
    activate(directory, "bootstrap")
    return config_text.replace(path, str(directory))


@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda p: p.name)
def test_configmap_passes_check_config(chart, values_file, tmp_path, capsys, monkeypatch):
    for key in [k for k in os.environ if k.startswith("FAILURE_PREDICTOR_")]:
        monkeypatch.delenv(key)
    docs = render(chart, values_of(values_file))
    configmap = next(d for d in docs if d["kind"] == "ConfigMap" and "config.yaml" in d["data"])
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    config = tmp_path / "config.yaml"
    config_text = mount_secrets(docs, configmap["data"]["config.yaml"], secrets)
    config.write_text(mount_models(config_text, tmp_path / "models"))
    assert cli_main(["check-config", str(config)]) == 0
    settings = load_settings(config)
    assert (
        settings.listen.port
        == workload(docs)["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"]
    )
    replicas_per_shard = values_of(values_file).get("replicasPerShard", 1)
    assert settings.shard.count * replicas_per_shard == workload(docs)["spec"]["replicas"]


def test_prometheus_credentials_come_from_the_secret(chart):
    docs = render(chart, {"prometheus": {"bearerToken": "t0ken", "ca": "PEM"}})
    secret = only(docs, "Secret")
    assert base64.b64decode(secret["data"]["bearer-token"]) == b"t0ken"
    config = daemon_config(docs)["prometheus"]
    assert config["bearer_token_file"] == f"{SECRET_DIR}/bearer-token"
    assert config["ca_file"] == f"{SECRET_DIR}/ca.crt"
    assert "t0ken" not in json.dumps([d for d in docs if d["kind"] != "Secret"])
    pod = workload(docs)["spec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["prometheus-credentials"] == SECRET_DIR
    assert {"name": "prometheus-credentials", "secret": {"secretName": secret["metadata"]["name"]}} in pod[
        "volumes"
    ]


def daemon_routes() -> set[str]:
    from exporter.config import Settings
    from exporter.models.bundle import load_bundle
    from exporter.service.api import create_app
    from exporter.service.daemon import Daemon

    class NoSource:
        signals = ("cpu", "memory", "latency", "errors")

    daemon = Daemon(Settings(), NoSource(), load_bundle(BOOTSTRAP_MODEL))
    return {route.path for route in create_app(daemon, run_scheduler=False).routes}


@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda p: p.name)
def test_pod_is_hardened_and_probes_real_endpoints(chart, values_file):
    docs = render(chart, values_of(values_file))
    pod = workload(docs)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    routes = daemon_routes()
    for container in pod["containers"] + pod.get("initContainers", []):
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
    (container,) = pod["containers"]
    assert container["args"][:3] == ["run", "--config", "/etc/failure-predictor/config.yaml"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    listen_port = daemon_config(docs)["listen"]["port"]
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert container[probe]["httpGet"]["path"] == path
        assert path in routes
        assert ports[container[probe]["httpGet"]["port"]] == listen_port
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/etc/failure-predictor/config.yaml", "/tmp"} <= mounts
    service = only(docs, "Service")
    assert service["spec"]["ports"][0]["targetPort"] in ports
    assert (
        service["spec"]["selector"].items()
        <= workload(docs)["spec"]["template"]["metadata"]["labels"].items()
    )


def test_service_monitor_scrapes_the_service_as_the_rules_expect(chart):
    values = {"serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}}}
    docs = render(chart, values)
    sm, service = only(docs, "ServiceMonitor"), only(docs, "Service")
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    spec = sm["spec"]
    assert spec["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert spec["namespaceSelector"]["matchNames"] == [NAMESPACE]
    assert spec["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert spec["endpoints"][0]["path"] == "/metrics"
    assert spec["endpoints"][0]["honorLabels"] is True
    # The shipped self-monitoring alerts select job="failure-predictor".
    assert service["metadata"]["labels"][spec["jobLabel"]] == "failure-predictor"
    assert 'job="failure-predictor"' in RULES.read_text()


def test_shard_by_reaches_the_daemon_config(chart):
    docs = render(chart, {"shards": 4, "shardBy": "pod"})
    assert daemon_config(docs)["shard"] == {"index": 0, "count": 4, "by": "pod"}


def test_shards_run_as_a_statefulset_whose_ordinal_is_the_shard(chart):
    docs = render(chart, {"shards": 3})
    sts = only(docs, "StatefulSet")
    assert sts["spec"]["replicas"] == 3
    assert daemon_config(docs)["shard"] == {"index": 0, "count": 3}
    env = {e["name"]: e for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["FAILURE_PREDICTOR_SHARD__INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.labels['apps.kubernetes.io/pod-index']"
    )
    assert not [d for d in docs if d["kind"] == "Deployment"]
    # The ordinal arrives as "2"; the daemon's env overrides read it as the index.
    settings = load_settings(
        None, {"FAILURE_PREDICTOR_SHARD__COUNT": "3", "FAILURE_PREDICTOR_SHARD__INDEX": "2"}
    )
    assert (settings.shard.index, settings.shard.count) == (2, 3)


def test_trainer_writes_to_the_claim_the_daemon_serves(chart):
    docs = render(chart, values_of(CHART / "ci" / "sharded-trained-values.yaml"))
    cron = only(docs, "CronJob")
    job_pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    args = job_pod["containers"][0]["args"]
    assert args[0] == "train"
    models_dir = args[args.index("--models-dir") + 1]
    assert "--activate" in args
    assert daemon_config(docs)["model"]["path"] == models_dir
    env = {e["name"]: e.get("value") for e in job_pod["containers"][0]["env"]}
    assert env["FAILURE_PREDICTOR_SHARD__COUNT"] == "1", "the model is trained on every target"
    claims = {
        v["persistentVolumeClaim"]["claimName"] for v in job_pod["volumes"] if "persistentVolumeClaim" in v
    }
    pod = workload(docs)["spec"]["template"]["spec"]
    assert claims == {
        v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v
    }
    assert only(docs, "PersistentVolumeClaim")["metadata"]["name"] in claims
    assert pod["initContainers"][0]["name"] == "seed-models"


def test_trainer_without_persistence_fails_the_render(chart):
    with pytest.raises(helm_python.HelmRenderError, match=r"model\.persistence\.enabled"):
        render(chart, {"trainer": {"enabled": True}})


def test_defaults_create_no_operator_objects_and_serve_the_bundled_model(chart):
    docs = render(chart, {})
    released = [d for d in docs if "helm.sh/hook" not in d["metadata"].get("annotations", {})]
    assert {d["kind"] for d in released} == {"Deployment", "Service", "ServiceAccount", "ConfigMap"}
    assert "model" not in daemon_config(docs), "the daemon's default is the bootstrap bundle in the package"


def test_owner_settings_reach_the_daemon_and_fill_every_owner_selector(chart):
    values = {
        "config": {"anomaly": {"workload_source": "kube_pod_owner", "owners": {"selector": 'cluster="eu-1"'}}}
    }
    settings = Settings.model_validate(daemon_config(render(chart, values)))
    assert settings.anomaly.workload_source == "kube_pod_owner"
    assert settings.owner_query.count('{cluster="eu-1",}') == 3
    defaults = Settings.model_validate(daemon_config(render(chart, {})))
    assert defaults.anomaly.workload_source == "auto" and defaults.reads_owners
