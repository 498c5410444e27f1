"""``POST /api/v1/predict``: request models, validation, batched scoring, explanations.

An observation is either raw recent values per signal, scored by the same
``window_features`` + ``ModelBundle.score`` the cycle uses (a whole batch in one
call), or a target selector answered from the latest Snapshot. Input is checked
once here, where it enters, and every problem becomes a 422 naming the field;
scoring code downstream trusts what it receives.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import re
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Annotated, Any

import anyio.to_thread
import numpy as np
import orjson
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    create_model,
)

from exporter.config import parse_duration
from exporter.features import SHORT_SPAN, Features, signal_weights, window_features
from exporter.kernels import observation_windows
from exporter.models.bundle import ModelBundle, Scores
from exporter.recommend import recommend
from exporter.snapshot import RISK_NAMES, Snapshot, contribution_shares, risk_levels

MIN_POINTS = SHORT_SPAN  # fewer points leave the short-span rate and most trends undefined
MAX_STEP = 7 * 86400.0
MAX_ERRORS = 50  # reported per response; a batch of 1,000 bad arrays would otherwise echo 100k errors
DEFAULT_TOP_FEATURES = 5
INLINE_ROWS = 64  # model calls of up to this many rows run on the event loop (~1-3 ms)
GATHER_YIELDS = 4  # loop turns a model call waits at most for requests already being read


class ApiError(Exception):
    """A request the API refuses: ``status`` and FastAPI-style ``detail`` entries (type, loc, msg)."""

    def __init__(self, status: int, errors: list[dict[str, Any]]) -> None:
        super().__init__(errors[0]["msg"] if errors else str(status))
        self.status = status
        self.errors = errors[:MAX_ERRORS]


def problem(loc: Sequence[str | int], msg: str, kind: str = "value_error") -> dict[str, Any]:
    return {"type": kind, "loc": list(loc), "msg": msg}


def _step(value: Any) -> float:
    seconds = parse_duration(value)
    if not 0.001 <= seconds <= MAX_STEP:
        raise ValueError(f"step must be between 1ms and 7d, got {value!r}")
    return seconds


def _unix_seconds(value: Any) -> float:
    """Unix seconds from a number or an RFC 3339 string (UTC when it names no zone)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError("expected Unix seconds or an RFC 3339 time like '2024-05-01T12:00:00Z'")
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(
                f"expected an RFC 3339 time like '2024-05-01T12:00:00Z', got {value!r}"
            ) from None
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
    if not (math.isfinite(value) and 0 <= value < 1e11):
        raise ValueError(f"expected Unix seconds between 0 and 1e11, got {value!r}")
    return float(value)


Sample = Annotated[float, Field(strict=True, allow_inf_nan=False)] | None
Step = Annotated[float, BeforeValidator(_step)]
Timestamp = Annotated[float, BeforeValidator(_unix_seconds)]


