"""POST /api/v1/predict against the real server: raw values scored like the cycle scores
them, target selectors answered from the latest cycle, explanations that add up, and
422s that name the field for every kind of bad body."""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator

import numpy as np
import pytest
import requests
from apiserver import WINDOW, FixedSource, app_server, observation, serving, settings_with
from helpers import Tiny
from servers import free_port

from exporter.features import frame_features, window_features
from exporter.frame import Frame
from exporter.recommend import NO_ACTION
from exporter.service.api import make_server
from exporter.service.daemon import Daemon
from exporter.snapshot import RISK_NAMES

MAX_BATCH = 40
MAX_BODY = 200_000


@pytest.fixture(scope="module")
def daemon(tiny: Tiny, frame: Frame) -> Daemon:
    settings = settings_with(max_batch=MAX_BATCH, max_body_bytes=MAX_BODY)
    scored = Daemon(settings, FixedSource(frame), tiny.bundle)
    scored.cycle()
    return scored


@pytest.fixture(scope="module")
def url(daemon: Daemon) -> Iterator[str]:
    with serving(app_server(daemon)) as base:
        yield f"{base}/api/v1/predict"


def post(url: str, body: object, **params: object) -> requests.Response:
    return requests.post(url, data=json.dumps(body), params=params, timeout=30)


def alone(daemon: Daemon, frame: Frame) -> np.ndarray:
    """Values sent in a body have no history: their anomaly score is the detector's own."""
    return daemon.state.bundle.score(frame_features(frame)).anomaly


def test_single_prediction_equals_the_cycle_score(url, daemon, frame):
    snapshot = daemon.state.snapshot

    for row in (0, len(frame.targets) - 1):
        answer = post(url, observation(frame, row)).json()

        assert answer["failure_probability"] == float(snapshot.probability[row])
        assert answer["anomaly_score"] == pytest.approx(float(alone(daemon, frame)[row]), rel=1e-12)
        assert answer["risk_level"] == RISK_NAMES[snapshot.risk[row]]
        assert answer["target"] is None
        assert answer["horizon"] == "30m"
        assert answer["model_version"] == snapshot.model.version
        assert answer["timestamp"] == frame.end


def test_batch_prediction_equals_the_cycle_scores(url, daemon, frame):
    snapshot = daemon.state.snapshot
    body = [observation(frame, row) for row in range(len(frame.targets))]

    answers = post(url, body).json()["predictions"]

    assert [a["failure_probability"] for a in answers] == snapshot.probability.tolist()
    assert [a["anomaly_score"] for a in answers] == pytest.approx(alone(daemon, frame).tolist(), rel=1e-12)
    assert {a["risk_level"] for a in answers} >= {"CRITICAL", "MINIMAL"}


def test_target_selector_answers_from_the_latest_cycle(url, daemon, frame):
    snapshot = daemon.state.snapshot
    row = 2

    answer = post(url, dict(frame.targets[row])).json()

    assert answer["target"] == dict(frame.targets[row])
    assert answer["failure_probability"] == float(snapshot.probability[row])
    assert answer["anomaly_score"] == float(snapshot.anomaly[row])
    assert answer["timestamp"] == snapshot.data_time
    assert answer["model_version"] == snapshot.model.version


def test_batch_mixes_selectors_and_raw_values_in_order(url, frame):
    body = [dict(frame.targets[0]), observation(frame, 1), dict(frame.targets[1]), observation(frame, 0)]

    answers = post(url, body).json()["predictions"]

    assert [a["target"] for a in answers] == [dict(frame.targets[0]), None, dict(frame.targets[1]), None]
    assert answers[0]["failure_probability"] == answers[3]["failure_probability"]
    assert answers[1]["failure_probability"] == answers[2]["failure_probability"]


def test_a_batch_answers_each_observation_as_it_would_be_answered_alone(url, frame):
    body = [observation(frame, row) for row in range(len(frame.targets))]

    batch = post(url, body, top_features=1000).json()["predictions"]

    assert batch == [post(url, item, top_features=1000).json() for item in body]
    assert gc.isenabled()  # paused only while the answers were built


def test_a_body_the_general_decoder_reads_is_answered_as_the_compiled_one(url, frame):
    raw = [observation(frame, row) for row in range(len(frame.targets))]

    compiled = post(url, raw).json()["predictions"]
    general = post(url, [*raw, dict(frame.targets[0])]).json()["predictions"]  # a selector: pydantic's path

    assert general[:-1] == compiled


