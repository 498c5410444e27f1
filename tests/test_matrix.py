"""Decoding a range-query answer into numpy: a real Prometheus answer, intact and corrupted."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import numpy as np
import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st
from servers import PrometheusServer
from workload import Workload

from exporter.sources.matrix import decode_matrix, matrix_of


@pytest.fixture(scope="module")
def answer(prometheus: PrometheusServer, workload: Workload) -> bytes:
    """A real matrix answer: every workload pod's working set over the last 20 s."""
    prometheus.wait_for('count_over_time(up{job="workload"}[10s]) >= 4', timeout=20)
    now = time.time()
    response = requests.post(
        f"{prometheus.url}/api/v1/query_range",
        data={"query": "container_memory_working_set_bytes", "start": now - 20, "end": now, "step": 1},
        headers={"Accept-Encoding": "identity"},
        timeout=10,
    )
    response.raise_for_status()
    return response.content


def generic(body: bytes):
    return matrix_of(json.loads(body)["data"]["result"])


def test_fast_decoding_equals_json_decoding_of_a_real_answer(answer: bytes) -> None:
    fast, slow = decode_matrix(answer), generic(answer)
    assert fast is not None, "Prometheus' own layout takes the fast path"
    # The session workload is shared: earlier tests may have stopped some of its 20 pods.
    assert len(fast.labels) >= 10 and fast.labels == slow.labels
    np.testing.assert_array_equal(fast.offsets, slow.offsets)
    np.testing.assert_array_equal(fast.timestamps, slow.timestamps)
    np.testing.assert_array_equal(fast.values, slow.values)


def test_one_unparsable_sample_drops_only_its_series(answer: bytes) -> None:
    body = json.loads(answer)
    victim = body["data"]["result"][3]
    victim["values"][2][1] = "not-a-number"
    corrupted = json.dumps(body, separators=(",", ":")).encode()

    for decoded in (decode_matrix(corrupted), generic(corrupted)):
        assert decoded is not None
        assert decoded.unparsable == 1
        assert victim["metric"] not in decoded.labels
        assert len(decoded.labels) == len(body["data"]["result"]) - 1
        assert np.isfinite(decoded.values).all()


def test_same_labels_reuse_the_known_placeholder_unless_a_series_is_dropped(answer: bytes) -> None:
    """The source keeps a placeholder, not the label objects, for an answer's next cycle."""
    first = decode_matrix(answer)
    placeholder: list[dict] = []
    known = replace(first, labels=placeholder)
    again = decode_matrix(answer, known)
    assert again.labels is placeholder, "same label text: nothing parsed, the placeholder returned"
    np.testing.assert_array_equal(again.values, first.values)

    start = answer.index(b'"values":[')  # series 0's samples; its first value's string in place:
    opening = answer.index(b',"', start) + 2
    closing = answer.index(b'"', opening)
    corrupted = decode_matrix(answer[:opening] + b"not-a-number" + answer[closing:], known)
    assert corrupted.unparsable == 1
    assert corrupted.labels is not placeholder
    assert corrupted.labels == first.labels[1:]


def test_other_layouts_take_the_generic_path(answer: bytes) -> None:
    spaced = json.dumps(json.loads(answer), indent=1).encode()
    assert decode_matrix(spaced) is None
    assert generic(spaced).labels == generic(answer).labels


_VALUE = st.one_of(
    st.floats(allow_nan=False).map(repr),  # shortest round-trip digits: up to 17 significant
    st.floats(allow_nan=False, allow_infinity=False).map(lambda v: f"{v:.6g}"),
    st.integers(-(10**25), 10**25).map(str),
    st.sampled_from(["NaN", "+Inf", "-Inf", "-0", "0.000000000000000000000123", "1e400", "1E-5"]),
    st.sampled_from([" 1", "1_0", "infinity", "not-a-number", "1.", ".5", "0x10"]),  # float() decides
)
_TIMESTAMP = st.one_of(st.integers(0, 2**40), st.floats(0, 2e9).map(lambda t: round(t, 3)))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
            st.lists(st.tuples(_TIMESTAMP, _VALUE), min_size=1, max_size=6),
        ),
        max_size=8,
    )
)
def test_fast_decoding_equals_json_decoding_of_any_answer(series) -> None:
    result = [
        {"metric": labels, "values": [list(sample) for sample in samples]} for labels, samples in series
    ]
    body = json.dumps(
        {"status": "success", "data": {"resultType": "matrix", "result": result}}, separators=(",", ":")
    ).encode()

    fast, slow = decode_matrix(body), generic(body)

    assert fast is not None or "\\" in body.decode(), "only escapes leave Prometheus' layout here"
    if fast is not None:
        assert fast.labels == slow.labels and fast.unparsable == slow.unparsable
        np.testing.assert_array_equal(fast.offsets, slow.offsets)
        np.testing.assert_array_equal(fast.timestamps, slow.timestamps)
        np.testing.assert_array_equal(fast.values, slow.values)
        np.testing.assert_array_equal(np.signbit(fast.values), np.signbit(slow.values))