class Observation(BaseModel):
    """Raw recent values per signal, oldest first, one every ``step``; ``null`` marks a gap."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "signals": {
                        "memory": [0.61, 0.63, 0.66, 0.68, 0.71, 0.73, 0.76, 0.78, 0.81, 0.84],
                        "errors": [0.0, 0.0, 0.0, None, 0.0, 0.01, 0.0, 0.0, 0.0, 0.0],
                    },
                    "step": "60s",
                    "timestamp": "2024-05-01T12:00:00Z",
                }
            ]
        },
    )

    signals: dict[str, Annotated[list[Sample], Field(min_length=MIN_POINTS)]] = Field(
        description=(
            f"signal name -> values, oldest first; {MIN_POINTS} points at least, at most the model's "
            "window (GET /api/v1/model: window_steps); shorter windows count as a target with short "
            "history, missing signals as missing series"
        )
    )
    step: Step | None = Field(
        default=None, description="seconds between values or a duration like '60s' (default: the config step)"
    )
    timestamp: Timestamp | None = Field(
        default=None, description="time of the newest value, Unix seconds or RFC 3339 (default: now)"
    )


def selector_model(target_labels: Sequence[str]) -> type[BaseModel]:
    """``{label: value}`` for exactly the configured target labels (aliases: a label may be any name)."""
    labels: dict[str, Any] = {
        f"label_{i}": (Annotated[str, Field(strict=True, alias=label)], ...)
        for i, label in enumerate(target_labels)
    }
    return create_model(
        "TargetSelector",
        __config__=ConfigDict(extra="forbid", populate_by_name=False),
        __doc__="A target of the latest cycle, named by its target labels (answered from the latest scores).",
        **labels,
    )


def _kind(item: Any) -> str:
    return "target" if isinstance(item, dict) and "signals" not in item else "values"


def request_adapter(target_labels: Sequence[str]) -> TypeAdapter:
    selector = selector_model(target_labels)
    item = Annotated[
        Annotated[Observation, Tag("values")] | Annotated[selector, Tag("target")],  # type: ignore[valid-type]
        Discriminator(_kind),
    ]
    return TypeAdapter(list[item])  # type: ignore[valid-type]


# Durations the schema promises are accepted (1ms-7d as one term); "1h30m" and the like are too.
STEP_PATTERN = r"^([1-9][0-9]{0,2}(ms|s|m)|([1-9][0-9]?|1[0-5][0-9]|16[0-8])h|[1-7]d)$"
# RFC 3339 times the schema promises are accepted (days 1-28 so every month has them).
TIME_PATTERN = (
    r"^[1-9][0-9]{3}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
    r"(\.[0-9]{1,6})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])?$"
)


def request_schema(
    target_labels: Sequence[str], signals: Sequence[str], window: int, max_batch: int
) -> dict[str, dict[str, Any]]:
    """JSON schemas (OpenAPI components) of a request body, exact for the serving model: what
    they allow is accepted (or, for a selector, answered or a 404), what they forbid is a 422."""
    observation = {
        "title": "Observation",
        "description": Observation.__doc__,
        "type": "object",
        "additionalProperties": False,
        "required": ["signals"],
        "properties": {
            "signals": {
                "description": Observation.model_fields["signals"].description,
                "type": "object",
                "minProperties": 1,
                "propertyNames": {"enum": list(signals)},
                "additionalProperties": {
                    "type": "array",
                    "minItems": MIN_POINTS,
                    "maxItems": window,
                    "items": {"anyOf": [{"type": "number"}, {"type": "null"}]},
                },
            },
            "step": {
                "description": Observation.model_fields["step"].description,
                "anyOf": [
                    {"type": "number", "minimum": 0.001, "maximum": MAX_STEP},
                    {"type": "string", "pattern": STEP_PATTERN},
                    {"type": "null"},
                ],
            },
            "timestamp": {
                "description": Observation.model_fields["timestamp"].description,
                "anyOf": [
                    {"type": "number", "minimum": 0, "exclusiveMaximum": 1e11},
                    {"type": "string", "pattern": TIME_PATTERN},
                    {"type": "null"},
                ],
            },
        },
        "examples": Observation.model_config["json_schema_extra"]["examples"],  # type: ignore[index]
    }
    selector = {
        "title": "TargetSelector",
        "description": "A target of the latest cycle, named by its target labels (answered from the latest scores).",
        "type": "object",
        "additionalProperties": False,
        "required": list(target_labels),
        "properties": {label: {"type": "string"} for label in target_labels},
    }
    item = {
        "oneOf": [
            {"$ref": "#/components/schemas/Observation"},
            {"$ref": "#/components/schemas/TargetSelector"},
        ]
    }
    body = {
        "title": "PredictRequest",
        "description": f"one observation or selector, or a list of 1 to {max_batch} (api.max_batch)",
        "anyOf": [item, {"type": "array", "minItems": 1, "maxItems": max_batch, "items": item}],
    }
    return {"Observation": observation, "TargetSelector": selector, "PredictRequest": body}


@dataclass(frozen=True)
class ParsedBody:
    """A validated body: raw observations as one window array, selectors as label sets."""

    single: bool
    size: int
    raw_positions: list[int] = field(default_factory=list)
    values: np.ndarray | None = None  # [raw observations, window, signals]
    ends: np.ndarray | None = None
    steps: np.ndarray | None = None
    selectors: list[tuple[int, dict[str, str]]] = field(default_factory=list)


def parse_request(
    body: bytes,
    adapter: TypeAdapter,
    bundle: ModelBundle | None,
    max_batch: int,
    default_step: float,
    clock: Callable[[], float] = time.time,
    compiled: bool = True,
) -> ParsedBody:
    """Decode and validate; raise ApiError naming each bad field (422), or 503 without a model.

    Bodies of raw values only, valid as they stand, are decoded straight into arrays
    (``windows``); every other body, and so every error, and every body with ``compiled``
    False (what tests compare the two with) is decoded to Python objects that pydantic checks."""
    if bundle is not None and compiled:
        parsed = windows(body, bundle, max_batch, default_step, clock)
        if parsed is not None:
            return parsed
    doc = _decode(body)
    single = isinstance(doc, dict)
    if _SURROGATE_ESCAPE.search(body):
        _refuse_lone_surrogates(doc, ["body"])
    if not single and not isinstance(doc, list):
        raise ApiError(
            422, [problem(["body"], "expected an observation object or a list of them", "type_error")]
        )
    items = [doc] if single else doc
    if not items:
        raise ApiError(422, [problem(["body"], "the batch is empty", "too_short")])
    if len(items) > max_batch:
        raise ApiError(
            422,
            [
                problem(
                    ["body"],
                    f"a batch of {len(items)} observations is over the limit of {max_batch} (api.max_batch)",
                    "too_long",
                )
            ],
        )

    def where(index: int, *rest: str | int) -> list[str | int]:
        return ["body", *rest] if single else ["body", index, *rest]

    try:
        parsed = adapter.validate_python(items)
    except ValidationError as exc:
        raise ApiError(422, [_located(error, where) for error in exc.errors()[:MAX_ERRORS]]) from None
    raw = [(i, item) for i, item in enumerate(parsed) if isinstance(item, Observation)]
    selectors = [
        (i, item.model_dump(by_alias=True))
        for i, item in enumerate(parsed)
        if not isinstance(item, Observation)
    ]
    request = ParsedBody(single=single, size=len(items), selectors=selectors)
    if not raw:
        return request
    if bundle is None:
        raise ApiError(
            503, [problem(["body"], "no model is loaded: raw values cannot be scored", "unavailable")]
        )
    manifest = bundle.manifest
    window, known = manifest.window_steps, manifest.signals
    errors = []
    for i, item in raw:
        if not item.signals:
            errors.append(
                problem(where(i, "signals"), f"give at least one signal of {list(known)}", "missing")
            )
        for name, points in item.signals.items():
            if name not in known:
                errors.append(
                    problem(
                        where(i, "signals", name), f"unknown signal {name!r}; the model knows {list(known)}"
                    )
                )
            elif len(points) > window:
                errors.append(
                    problem(
                        where(i, "signals", name),
                        f"{len(points)} points is more than the model's window of {window} steps; send the newest {window}",
                        "too_long",
                    )
                )
    if errors:
        raise ApiError(422, errors)
    values = np.full((len(raw), window, len(known)), np.nan)
    for row, (_, item) in enumerate(raw):
        for name, points in item.signals.items():
            values[row, window - len(points) :, known.index(name)] = np.array(points, dtype=float)
    now = clock()
    return ParsedBody(
        single=single,
        size=len(items),
        raw_positions=[i for i, _ in raw],
        values=values,
        ends=np.array([now if item.timestamp is None else item.timestamp for _, item in raw]),
        steps=np.array([default_step if item.step is None else item.step for _, item in raw]),
        selectors=selectors,
    )


def windows(
    body: bytes,
    bundle: ModelBundle,
    max_batch: int,
    default_step: float,
    clock: Callable[[], float] = time.time,
) -> ParsedBody | None:
    """A body of raw-value observations decoded by one compiled pass (kernels.observation_windows),
    without a Python object per sample: what ``parse_request``'s general path would return for
    it, or None when the body is anything else (a selector, an error to report, JSON in an
    unusual form) and only that path can judge it."""
    manifest = bundle.manifest
    names, name_ends = _name_table(manifest.signals)
    accepted, single, values, kinds, numbers, spans, long_text, long_index = observation_windows(
        np.frombuffer(body, np.uint8), names, name_ends, manifest.window_steps, MIN_POINTS, max_batch
    )
    if not accepted:
        return None
    if len(long_index):  # numpy's text parser rounds exactly, as float does
        longs = np.fromstring(long_text.tobytes(), dtype=np.float64, sep=" ")
        if len(longs) != len(long_index) or not np.isfinite(longs).all():
            return None
        values.reshape(-1)[long_index] = longs
    try:
        steps = _scalars(body, kinds[:, 0], numbers[:, 0], spans[:, 0], _step, default_step)
        ends = _scalars(body, kinds[:, 1], numbers[:, 1], spans[:, 1], _unix_seconds, clock())
    except (ValueError, OverflowError):
        return None
    return ParsedBody(
        single=single,
        size=len(values),
        raw_positions=list(range(len(values))),
        values=values,
        ends=ends,
        steps=steps,
    )


def _scalars(
    body: bytes,
    kinds: np.ndarray,
    numbers: np.ndarray,
    spans: np.ndarray,
    check: Callable[[Any], float],
    default: float,
) -> np.ndarray:
    """A step or timestamp column from ``observation_windows``: ``default`` where none was
    given, elsewhere what ``check`` makes of the value (once per distinct text)."""
    out = np.full(len(kinds), default)
    checked: dict[bytes, float] = {}
    for row in np.flatnonzero(kinds).tolist():
        start, end = spans[row].tolist()
        text = body[start:end]
        if text not in checked:
            kind = kinds[row]
            checked[text] = check(text.decode() if kind == 3 else float(text if kind == 2 else numbers[row]))
        out[row] = checked[text]
    return out


@functools.lru_cache(maxsize=8)
def _name_table(signals: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    encoded = [name.encode() for name in signals]
    names = np.frombuffer(b"".join(encoded), np.uint8).copy()
    ends = np.cumsum([len(name) for name in encoded]).astype(np.int64)
    names.flags.writeable = False
    return names, ends


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _decode(body: bytes) -> Any:
    """The body's JSON: orjson (3-4x json's speed on a batch of float arrays), and for what it
    refuses the standard library, whose answer (a document with a lone surrogate located
    below, or its error message) is the one clients are told."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise ApiError(422, [problem(["body"], f"body is not valid JSON: {exc}", "json_invalid")]) from None