def test_answers_on_one_keep_alive_connection_arrive_whole_and_in_order(url, tiny, frame):
    """The daemon's own server joins an answer's writes into one send, made as soon as the
    answer is complete; large answers (over 64 KiB) go out at once."""
    settings = settings_with(max_batch=MAX_BATCH, max_body_bytes=MAX_BODY)
    daemon = Daemon(settings, FixedSource(frame), tiny.bundle)
    daemon.cycle()
    batch = [observation(frame, row % len(frame.targets)) for row in range(30)]
    bodies = [
        batch,
        observation(frame, 0),
        {"signals": {}},
        batch,
        observation(frame, 1),
        dict(frame.targets[2]),
    ]

    with serving(make_server(daemon, "127.0.0.1", free_port())) as base, requests.Session() as session:
        answers = [
            session.post(
                f"{base}/api/v1/predict", data=json.dumps(body), params={"top_features": 1000}, timeout=30
            )
            for body in bodies
        ]

    assert len(answers[0].content) > 64 * 1024
    expected = [post(url, body, top_features=1000) for body in bodies]
    assert (
        [a.status_code for a in answers]
        == [e.status_code for e in expected]
        == [200, 200, 422, 200, 200, 200]
    )
    assert [a.json() for a in answers] == [e.json() for e in expected]


def test_explanations_add_up_to_the_margin(url, frame, tiny):
    body = [observation(frame, row) for row in range(len(frame.targets))]

    answers = post(url, body, top_features=1000).json()["predictions"]

    for answer in answers:
        explanation = answer["explanation"]
        features = explanation["top_features"]
        assert len(features) == len(tiny.bundle.manifest.features)
        margin = explanation["margin"]
        assert explanation["base_value"] + sum(f["contribution"] for f in features) == pytest.approx(
            margin, abs=1e-4
        )
        by_signal = sum(s["contribution"] for s in explanation["signals"])
        assert explanation["base_value"] + by_signal + explanation["unattributed"] == pytest.approx(
            margin, abs=1e-4
        )
        # The probability comes from XGBoost's float32 margin, the explanation's margin from the sum
        # of float32 SHAP values: they agree to ~1e-6 relative, not bit for bit.
        assert float(tiny.bundle.calibrate(np.float32(margin))) == pytest.approx(
            answer["failure_probability"], rel=1e-5
        )
        contributions = [abs(f["contribution"]) for f in features]
        assert contributions == sorted(contributions, reverse=True)


def test_selector_explanation_is_the_cycle_explanation(url, frame):
    raw = post(url, observation(frame, 0)).json()

    selected = post(url, dict(frame.targets[0])).json()

    assert selected["explanation"] == raw["explanation"]

    # Only the anomaly advice may differ: the selector's score is measured against the target's history.
    def usual(advice: list[str]) -> list[str]:
        return [line for line in advice if not line.startswith("Behaviour is unusual")]

    assert usual(selected["recommendations"]) == usual(raw["recommendations"])


def test_selector_explains_a_target_the_cycle_left_unexplained(url, daemon, frame):
    snapshot = daemon.state.snapshot
    row = int(np.argmin(snapshot.probability))
    assert snapshot.risk[row] == 0
    assert np.isnan(snapshot.explanations.contributions[row]).all()  # the cycle explains risky ones only

    selected = post(url, dict(frame.targets[row])).json()

    explained, raw = selected["explanation"], post(url, observation(frame, row)).json()["explanation"]
    assert explained is not None
    for key in ("base_value", "margin", "signals", "unattributed"):
        assert explained[key] == raw[key]
    # Feature values from the cycle's frame and from the body's numbers may differ in the last bit.
    assert [(f["feature"], f["contribution"]) for f in explained["top_features"]] == [
        (f["feature"], f["contribution"]) for f in raw["top_features"]
    ]
    assert [f["value"] for f in explained["top_features"]] == pytest.approx(
        [f["value"] for f in raw["top_features"]]
    )


def test_top_signals_carry_the_cycle_shares(url, daemon, frame):
    snapshot = daemon.state.snapshot
    row = int(np.argmax(snapshot.probability))

    signals = post(url, observation(frame, row)).json()["explanation"]["signals"]

    shares = {s["signal"]: s["share"] for s in signals}
    assert shares == pytest.approx(
        dict(zip(snapshot.signals, snapshot.contribution[row].tolist(), strict=True))
    )
    contributions = [s["contribution"] for s in signals]
    assert contributions == sorted(contributions, reverse=True)


