"""The read-only API routes against the real server: the target list with sorting and
filters, one target with its bounded probability history, the model manifest, the
OpenAPI docs, and the API's own request metrics."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from urllib.parse import quote

import pytest
import requests
from apiserver import FixedSource, app_server, history_frame, labels_of, serving, settings_with
from helpers import Tiny
from prometheus_client.parser import text_string_to_metric_families

from exporter.frame import Frame
from exporter.recommend import NO_ACTION
from exporter.service.daemon import Daemon
from exporter.snapshot import RISK_NAMES

HISTORY = 3
ODD = {"namespace": "batch", "pod": "we/ird pod%"}  # needs escaping in a URL path


@pytest.fixture(scope="module")
def frame(tiny: Tiny) -> Frame:
    frame = history_frame(tiny)
    return replace(frame, targets=(*frame.targets[:-1], ODD))


@pytest.fixture(scope="module")
def daemon(tiny: Tiny, frame: Frame) -> Daemon:
    return Daemon(settings_with(history_points=HISTORY), FixedSource(frame), tiny.bundle)


@pytest.fixture(scope="module")
def base(daemon: Daemon) -> Iterator[str]:
    with serving(app_server(daemon)) as url:
        daemon.cycle()
        yield url


def get(base: str, path: str, **params: object) -> requests.Response:
    return requests.get(f"{base}{path}", params=params, timeout=30)


def test_targets_are_riskiest_first_by_default(base, daemon):
    body = get(base, "/api/v1/targets").json()

    probabilities = [t["failure_probability"] for t in body["targets"]]
    assert probabilities == sorted(probabilities, reverse=True)
    assert body["total"] == len(body["targets"]) == len(daemon.state.snapshot.targets)
    assert body["model_version"] == daemon.state.snapshot.model.version
    top = body["targets"][0]
    assert top["risk_level"] == "CRITICAL"
    assert top["recommendations"] != [NO_ACTION]
    assert body["targets"][-1]["recommendations"] == [NO_ACTION]


@pytest.mark.parametrize(
    ("params", "key", "descending"),
    [
        ({"sort": "anomaly"}, lambda t: t["anomaly_score"], True),
        ({"sort": "probability", "order": "asc"}, lambda t: t["failure_probability"], False),
        ({"sort": "labels"}, labels_of, False),
        ({"sort": "labels", "order": "desc"}, labels_of, True),
    ],
)
def test_targets_sort(base, params, key, descending):
    targets = get(base, "/api/v1/targets", **params).json()["targets"]

    assert [key(t) for t in targets] == sorted((key(t) for t in targets), reverse=descending)


def test_targets_filter_by_risk_level(base, daemon):
    levels = [RISK_NAMES[level] for level in daemon.state.snapshot.risk]

    critical = get(base, "/api/v1/targets", risk="critical").json()
    high_and_up = get(base, "/api/v1/targets", min_risk="HIGH").json()
    calm = get(base, "/api/v1/targets", risk=["MINIMAL", "LOW"]).json()

    assert critical["total"] == levels.count("CRITICAL") > 0
    assert {t["risk_level"] for t in critical["targets"]} == {"CRITICAL"}
    assert high_and_up["total"] == levels.count("HIGH") + levels.count("CRITICAL")
    assert calm["total"] == levels.count("MINIMAL") + levels.count("LOW") > 0


def test_targets_filter_by_label_globs(base):
    shop = get(base, "/api/v1/targets", label="namespace=shop").json()["targets"]
    calm = get(base, "/api/v1/targets", label=["namespace!=shop", "pod=calm-*"]).json()["targets"]

    assert shop and {t["labels"]["namespace"] for t in shop} == {"shop"}
    assert calm and all(t["labels"]["pod"].startswith("calm-") for t in calm)
    assert ODD not in [t["labels"] for t in calm]


def test_limit_keeps_the_first_and_reports_the_total(base):
    body = get(base, "/api/v1/targets", limit=2, sort="labels").json()

    assert len(body["targets"]) == 2
    assert body["total"] > 2


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"label": "namespace~shop"}, "expected name=glob"),
        ({"label": "node=a"}, "'node' is not a target label"),
        ({"risk": "SEVERE"}, "Input should be"),
        ({"sort": "pod"}, "Input should be"),
        ({"limit": 0}, "greater than or equal to 1"),
    ],
)
def test_bad_target_queries_are_422(base, params, message):
    response = get(base, "/api/v1/targets", **params)

    assert response.status_code == 422
    assert message in response.text


def test_target_detail_has_its_explanation_and_bounded_history(base, daemon, frame):
    for _ in range(HISTORY + 2):
        daemon.cycle()
    target = frame.targets[0]

    body = get(base, f"/api/v1/targets/{target['namespace']}/{target['pod']}").json()

    snapshot = daemon.state.snapshot
    assert body["target"] == dict(target)
    assert body["failure_probability"] == float(snapshot.probability[0])
    assert body["explanation"]["signals"]
    assert len(body["history"]) == HISTORY
    assert [point["failure_probability"] for point in body["history"]] == [
        float(snapshot.probability[0])
    ] * HISTORY


def test_target_detail_takes_escaped_label_values(base):
    path = "/".join(quote(ODD[name], safe="") for name in ("namespace", "pod"))

    body = get(base, f"/api/v1/targets/{path}").json()

    assert body["target"] == ODD


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/api/v1/targets/shop/nope", 'no target {namespace="shop",pod="nope"}'),
        ("/api/v1/targets/shop", "expected /api/v1/targets/<namespace>/<pod>"),
        ("/api/v1/targets/shop/risky-0/extra", "expected /api/v1/targets/<namespace>/<pod>"),
    ],
)
def test_unknown_target_detail_is_404(base, path, message):
    response = get(base, path)

    assert response.status_code == 404
    assert message in response.json()["detail"][0]["msg"]


def test_history_forgets_targets_that_vanish(tiny, frame):
    source = FixedSource(frame)
    daemon = Daemon(settings_with(history_points=HISTORY), source, tiny.bundle)
    gone = frame.targets[0]
    with serving(app_server(daemon)) as url:
        daemon.cycle()
        source.frame = replace(frame, values=frame.values[1:], targets=frame.targets[1:])
        daemon.cycle()
        source.frame = frame
        daemon.cycle()
        body = get(url, f"/api/v1/targets/{gone['namespace']}/{gone['pod']}").json()

    assert len(body["history"]) == 1  # back, but its history starts again


def test_model_route_shows_what_is_served(base, tiny):
    body = get(base, "/api/v1/model").json()

    manifest = tiny.bundle.manifest
    assert body["version"] == manifest.version
    assert body["features"] == list(manifest.features)
    assert body["window_steps"] == manifest.window_steps
    assert body["metrics"].keys() == manifest.metrics.keys()
    assert body["training"].keys() == manifest.training.keys()
    assert body["serving"]["horizon"] == "30m"
    assert body["serving"]["differences"] == []


def test_openapi_documents_every_route_and_the_predict_body(base):
    schema = get(base, "/openapi.json").json()

    assert {"/api/v1/predict", "/api/v1/targets", "/api/v1/targets/{target}", "/api/v1/model"} <= set(
        schema["paths"]
    )
    body = schema["paths"]["/api/v1/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["$ref"] == "#/components/schemas/PredictRequest"
    components = schema["components"]["schemas"]
    assert {"Observation", "TargetSelector", "PredictRequest"} <= set(components)
    assert set(components["TargetSelector"]["properties"]) == {"namespace", "pod"}
    assert get(base, "/docs").status_code == 200


def samples(base: str, name: str) -> dict[frozenset, float]:
    text = get(base, "/metrics").text
    return {
        frozenset(sample.labels.items()): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


def test_requests_are_counted_by_route_template_and_code(base, frame):
    before = samples(base, "failure_predictor_api_requests_total")
    target = frame.targets[1]
    get(base, f"/api/v1/targets/{target['namespace']}/{target['pod']}")
    get(base, "/api/v1/targets/shop/nope")
    get(base, "/no/such/path")

    after = samples(base, "failure_predictor_api_requests_total")

    def delta(route: str, code: str) -> float:
        key = frozenset({"route": route, "code": code}.items())
        return after.get(key, 0) - before.get(key, 0)

    assert delta("/api/v1/targets/{target}", "200") == 1
    assert delta("/api/v1/targets/{target}", "404") == 1
    assert delta("unmatched", "404") == 1
    routes = {dict(labels)["route"] for labels in after}
    assert not any(target["pod"] in route for route in routes)
    latency = samples(base, "failure_predictor_api_request_duration_seconds_count")
    assert latency[frozenset({"route": "/api/v1/targets/{target}"}.items())] >= 2


def test_exposition_with_api_metrics_passes_promtool(base):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package 'prometheus')")
    get(base, "/api/v1/targets")

    checked = subprocess.run(
        [promtool, "check", "metrics"], input=get(base, "/metrics").content, capture_output=True, timeout=30
    )

    assert (checked.returncode, checked.stdout, checked.stderr) == (0, b"", b"")


def test_not_ready_target_list_is_empty_with_the_reason(tiny, frame):
    daemon = Daemon(settings_with(), FixedSource(frame), tiny.bundle)
    with serving(app_server(daemon)) as url:
        body = get(url, "/api/v1/targets").json()

    assert body == {"ready": False, "reason": "no successful cycle yet", "total": 0, "targets": []}
