"""Property: whatever body arrives at POST /api/v1/predict, the answer is a 200 or a 4xx,
never a 5xx, and the daemon goes on scoring on schedule while and after it is fuzzed."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import requests
from apiserver import SIGNALS, FixedSource, app_server, observation, serving
from helpers import Tiny
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from exporter.config import Settings
from exporter.frame import Frame
from exporter.service.daemon import Daemon

EXAMPLES = 150
OK = {200, 404, 422}  # 404: a selector naming no target

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
samples = st.floats() | st.none() | st.integers(-(10**30), 10**30) | st.sampled_from(["0.5", True, [], {}])
signal_names = st.sampled_from((*SIGNALS, "gpu", "", "CPU"))
observations = st.fixed_dictionaries(
    {"signals": st.dictionaries(signal_names, st.lists(samples, max_size=70), max_size=5) | json_values},
    optional={
        "step": st.floats() | st.integers(-10, 10**9) | st.text(max_size=6) | json_values,
        "timestamp": st.floats() | st.integers() | st.text(max_size=25) | json_values,
        "extra": json_values,
    },
)
selectors = st.dictionaries(
    st.sampled_from(["namespace", "pod", "node"]),
    st.sampled_from(["shop", "risky-0", "calm-1", ""]) | json_values,
    max_size=3,
)
# Near-valid bodies, so that the fuzzing also reaches scoring (200) and selector lookups (200, 404).
valid_observations = st.fixed_dictionaries(
    {
        "signals": st.dictionaries(
            st.sampled_from(SIGNALS),
            st.lists(st.floats(-1e6, 1e6) | st.none(), min_size=10, max_size=60),
            min_size=1,
        )
    },
    optional={
        "step": st.sampled_from(["1s", "60s", 30, 0.5, "1h"]),
        "timestamp": st.integers(0, 4 * 10**9) | st.just("2024-05-01T12:00:00Z"),
    },
)
valid_selectors = st.builds(
    lambda calm, i: (
        {"namespace": "batch", "pod": f"calm-{i}"} if calm else {"namespace": "shop", "pod": f"risky-{i}"}
    ),
    st.booleans(),
    st.integers(0, 8),  # the frame has 6 risky and 4 calm targets: some of these are unknown
)
items = valid_observations | valid_selectors | observations | selectors | json_values
bodies = items | st.lists(items, max_size=25)
top_features = st.none() | st.integers(-5, 2000) | st.text(max_size=4)


@pytest.fixture(scope="module")
def served(tiny: Tiny, frame: Frame) -> Iterator[tuple[str, Daemon]]:
    """The server with its scheduler on: a cycle every second throughout the fuzzing."""
    config = Settings.model_validate({"interval": "1s", "api": {"max_batch": 20, "max_body_bytes": 100_000}})
    daemon = Daemon(config, FixedSource(frame), tiny.bundle, registry=CollectorRegistry())
    with serving(app_server(daemon, run_scheduler=True)) as base:
        yield f"{base}/api/v1/predict", daemon


def cycles(daemon: Daemon, outcome: str) -> float:
    return daemon.registry.get_sample_value("failure_predictor_cycles_total", {"outcome": outcome}) or 0.0


def check(response: requests.Response) -> None:
    event(f"HTTP {response.status_code}")  # pytest --hypothesis-show-statistics shows the mix
    assert response.status_code in OK, (response.status_code, response.text[:500])
    body = response.json()
    if response.status_code == 200:
        for answer in body.get("predictions", [body]):
            assert 0.0 <= answer["failure_probability"] <= 1.0
    else:
        assert body["detail"] and all("msg" in error for error in body["detail"])


def keeps_scoring(url: str, daemon: Daemon, frame: Frame, before: float) -> None:
    deadline = time.monotonic() + 10
    while cycles(daemon, "success") < before + 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert cycles(daemon, "success") >= before + 2
    assert cycles(daemon, "failure") == 0
    assert daemon.readiness() == (True, "ok")
    assert requests.post(url, json=observation(frame, 0), timeout=30).status_code == 200


def test_random_json_bodies_get_200_or_4xx_and_scoring_goes_on(served, frame):
    url, daemon = served
    before = cycles(daemon, "success")

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(body=bodies, top=top_features)
    def fuzz(body: object, top: object) -> None:
        params = {} if top is None else {"top_features": top}
        data = json.dumps(body, allow_nan=True).encode()  # NaN and Infinity tokens included
        response = requests.post(url, data=data, params=params, timeout=30)
        # A query value is text: "0" is a valid top_features; text without a digit never is.
        wordy = isinstance(top, str) and not any(c.isdigit() for c in top)
        if wordy or (isinstance(top, int) and not 0 <= top <= 1000):
            assert response.status_code == 422, response.text[:500]
        check(response)

    fuzz()

    keeps_scoring(url, daemon, frame, before)


def test_random_bytes_get_422_and_scoring_goes_on(served, frame):
    url, daemon = served
    before = cycles(daemon, "success")
    valid = json.dumps([observation(frame, 0), dict(frame.targets[0])]).encode()

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(data=st.binary(max_size=300) | st.integers(0, len(valid)).map(lambda cut: valid[:cut]))
    def fuzz(data: bytes) -> None:
        response = requests.post(url, data=data, timeout=30)
        check(response)

    fuzz()

    keeps_scoring(url, daemon, frame, before)
