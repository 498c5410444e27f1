"""Decode a Prometheus range-query answer straight into numpy, without a Python object per sample.

A range query over 10,000 targets answers ~14 MB of JSON per signal holding 600,000
``[timestamp, "value"]`` pairs; ``json.loads`` turns each into a list, a float and a
string (~1.5 s and ~125 MB per signal here). Prometheus and the APIs that mimic it
write the answer in one canonical layout, so compiled loops find each series' label
object and sample list (kernels.matrix_layout), every label object is parsed by a single
``json.loads``, and the sample lists are parsed in place (kernels.matrix_samples: no copy
of the text, rounded exactly as ``float`` does).
Anything off that layout (whitespace, another key order, a hostile body) takes the
generic ``json.loads`` path, which gives the same result.

A series with one sample that is not a number (``"not-a-number"``) is dropped and
counted in ``Matrix.unparsable``; every other series of the answer is kept.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from exporter.kernels import matrix_layout, matrix_samples

_PREFIX = b'{"status":"success","data":{"resultType":"matrix","result":['


class MatrixError(ValueError):
    """The answer is JSON but not a matrix of series; the message says what is wrong."""


@dataclass(frozen=True)
class Matrix:
    """A decoded matrix: series ``i`` has ``labels[i]`` and samples ``offsets[i]:offsets[i + 1]``."""

    labels: list[dict[str, str]]
    timestamps: np.ndarray  # float64, every sample of every series, series after series
    values: np.ndarray  # float64, same length
    offsets: np.ndarray  # int64, len(labels) + 1
    unparsable: int = 0  # series dropped because a sample was not a number
    label_text: bytes | None = None  # the label objects' JSON as received (None: generic path)

    @classmethod
    def empty(cls) -> Matrix:
        return cls([], np.empty(0), np.empty(0), np.zeros(1, dtype=np.int64))

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)


def decode_matrix(body: bytes, known: Matrix | None = None) -> Matrix | None:
    """The matrix of a successful answer, or None when ``body`` is not one in the canonical layout.

    None means "use the generic path" (``matrix_of(json.loads(body))``), never an error.
    When the label objects are byte for byte ``known``'s (the same query a cycle ago, no
    pod came or went), ``known.labels`` is reused as is: nothing is parsed again, and the
    caller can tell by identity that its per-series work from then still holds (it may keep a
    placeholder there instead of the label objects; an answer that drops a series because a
    sample is not a number parses its labels again).
    """
    if not body.startswith(_PREFIX):
        return None
    text = np.frombuffer(body, dtype=np.uint8)
    layout, label_text, starts, ends = matrix_layout(text, len(_PREFIX))
    if not layout:
        return None
    label_bytes = label_text.tobytes()
    reused = known is not None and known.label_text == label_bytes
    if reused:
        labels = known.labels
    else:
        try:
            labels = json.loads(label_bytes)
        except ValueError:
            return None
        if not all(isinstance(m, dict) for m in labels):
            return None
    layout, counts, pairs, long_text, long_index, odd = matrix_samples(text, starts, ends)
    if not layout:
        return None
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    if len(long_index):  # numpy's text parser rounds exactly, as float does
        pairs.reshape(-1)[long_index] = np.fromstring(long_text.tobytes(), dtype=np.float64, sep=" ")
    unparsable = _judge_odd(body, pairs, odd)
    if not len(unparsable):
        timestamps, values = np.ascontiguousarray(pairs[:, 0]), np.ascontiguousarray(pairs[:, 1])
        return Matrix(labels, timestamps, values, offsets, label_text=label_bytes)
    if reused:  # series are dropped: each one's own labels are needed (known may hold a placeholder)
        labels = json.loads(label_bytes)
    bad = set((np.searchsorted(offsets, unparsable // 2, side="right") - 1).tolist())
    parts = [None if i in bad else pairs[offsets[i] : offsets[i + 1]] for i in range(len(labels))]
    return _assemble(labels, parts)


def _judge_odd(body: bytes, pairs: np.ndarray, odd: np.ndarray) -> np.ndarray:
    """Values that are not plain numbers, converted by ``float`` as json's path would (" 1",
    "1_0", "infinity" pass; "not-a-number" does not); the flat indices of those refused."""
    refused = []
    flat = pairs.reshape(-1)
    for start, end, index in odd.tolist():
        try:
            flat[index] = float(str(body[start:end], "utf-8"))
        except ValueError:
            refused.append(index)
    return np.asarray(refused, dtype=np.int64)


def _pairs(samples: Any) -> np.ndarray | None:
    if not isinstance(samples, list):
        raise TypeError("values is not a list")
    try:
        pairs = np.array([(float(t), float(v)) for t, v in samples], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return pairs.reshape(-1, 2)


def matrix_of(result: Any) -> Matrix:
    """The generic path: a ``data.result`` list already parsed by ``json.loads``."""
    if not isinstance(result, list):
        raise MatrixError("expected data.result to be a list")
    labels, samples = [], []
    for item in result:
        if not isinstance(item, dict):
            raise MatrixError("matrix entries need 'metric' and 'values'")
        metric, values = item.get("metric"), item.get("values")
        if not isinstance(metric, dict) or not isinstance(values, list):
            raise MatrixError("matrix entries need 'metric' and 'values'")
        labels.append(metric)
        samples.append(_pairs(values))
    return _assemble(labels, samples)


def _assemble(labels: list[dict[str, str]], samples: list[np.ndarray | None]) -> Matrix:
    kept = [i for i, pairs in enumerate(samples) if pairs is not None]
    parts = [samples[i] for i in kept]
    counts = np.fromiter((len(p) for p in parts), dtype=np.int64, count=len(parts))
    offsets = np.zeros(len(parts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    stacked = np.concatenate(parts) if parts else np.empty((0, 2))
    return Matrix(
        labels=[labels[i] for i in kept],
        timestamps=np.ascontiguousarray(stacked[:, 0]),
        values=np.ascontiguousarray(stacked[:, 1]),
        offsets=offsets,
        unparsable=len(samples) - len(kept),
    )