def test_risky_targets_get_advice_about_their_top_signal(url, frame):
    answers = post(url, [observation(frame, row) for row in range(len(frame.targets))]).json()["predictions"]

    for answer in answers:
        if answer["risk_level"] == "MINIMAL" and answer["anomaly_score"] < 0.95:
            assert answer["recommendations"] == [NO_ACTION]
            continue
        top = answer["explanation"]["signals"][0]
        if answer["failure_probability"] >= 0.2 and top["share"] >= 0.2:
            words = {"memory": "Memory", "cpu": "CPU", "latency": "latency", "errors": "error ratio"}
            assert words[top["signal"]] in answer["recommendations"][0]


def test_short_history_is_left_padded_like_a_target_with_short_history(url, frame, tiny):
    points = 15
    body = observation(frame, 0)
    body["signals"] = {name: values[-points:] for name, values in body["signals"].items()}

    answer = post(url, body).json()

    window = frame.values[:1].copy()
    window[:, :-points] = np.nan
    expected = tiny.bundle.score(window_features(window, frame.signals))
    assert answer["failure_probability"] == float(expected.probability[0])


def test_missing_signals_are_missing_series(url, frame, tiny):
    body = observation(frame, 0)
    body["signals"] = {"memory": body["signals"]["memory"]}

    answer = post(url, body).json()

    window = np.full_like(frame.values[:1], np.nan)
    window[:, :, 1] = frame.values[0, :, 1]
    expected = tiny.bundle.score(window_features(window, frame.signals))
    assert answer["failure_probability"] == float(expected.probability[0])


def test_step_sets_the_horizon(url, frame):
    answers = post(url, [observation(frame, 0, step="1s"), observation(frame, 0, step=120)]).json()

    assert [a["horizon"] for a in answers["predictions"]] == ["30s", "1h"]


def test_timestamp_may_be_rfc3339_and_defaults_to_now(url, frame):
    unix = post(url, observation(frame, 0, timestamp=1_714_564_800)).json()
    text = post(url, observation(frame, 0, timestamp="2024-05-01T12:00:00Z")).json()
    now = post(url, {"signals": observation(frame, 0)["signals"]}).json()

    assert text["timestamp"] == unix["timestamp"] == 1_714_564_800
    assert text["failure_probability"] == unix["failure_probability"]
    assert now["timestamp"] > 1_714_564_800


SIGNALS_10 = {"cpu": [0.5] * 10}


@pytest.mark.parametrize(
    ("body", "loc", "message"),
    [
        (
            b'{"signals": {"cpu": [0.5, 0.5, 0.5, "x", 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]}}',
            ["body", "signals", "cpu", 3],
            "valid number",
        ),
        (
            b'{"signals": {"cpu": [0.5, 0.5, 0.5, NaN, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]}}',
            ["body", "signals", "cpu", 3],
            "finite",
        ),
        (
            b'{"signals": {"cpu": [0.5, 0.5, 0.5, -Infinity, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]}}',
            ["body", "signals", "cpu", 3],
            "finite",
        ),
        (
            b'{"signals": {"cpu": [0.5, 0.5, 0.5, 1e999, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]}}',
            ["body", "signals", "cpu", 3],
            "finite",
        ),
        (
            b'{"signals": {"cpu": [true, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]}}',
            ["body", "signals", "cpu", 0],
            "valid number",
        ),
        (json.dumps({"signals": {"cpu": [0.5] * 5}}).encode(), ["body", "signals", "cpu"], "at least 10"),
        (
            json.dumps({"signals": {"cpu": [0.5] * (WINDOW + 1)}}).encode(),
            ["body", "signals", "cpu"],
            "window of 60",
        ),
        (
            json.dumps({"signals": {"gpu": [0.5] * 10}}).encode(),
            ["body", "signals", "gpu"],
            "unknown signal 'gpu'",
        ),
        (json.dumps({"signals": {}}).encode(), ["body", "signals"], "at least one signal"),
        (json.dumps({"signals": {"cpu": 0.5}}).encode(), ["body", "signals", "cpu"], "valid list"),
        (json.dumps({"signals": SIGNALS_10, "stepp": 60}).encode(), ["body", "stepp"], "unknown field"),
        (json.dumps({"signals": SIGNALS_10, "step": "fast"}).encode(), ["body", "step"], "duration"),
        (json.dumps({"signals": SIGNALS_10, "step": 0}).encode(), ["body", "step"], "positive"),
        (json.dumps({"signals": SIGNALS_10, "step": 1e300}).encode(), ["body", "step"], "between"),
        (
            json.dumps({"signals": SIGNALS_10, "timestamp": "yesterday"}).encode(),
            ["body", "timestamp"],
            "RFC 3339",
        ),
        (
            json.dumps({"signals": SIGNALS_10, "timestamp": -5}).encode(),
            ["body", "timestamp"],
            "Unix seconds",
        ),
        (
            json.dumps([{"signals": SIGNALS_10}, {"signals": {"cpu": [1] * 3}}]).encode(),
            ["body", 1, "signals", "cpu"],
            "at least 10",
        ),
        (json.dumps({"namespace": "shop"}).encode(), ["body", "pod"], "required"),
        (json.dumps({"namespace": "shop", "pod": 3}).encode(), ["body", "pod"], "valid string"),
        (
            json.dumps({"namespace": "shop", "pod": "p", "node": "n"}).encode(),
            ["body", "node"],
            "unknown field",
        ),
        (json.dumps([7]).encode(), ["body", 0], "valid dictionary"),
        (b"[]", ["body"], "empty"),
        (b'"hello"', ["body"], "observation object"),
        (b'{"signals": ', ["body"], "not valid JSON"),
        (b"\xff\xfe", ["body"], "not valid JSON"),
        (b"[" * 100_000, ["body"], "not valid JSON"),
        (
            json.dumps([{"signals": SIGNALS_10}] * (MAX_BATCH + 1)).encode(),
            ["body"],
            f"limit of {MAX_BATCH} (api.max_batch)",
        ),
    ],
)
def test_bad_bodies_get_a_422_naming_the_field(url, body, loc, message):
    response = requests.post(url, data=body, timeout=30)

    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert any(error["loc"] == loc and message in error["msg"] for error in detail), detail