def _refuse_lone_surrogates(doc: Any, root: list[str | int]) -> None:
    """422 for a string or key holding half a UTF-16 surrogate pair (``"\\ud800"``): JSON
    allows the escape, but it is no Unicode text and could not even be echoed back in UTF-8.
    Only bodies that contain such an escape are walked."""
    stack: list[tuple[Any, list[str | int]]] = [(doc, root)]
    while stack:
        value, where = stack.pop()
        if isinstance(value, str):
            if not _is_text(value):
                raise ApiError(422, [problem(where, LONE_SURROGATE, "string_unicode")])
        elif isinstance(value, dict):
            for key, item in value.items():
                if not _is_text(key):
                    raise ApiError(422, [problem([*where, _escaped(key)], LONE_SURROGATE, "string_unicode")])
                stack.append((item, [*where, key]))
        elif isinstance(value, list):
            stack.extend((item, [*where, index]) for index, item in enumerate(value))


LONE_SURROGATE = "contains a lone UTF-16 surrogate (\\ud800-\\udfff): not Unicode text"


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _escaped(value: str) -> str:
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


def _located(error: Mapping[str, Any], where: Callable[..., list[str | int]]) -> dict[str, Any]:
    """A pydantic error at the body path the client wrote (the union's tag removed from the location)."""
    index, *rest = error["loc"]
    if rest and rest[0] in ("values", "target"):
        rest = rest[1:]
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown field"
    return problem(where(index, *rest), message, error["type"])


