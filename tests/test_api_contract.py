"""The API's edges over a real uvicorn server: text that is not Unicode, the OpenAPI
contract matching what the server does, and a schema-driven fuzz of every operation."""

from __future__ import annotations

import http.client
import json
import re
from collections.abc import Iterator
from urllib.parse import urlsplit
from urllib.request import urlopen

import pytest
import schemathesis
from apiserver import FixedSource, app_server, observation, serving
from helpers import Tiny
from hypothesis import HealthCheck, given, settings

from exporter.config import Settings
from exporter.frame import Frame
from exporter.service.daemon import Daemon

FUZZ_EXAMPLES = 30  # per operation: bounded, a few seconds each


@pytest.fixture(scope="module")
def daemon(tiny: Tiny, frame: Frame) -> Daemon:
    scored = Daemon(Settings(), FixedSource(frame), tiny.bundle)
    scored.cycle()
    return scored


@pytest.fixture(scope="module")
def base(daemon: Daemon) -> Iterator[str]:
    with serving(app_server(daemon)) as url:
        yield url


@pytest.fixture
def connection(base: str) -> Iterator[http.client.HTTPConnection]:
    """One keep-alive HTTP/1.1 connection, as a client library would hold."""
    parts = urlsplit(base)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    yield connection
    connection.close()


def exchange(connection: http.client.HTTPConnection, body: bytes) -> tuple[int, dict]:
    connection.request("POST", "/api/v1/predict", body=body, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    return response.status, json.loads(response.read())


LONE_SURROGATES = [
    ('{"signals": {"\\ud800": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]}}', ["body", "signals", "\\ud800"]),
    (
        '[{"signals": {"cpu": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]}}, {"namespace": "a\\udfff", "pod": "p"}]',
        ["body", 1, "namespace"],
    ),
    ('{"namespace": "shop", "pod": "\\udc00x"}', ["body", "pod"]),
    ('{"\\ud83d": "shop", "pod": "p"}', ["body", "\\ud83d"]),
]


@pytest.mark.parametrize("text, where", LONE_SURROGATES)
def test_a_lone_surrogate_is_a_422_naming_the_field_and_keeps_the_connection(connection, frame, text, where):
    status, answer = exchange(connection, text.encode())

    assert status == 422
    assert answer["detail"][0]["loc"] == where
    assert "surrogate" in answer["detail"][0]["msg"]
    # The same connection still serves: nothing was dropped.
    status, answer = exchange(connection, json.dumps(observation(frame, 0)).encode())
    assert status == 200
    assert 0 <= answer["failure_probability"] <= 1


def test_a_surrogate_pair_is_ordinary_text(connection):
    status, answer = exchange(connection, b'{"namespace": "\\ud83d\\ude00", "pod": "p"}')

    assert status == 404  # a valid (if unusual) name: no such target
    assert "\U0001f600" in answer["detail"][0]["msg"]


def test_every_operation_keeps_its_openapi_contract(base):
    # schemathesis' pytest plugin does not run under this pytest; its strategies do.
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {operation.path for operation in operations} >= {"/api/v1/predict", "/api/v1/targets"}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
        def keeps_contract(case: schemathesis.Case) -> None:
            case.call_and_validate()

        keeps_contract()


def test_the_schema_forbids_what_the_fault_matrix_found_rejected(base):
    schema = json.loads(urlopen(f"{base}/openapi.json").read())
    paths, components = schema["paths"], schema["components"]["schemas"]

    detail = paths["/api/v1/targets/{target}"]["get"]
    assert [p["name"] for p in detail["parameters"] if p["in"] == "path"] == ["target"]
    assert "404" in detail["responses"]
    [label] = [p for p in paths["/api/v1/targets"]["get"]["parameters"] if p["name"] == "label"]
    [items] = [option["items"] for option in label["schema"]["anyOf"] if option.get("type") == "array"]
    assert re.search(items["pattern"], "pod=cart-*") and not re.search(items["pattern"], "")
    step = components["Observation"]["properties"]["step"]["anyOf"]
    assert {"type": "number", "minimum": 0.001, "maximum": 7 * 86400.0} in step
    assert components["Observation"]["properties"]["signals"]["propertyNames"] == {
        "enum": ["cpu", "memory", "latency", "errors"]
    }