def test_body_over_the_size_limit_is_refused_by_its_content_length(url):
    body = json.dumps([{"signals": {"cpu": [0.123456789] * 60}}] * 300).encode()
    assert len(body) > MAX_BODY

    response = requests.post(url, data=body, timeout=30)

    assert response.status_code == 422
    assert f"over the limit of {MAX_BODY} (api.max_body_bytes)" in response.json()["detail"][0]["msg"]


def test_chunked_body_over_the_size_limit_is_refused_while_reading(url):
    chunk = b" " * 65536

    response = requests.post(url, data=iter([chunk] * 10), timeout=30)  # no Content-Length: chunked

    assert response.status_code == 422
    assert "api.max_body_bytes" in response.json()["detail"][0]["msg"]


def test_errors_are_capped_and_name_each_item(url):
    body = [{"signals": {"cpu": [None, "x"] * 5}}] * MAX_BATCH

    detail = requests.post(url, data=json.dumps(body), timeout=30).json()["detail"]

    assert len(detail) == 50
    assert detail[0]["loc"] == ["body", 0, "signals", "cpu", 1]


def test_unknown_target_is_a_404_naming_it(url):
    response = post(url, [{"namespace": "shop", "pod": "risky-0"}, {"namespace": "shop", "pod": "nope"}])

    assert response.status_code == 404
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", 1]
    assert 'pod="nope"' in error["msg"]


def test_stale_scores_do_not_answer_selectors(tiny, frame):
    settings = settings_with()
    daemon = Daemon(settings, FixedSource(frame), tiny.bundle, clock=lambda: 1e9)
    daemon.cycle()
    daemon._clock = lambda: 1e9 + settings.stale_after + 1  # the last good cycle is now stale
    with serving(app_server(daemon)) as base:
        response = post(f"{base}/api/v1/predict", dict(frame.targets[0]))
        raw = post(f"{base}/api/v1/predict", observation(frame, 0))

    assert response.status_code == 404
    assert "no fresh scores to answer from: last successful cycle" in response.json()["detail"][0]["msg"]
    assert raw.status_code == 200  # raw values need the model, not a fresh cycle


def test_without_a_model_raw_values_are_unavailable(tiny, frame):
    daemon = Daemon(settings_with(), FixedSource(frame), tiny.bundle)
    daemon.state.bundle = None
    with serving(app_server(daemon)) as base:
        response = post(f"{base}/api/v1/predict", observation(frame, 0))

    assert response.status_code == 503
    assert "no model is loaded" in response.json()["detail"][0]["msg"]


def test_concurrent_requests_each_get_their_own_answer(url, daemon, frame):
    from concurrent.futures import ThreadPoolExecutor

    rows = list(range(len(frame.targets))) * 4
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda row: post(url, observation(frame, row)).json(), rows))

    probability = daemon.state.snapshot.probability
    assert [a["failure_probability"] for a in answers] == [float(probability[row]) for row in rows]