@dataclass(frozen=True)
class Explained:
    """Scores of n rows with what is needed to explain them; row i of every array is row i."""

    signals: tuple[str, ...]
    features: tuple[str, ...]
    probability: np.ndarray
    anomaly: np.ndarray
    shares: np.ndarray  # [n, signals], see contribution_shares
    values: np.ndarray | None  # [n, features] model inputs
    contributions: np.ndarray | None  # [n, features + 1] SHAP on the margin, last column the bias

    @classmethod
    def of_scores(cls, bundle: ModelBundle, features: Features, scores: Scores) -> Explained:
        manifest = bundle.manifest
        return cls(
            signals=manifest.signals,
            features=manifest.features,
            probability=scores.probability,
            anomaly=scores.anomaly,
            shares=contribution_shares(scores.signal_contributions),
            values=scores.inputs,
            contributions=scores.contributions,
        )

    @classmethod
    def of_snapshot(cls, snapshot: Snapshot, rows: Sequence[int]) -> Explained:
        """The cycle's scores of ``rows``, explained: SHAP the cycle skipped (targets not at risk)
        is computed here, so every answer the API gives is explained."""
        rows = np.asarray(rows, dtype=np.intp)
        explanations = snapshot.explanations
        shares = snapshot.contribution[rows]
        contributions = None
        if explanations is not None:
            contributions = explanations.rows(rows)
            weights = signal_weights(explanations.features, snapshot.signals)
            shares = contribution_shares(contributions[:, :-1] @ weights)
        return cls(
            signals=snapshot.signals,
            features=explanations.features if explanations else (),
            probability=snapshot.probability[rows],
            anomaly=snapshot.anomaly[rows],
            shares=shares,
            values=explanations.values[rows] if explanations else None,
            contributions=contributions,
        )


