"""The compiled decoder of raw-value bodies (predict.windows) answers exactly what the general
path (orjson + pydantic, ``parse_request(compiled=False)``) answers, and leaves every body it is
not sure of, so every error, to that path."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from helpers import Tiny
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.service.predict import ApiError, ParsedBody, parse_request, request_adapter, windows

MAX_BATCH = 30
STEP = 60.0
NOW = 1.7e9
ADAPTER = request_adapter(("namespace", "pod"))


def clock() -> float:
    return NOW


def general(body: bytes, tiny: Tiny) -> ParsedBody | ApiError:
    try:
        return parse_request(body, ADAPTER, tiny.bundle, MAX_BATCH, STEP, clock, compiled=False)
    except ApiError as exc:
        return exc


def assert_same(fast: ParsedBody, slow: ParsedBody) -> None:
    assert (fast.single, fast.size, fast.raw_positions, fast.selectors) == (
        slow.single,
        slow.size,
        slow.raw_positions,
        slow.selectors,
    )
    for name in ("values", "ends", "steps"):
        a, b = getattr(fast, name), getattr(slow, name)
        np.testing.assert_array_equal(a, b, err_msg=name)
        np.testing.assert_array_equal(np.signbit(a), np.signbit(b), err_msg=f"{name}: sign of zero")


# Number tokens as clients write them: integers, short and long decimals (17 digits: Python's
# repr), exponents, negative zeros; and, in dirty bodies, text that is no JSON number.
numbers = (
    st.integers(-(10**25), 10**25).map(str)
    | st.floats(-1e300, 1e300, allow_nan=False).map(repr)
    | st.floats(-10, 10, allow_nan=False).map(lambda x: f"{x:.5f}")
    | st.from_regex(r"-?(0|[1-9][0-9]{0,20})(\.[0-9]{1,20})?([eE][+-]?[0-9]{1,2})?", fullmatch=True)
    | st.sampled_from(["-0", "-0.0", "0e0", "0", "1E-5"])
)
oddities = st.sampled_from(
    [
        *("1e400", "-1e400", "1E-400", "NaN", "Infinity", "-Infinity", "01", "1.", ".5", "+1", "- 1"),
        *("1e", "0x10", "true", '"0.5"', "[]", "{}"),
    ]
)
signals = st.sampled_from(["cpu", "memory", "latency", "errors"])
other_names = st.sampled_from(["gpu", "CPU", "", "cp\\u0075"])
steps = st.sampled_from(['"60s"', '"1h"', '"90s"', '"1h30m"', "30", "0.5", "7", "null"])
bad_steps = st.sampled_from(['"0s"', '"soon"', "-1", "1e9", "0", '"6\\u0030s"', "true"])
times = st.sampled_from(
    ['"2024-05-01T12:00:00Z"', '"2024-05-01T12:00:00"', "1714564800", "1714564800.1234567", "0", "null"]
)
bad_times = st.sampled_from(['"yesterday"', "-5", "1e11", "true", "[]"])
space = st.sampled_from(["", " ", "\n  ", "\t", "\r\n"])


@st.composite
def observation_texts(draw: st.DrawFn, clean: bool) -> str:
    """An observation written as JSON text with random whitespace: valid when ``clean``, else
    with some bad token, name or field (or none) among the valid ones."""
    ws = draw(space)
    samples = st.just("null") | numbers if clean else st.just("null") | numbers | oddities
    series = draw(
        st.dictionaries(
            signals if clean else signals | other_names,
            st.lists(samples, min_size=10 if clean else 8, max_size=60 if clean else 62),
            min_size=1 if clean else 0,
            max_size=4,
        )
    )
    members = [f'{ws}"{name}"{ws}:{ws}[{ws}{("," + ws).join(tokens)}{ws}]' for name, tokens in series.items()]
    fields = [f'"signals":{ws}{{{",".join(members)}{ws}}}']
    if draw(st.booleans()):
        fields.append(f'"step":{ws}{draw(steps if clean else steps | bad_steps)}')
    if draw(st.booleans()):
        fields.append(f'"timestamp":{ws}{draw(times if clean else times | bad_times)}')
    if not clean and draw(st.booleans()):
        fields.append(draw(st.sampled_from(['"extra": 1', '"step": 60', '"namespace": "shop"'])))
    order = draw(st.permutations(fields))
    return f"{ws}{{{ws}{(',' + ws).join(order)}{ws}}}{ws}"


@st.composite
def body_texts(draw: st.DrawFn) -> bytes:
    clean = draw(st.booleans())
    if draw(st.booleans()):
        text = draw(observation_texts(clean))
    else:
        items = draw(st.lists(observation_texts(clean), min_size=int(clean), max_size=MAX_BATCH + 2))
        text = f"[{','.join(items)}]"
    return (text + draw(st.sampled_from(["", " "] if clean else ["", " ", "x", ","]))).encode()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=body_texts())
def test_what_the_compiled_decoder_accepts_equals_the_general_path(tiny, body):
    fast = windows(body, tiny.bundle, MAX_BATCH, STEP, clock)
    slow = general(body, tiny)

    if isinstance(slow, ApiError):
        assert fast is None, slow.errors
    elif fast is not None:
        assert_same(fast, slow)


def values_of(rows: int, digits: int | None, seed: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    walks = np.clip(0.4 + np.cumsum(rng.normal(0, 0.01, (rows, 60, 4)), axis=1), 0, 1)
    walks = walks if digits is None else walks.round(digits)
    names = ("cpu", "memory", "latency", "errors")
    return [{"signals": {name: walks[i, :, s].tolist() for s, name in enumerate(names)}} for i in range(rows)]


@pytest.mark.parametrize(
    "body",
    [
        json.dumps(values_of(20, 5)),  # what benchmarks/api.py sends
        json.dumps(values_of(20, None)),  # Python's repr: 17 significant digits
        json.dumps(values_of(1, 3)[0]),  # one observation
        json.dumps(values_of(3, 2), indent=2),
        json.dumps(
            [
                {"signals": {"memory": [0.5] * 10 + [None, 0.6]}, "step": "30s", "timestamp": 1714564800},
                {"signals": {"cpu": [0, 1, -0, 2] * 3}, "step": 15, "timestamp": "2024-05-01T12:00:00Z"},
                {"timestamp": None, "step": None, "signals": {"errors": [1e-3, 2.5e2, -1.0] * 4}},
            ]
        ),
    ],
    ids=["rounded", "repr", "single", "indented", "steps-and-times"],
)
def test_common_bodies_take_the_compiled_path_and_decode_as_the_general_path(tiny, body):
    fast = windows(body.encode(), tiny.bundle, MAX_BATCH, STEP, clock)

    assert fast is not None
    assert_same(fast, general(body.encode(), tiny))


@pytest.mark.parametrize(
    "body",
    [
        '{"namespace": "shop", "pod": "cart-1"}',  # a selector
        '[{"signals": {"cpu": [0.5]}}]',  # too short
        '{"signals": {"cpu": [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5], "cpu": [1]}}',  # twice
        '{"signals": {"cpu": [' + ",".join(["0.5"] * 61) + "]}}",  # longer than the window
        '{"signals": {"cpu": [' + ",".join(["1e400"] * 10) + "]}}",  # beyond a double
        '{"signals": {"cpu": [' + ",".join(["0.5"] * 10) + ']}, "step": "0s"}',
        '{"signals": {"cpu": [' + ",".join(["0.5"] * 10) + ']}, "timestamp": -1}',
        "[]",
        "[" + ",".join(['{"signals": {"cpu": [' + ",".join(["0.5"] * 10) + "]}}"] * (MAX_BATCH + 1)) + "]",
    ],
    ids=[
        "selector",
        "short",
        "twice",
        "long",
        "overflow",
        "zero-step",
        "negative-time",
        "empty",
        "over-batch",
    ],
)
def test_bodies_to_judge_are_left_to_the_general_path(tiny, body):
    assert windows(body.encode(), tiny.bundle, MAX_BATCH, STEP, clock) is None


def test_a_gap_and_a_short_series_leave_nan_where_nothing_was_sent(tiny):
    body = {"signals": {"memory": [0.1] * 9 + [None] + [0.3] * 5, "cpu": [0.2] * 60}}

    fast = windows(json.dumps(body).encode(), tiny.bundle, MAX_BATCH, STEP, clock)

    memory = fast.values[0, :, tiny.bundle.manifest.signals.index("memory")]
    assert np.isnan(memory[:45]).all() and math.isnan(memory[54])
    assert memory[45:54].tolist() == [0.1] * 9 and memory[55:].tolist() == [0.3] * 5
    assert (fast.ends, fast.steps) == ([NOW], [STEP])