def describe(
    explained: Explained, steps: Sequence[float], top_features: int = DEFAULT_TOP_FEATURES
) -> list[dict[str, Any]]:
    """Per row: probability, risk level, anomaly score, explanation and recommendations.

    The arrays become Python lists once, whole (a thousand rows' numbers cost what a
    thousand numpy scalars would cost to convert one by one), and rows are plain zips of them."""
    rows = len(explained.probability)
    levels = risk_levels(explained.probability).tolist()
    probability, anomaly = explained.probability.tolist(), explained.anomaly.tolist()
    shares = explained.shares.tolist()
    explanation: list[Any] = [None] * rows
    feature_maps: list[Mapping[str, float]] = [{}] * rows
    if explained.contributions is not None and explained.values is not None:
        explanation = _explanations(explained, top_features)
        index = _positions(explained.features)
        feature_maps = [_RowFeatures(index, explained.values, row) for row in range(rows)]
    signals = explained.signals
    return [
        {
            "failure_probability": p,
            "risk_level": RISK_NAMES[level],
            "anomaly_score": a,
            "explanation": explained_row,
            "recommendations": recommend(p, a, dict(zip(signals, share, strict=True)), features, step),
        }
        for p, level, a, explained_row, share, features, step in zip(
            probability, levels, anomaly, explanation, shares, feature_maps, steps, strict=True
        )
    ]


def _explanations(explained: Explained, top_features: int) -> list[dict[str, Any]]:
    contributions, values = explained.contributions, explained.values
    layout = _layout(explained.features, explained.signals)
    by_signal = contributions[:, :-1] @ layout.weights
    unattributed = contributions[:, :-1] @ layout.unattributed
    margin = contributions.sum(axis=1)
    signal_order = np.argsort(-by_signal, axis=1, kind="stable")
    feature_order = np.argsort(-np.abs(contributions[:, :-1]), axis=1, kind="stable")[:, :top_features]
    rows = np.arange(len(contributions))[:, None]  # row i's entries in the order of row i
    top_values = values[rows, feature_order]
    top_values = np.where(np.isfinite(top_values), top_values, None)  # JSON has no NaN: null
    signal_parts = zip(
        layout.signals[signal_order].tolist(),
        by_signal[rows, signal_order].tolist(),
        explained.shares[rows, signal_order].tolist(),
        strict=True,
    )
    feature_parts = zip(
        layout.features[feature_order].tolist(),
        top_values.tolist(),
        contributions[rows, feature_order].tolist(),
        strict=True,
    )
    return [
        {
            "base_value": base,
            "margin": total,
            "signals": [
                {"signal": name, "contribution": part, "share": share}
                for name, part, share in zip(*by_signal_row, strict=True)
            ],
            "unattributed": rest,
            "top_features": [
                {"feature": name, "value": value, "contribution": part}
                for name, value, part in zip(*feature_row, strict=True)
            ],
        }
        for base, total, rest, by_signal_row, feature_row in zip(
            contributions[:, -1].tolist(),
            margin.tolist(),
            unattributed.tolist(),
            signal_parts,
            feature_parts,
            strict=True,
        )
    ]


class _RowFeatures(Mapping[str, float]):
    """One row's window features by name, for ``recommend`` (which reads a few of them, and
    only for rows at risk): a view of the row, not a dict of all its features."""

    __slots__ = ("_index", "_row", "_values")

    def __init__(self, index: Mapping[str, int], values: np.ndarray, row: int) -> None:
        self._index, self._values, self._row = index, values, row

    def __getitem__(self, name: str) -> float:
        return float(self._values[self._row, self._index[name]])

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)


@functools.lru_cache(maxsize=8)
def _positions(features: tuple[str, ...]) -> Mapping[str, int]:
    return MappingProxyType({name: i for i, name in enumerate(features)})


@dataclass(frozen=True)
class _Layout:
    """What explaining a model's rows needs of its names, worked out once per model (read only)."""

    weights: np.ndarray  # signal_weights
    unattributed: np.ndarray  # [features] 1.0 for a feature of no signal
    signals: np.ndarray  # the names as object arrays, for fancy indexing by row
    features: np.ndarray


@functools.lru_cache(maxsize=8)
def _layout(features: tuple[str, ...], signals: tuple[str, ...]) -> _Layout:
    weights = signal_weights(features, signals)
    layout = _Layout(
        weights=weights,
        unattributed=(weights.sum(axis=1) == 0).astype(float),
        signals=np.asarray(signals, dtype=object),
        features=np.asarray(features, dtype=object),
    )
    for array in (layout.weights, layout.unattributed, layout.signals, layout.features):
        array.flags.writeable = False
    return layout


class Scorer:
    """Scores windows for concurrent requests, coalescing them into one model call.

    The drain runs as a task: requests whose bodies are already readable when the
    first arrives are parsed before it starts and join its call, those still being
    read (``reading``) are waited for a few loop turns, and while a call runs,
    newcomers queue up for the next one (up to ``max_rows``). A lone request waits
    for nothing and a burst of single predictions costs a few batched calls
    instead of one each. Calls of up to ``INLINE_ROWS`` rows run on the event loop
    (a thread hop costs as much as the call); larger ones in a worker thread, one
    at a time, so /metrics keeps answering and the API cannot starve the scoring
    cycle of CPU with many parallel model calls.
    """

    def __init__(self, max_rows: int) -> None:
        self.max_rows = max_rows
        self._queue: deque[_Job] = deque()
        self._worker: asyncio.Task | None = None
        self._reading = 0

    @contextmanager
    def reading(self) -> Iterator[None]:
        """Around reading and parsing a request body that may then be scored."""
        self._reading += 1
        try:
            yield
        finally:
            self._reading -= 1

    async def score(
        self, bundle: ModelBundle, values: np.ndarray, ends: np.ndarray
    ) -> tuple[Features, Scores]:
        loop = asyncio.get_running_loop()
        job = _Job(bundle, values, ends, loop.create_future())
        self._queue.append(job)
        if self._worker is None or self._worker.done() or self._worker.get_loop() is not loop:
            self._worker = asyncio.create_task(self._drain())
        return await job.result

    async def _drain(self) -> None:
        while self._queue:
            # Let requests still being read reach the queue (those already runnable have, before
            # this task ran): their bodies arrived with this one, and one call for all is cheaper
            # than one call each. With none, a loop turn would only delay this call.
            for _ in range(GATHER_YIELDS if self._reading else 0):
                waiting = len(self._queue)
                await asyncio.sleep(0)
                if len(self._queue) == waiting:
                    break
            batch = [self._queue.popleft()]
            rows = len(batch[0].values)
            while self._queue and self._queue[0].bundle is batch[0].bundle and rows < self.max_rows:
                rows += len(self._queue[0].values)
                batch.append(self._queue.popleft())
            try:
                if rows <= INLINE_ROWS:
                    results = _score_jobs(batch)  # ~1 ms: a thread hop would cost as much again
                else:
                    results = await anyio.to_thread.run_sync(_score_jobs, batch)
            except Exception as exc:
                for job in batch:
                    if not job.result.done():
                        job.result.set_exception(exc)
                continue
            for job, result in zip(batch, results, strict=True):
                if not job.result.done():
                    job.result.set_result(result)


@dataclass(frozen=True)
class _Job:
    bundle: ModelBundle
    values: np.ndarray
    ends: np.ndarray
    result: asyncio.Future


def _score_jobs(jobs: list[_Job]) -> list[tuple[Features, Scores]]:
    bundle = jobs[0].bundle
    values = np.concatenate([job.values for job in jobs])
    features = window_features(values, bundle.manifest.signals)
    scores = bundle.score(features)
    results, start = [], 0
    for job in jobs:
        part = slice(start, start + len(job.values))
        start = part.stop
        rows = {column.name: getattr(scores, column.name)[part] for column in fields(Scores)}
        results.append((Features(features.values[part], features.names), Scores(**rows)))
    return results
