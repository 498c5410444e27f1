"""Read every signal for every target from a Prometheus-compatible HTTP API.

One range query per signal covers all targets: per-target queries cost ~1 ms
each and do not scale past a few hundred pods (see TOOLING.md). The four
queries run in parallel threads and are decoded with the garbage collector
paused, because decoding millions of small JSON objects is the real cost.

prometheus-api-client is not used: its session asks for gzip (slower on the
loopback/cluster network this daemon lives on) and it hides the error details
we report per signal.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import requests

from exporter.config import PrometheusSettings, Settings
from exporter.frame import Frame
from exporter.sources import Fetch, QueryError

log = logging.getLogger(__name__)

_RETRYABLE_STATUS = frozenset({429, 502, 503, 504})


@dataclass(frozen=True)
class Series:
    """One decoded series of a range query: its target key and its samples."""

    key: tuple[str, ...]
    timestamps: np.ndarray
    values: np.ndarray


class QueryFailed(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def build_session(settings: PrometheusSettings) -> requests.Session:
    """A session carrying auth, TLS and extra headers for every request."""
    session = requests.Session()
    session.headers.update({"Accept-Encoding": "identity", **settings.headers})
    if settings.bearer_token is not None:
        session.headers["Authorization"] = f"Bearer {settings.bearer_token}"
    if settings.basic_auth is not None:
        auth = settings.basic_auth
        password = auth.password
        if auth.password_file is not None:
            password = auth.password_file.read_text().strip()
        session.auth = (auth.username, password or "")
    if settings.insecure_skip_verify:
        session.verify = False
    elif settings.ca_file is not None:
        session.verify = str(settings.ca_file)
    return session


class PrometheusClient:
    """Range queries with timeouts and bounded retries; errors become QueryFailed."""

    def __init__(self, settings: PrometheusSettings, sleep: Callable[[float], None] = time.sleep) -> None:
        self._settings = settings
        self._session = build_session(settings)
        self._sleep = sleep

    def _bearer_from_file(self) -> dict[str, str]:
        """Token files are re-read per request: Kubernetes rotates projected tokens."""
        path = self._settings.bearer_token_file
        return {} if path is None else {"Authorization": f"Bearer {path.read_text().strip()}"}

    def query_range(self, query: str, start: float, end: float, step: float) -> list[dict]:
        params = {
            "query": query,
            "start": f"{start:.3f}",
            "end": f"{end:.3f}",
            "step": f"{step:g}",
            "timeout": f"{self._settings.timeout:g}s",
        }
        attempts = self._settings.retries + 1
        for attempt in range(attempts):
            try:
                return self._post("/api/v1/query_range", params)
            except QueryFailed as exc:
                if exc.reason not in ("timeout", "connection", "http_5xx") or attempt == attempts - 1:
                    raise
                self._sleep(self._settings.backoff * 2**attempt)
        raise AssertionError("unreachable")

    def _post(self, path: str, params: Mapping[str, str]) -> list[dict]:
        try:
            response = self._session.post(
                self._settings.url + path,
                data=params,
                headers=self._bearer_from_file(),
                timeout=self._settings.timeout,
            )
        except requests.Timeout as exc:
            raise QueryFailed("timeout", f"no answer within {self._settings.timeout:g}s") from exc
        except requests.ConnectionError as exc:
            raise QueryFailed("connection", f"cannot connect to {self._settings.url}: {exc}") from exc
        except OSError as exc:
            raise QueryFailed("connection", f"cannot read credentials: {exc}") from exc
        return _decode(response)


def _decode(response: requests.Response) -> list[dict]:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise QueryFailed(
            _status_reason(response.status_code),
            f"HTTP {response.status_code}, body is not a Prometheus JSON answer",
        )
    if body.get("status") != "success":
        error = f"{body.get('errorType', 'error')}: {body.get('error', 'no error message')}"
        if response.status_code >= 500 or response.status_code in _RETRYABLE_STATUS:
            reason = "timeout" if body.get("errorType") == "timeout" else "http_5xx"
        elif body.get("errorType") in ("bad_data", "execution"):
            reason = "promql"
        else:
            reason = "http_4xx"
        raise QueryFailed(reason, f"HTTP {response.status_code}, {error}")
    data = body.get("data")
    if (
        not isinstance(data, dict)
        or data.get("resultType") != "matrix"
        or not isinstance(data.get("result"), list)
    ):
        raise QueryFailed("bad_response", "expected data.resultType 'matrix' with a result list")
    return data["result"]


def _status_reason(status: int) -> str:
    if status >= 500 or status in _RETRYABLE_STATUS:
        return "http_5xx"
    return "http_4xx" if status >= 400 else "bad_response"


def parse_series(result: Sequence[dict], target_labels: Sequence[str]) -> tuple[list[Series], int]:
    """Decode a matrix result; series lacking a target label are dropped and counted."""
    series, unlabelled = [], 0
    for item in result:
        metric, samples = item.get("metric"), item.get("values")
        if not isinstance(metric, dict) or not isinstance(samples, list):
            raise QueryFailed("bad_response", "matrix entries need 'metric' and 'values'")
        if any(label not in metric for label in target_labels):
            unlabelled += 1
            continue
        try:
            pairs = np.array(samples, dtype=float).reshape(-1, 2)
        except (TypeError, ValueError) as exc:
            raise QueryFailed("bad_response", f"unreadable samples: {exc}") from exc
        key = tuple(metric[label] for label in target_labels)
        series.append(Series(key, pairs[:, 0], pairs[:, 1]))
    return series, unlabelled


def align(
    per_signal: Mapping[str, list[Series]], signals: Sequence[str], timestamps: np.ndarray, max_targets: int
) -> tuple[np.ndarray, list[tuple[str, ...]], set[str]]:
    """Place every sample in a dense targets x time x signals array (NaN where absent).

    Returns the array, the sorted target keys and the signals that returned more
    than one series for a target (an aggregation that does not match target_labels).
    """
    keys = sorted({s.key for series in per_signal.values() for s in series})[:max_targets]
    row = {key: i for i, key in enumerate(keys)}
    values = np.full((len(keys), len(timestamps), len(signals)), np.nan)
    step = timestamps[1] - timestamps[0] if len(timestamps) > 1 else 1.0
    duplicated: set[str] = set()
    for column, signal in enumerate(signals):
        seen: set[int] = set()
        for s in per_signal.get(signal, ()):
            i = row.get(s.key)
            if i is None:
                continue
            if i in seen:
                duplicated.add(signal)
                continue
            seen.add(i)
            slots = np.rint((s.timestamps - timestamps[0]) / step).astype(int)
            inside = (slots >= 0) & (slots < len(timestamps))
            values[i, slots[inside], column] = s.values[inside]
    values[~np.isfinite(values)] = np.nan
    return values, keys, duplicated


MAX_POINTS = 11_000  # Prometheus refuses range queries with more points per series


@dataclass(frozen=True)
class Chunk:
    """Rows ending in [first, last] (step indices into the whole range)."""

    first: int
    last: int


def plan_chunks(steps: int, chunk_steps: int, window_steps: int) -> list[Chunk]:
    """Split ``steps`` into chunks whose queries (chunk + window lead-in) fit the point limit."""
    if chunk_steps + window_steps - 1 > MAX_POINTS:
        raise ValueError(
            f"chunk of {chunk_steps} steps plus a {window_steps}-step window exceeds {MAX_POINTS} points"
        )
    return [Chunk(first, min(first + chunk_steps, steps) - 1) for first in range(0, steps, chunk_steps)]


def read_range(
    client: PrometheusClient,
    settings: Settings,
    timestamps: np.ndarray,
    describe: Callable[[str], str] = str,
    sharded: bool = True,
) -> tuple[np.ndarray, list[tuple[str, ...]]]:
    """Every signal of every target (of this shard when ``sharded``) on the grid ``timestamps``,
    one range query per signal: ``values[targets, time, signals]`` and the target keys. Raises
    QueryFailed with the message "<describe(signal)> (<reason>): <error>"."""
    per_signal = {}
    for signal, query in settings.queries.items():
        try:
            result = client.query_range(query, timestamps[0], timestamps[-1], settings.step)
            series, _ = parse_series(result, settings.target_labels)
        except QueryFailed as exc:
            raise QueryFailed(exc.reason, f"{describe(signal)} ({exc.reason}): {exc}") from exc
        shard = settings.shard
        per_signal[signal] = in_shard(series, shard.index, shard.count) if sharded else series
    values, keys, _ = align(per_signal, tuple(settings.queries), timestamps, settings.max_targets)
    return values, keys


def current_targets(
    values: np.ndarray, keys: list[tuple[str, ...]]
) -> tuple[np.ndarray, list[tuple[str, ...]]]:
    """Keep targets with a sample at the newest step in at least one signal.

    A range query still returns a pod that vanished a minute ago (its older
    samples are in the window); exporting it would be a stale series. Gauges
    go stale at once; rate() signals linger for one rate window, as they do in
    any PromQL dashboard.
    """
    if values.shape[1] == 0:
        return values, keys
    alive = np.isfinite(values[:, -1, :]).any(axis=1)
    return values[alive], [key for key, keep in zip(keys, alive, strict=True) if keep]


def shard_of(key: Sequence[str], count: int) -> int:
    """The shard a target belongs to: stable across processes and restarts, unlike hash()."""
    digest = hashlib.sha1("\x00".join(key).encode()).digest()
    return int.from_bytes(digest[:8], "big") % count


def in_shard(series: list[Series], index: int, count: int) -> list[Series]:
    """The series of targets in shard ``index`` of ``count``."""
    if count == 1:
        return series
    return [s for s in series if shard_of(s.key, count) == index]


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Decoding allocates millions of small objects; GC passes over them halve throughput."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class PrometheusSource:
    """The window of every configured signal for every target, one query per signal."""

    def __init__(
        self,
        settings: Settings,
        client: PrometheusClient | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._client = client or PrometheusClient(settings.prometheus)
        self._clock = clock
        self._queries = settings.queries
        self.signals = tuple(self._queries)
        self._pool = ThreadPoolExecutor(max_workers=len(self.signals), thread_name_prefix="query")

    def window(self) -> np.ndarray:
        """Timestamps of the window ending at the last whole step before now."""
        step = self._settings.step
        end = math.floor(self._clock() / step) * step
        points = round(self._settings.lookback / step)
        return end - step * np.arange(points - 1, -1, -1, dtype=float)

    def fetch(self) -> Fetch:
        timestamps = self.window()
        with _gc_paused():
            futures = {
                signal: self._pool.submit(self._read_signal, signal, query, timestamps)
                for signal, query in self._queries.items()
            }
            outcomes = {signal: future.result() for signal, future in futures.items()}
        shard = self._settings.shard
        per_signal = {
            s: in_shard(o, shard.index, shard.count) for s, o in outcomes.items() if isinstance(o, list)
        }
        errors = [o for o in outcomes.values() if isinstance(o, QueryError)]
        values, keys, duplicated = align(per_signal, self.signals, timestamps, self._settings.max_targets)
        values, keys = current_targets(values, keys)
        errors += [
            QueryError(
                s,
                "duplicate_series",
                f"several series per target: aggregate by {self._settings.target_labels}",
            )
            for s in sorted(duplicated)
        ]
        targets = tuple(dict(zip(self._settings.target_labels, key, strict=True)) for key in keys)
        frame = Frame(values=values, targets=targets, timestamps=timestamps, signals=self.signals)
        return Fetch(frame=frame, errors=tuple(errors))

    def _read_signal(self, signal: str, query: str, timestamps: np.ndarray) -> list[Series] | QueryError:
        try:
            result = self._client.query_range(query, timestamps[0], timestamps[-1], self._settings.step)
            series, unlabelled = parse_series(result, self._settings.target_labels)
        except QueryFailed as exc:
            log.warning("query failed", extra={"signal": signal, "reason": exc.reason, "error": str(exc)})
            return QueryError(signal, exc.reason, str(exc))
        if unlabelled and not series:
            labels = ", ".join(self._settings.target_labels)
            return QueryError(signal, "missing_labels", f"no series carries all target labels ({labels})")
        return series

    def read_history(self, timestamps: np.ndarray) -> tuple[np.ndarray, list[tuple[str, ...]]]:
        """Every signal on an earlier grid (the anomaly warm start); raises QueryFailed."""
        return read_range(
            self._client, self._settings, timestamps, lambda signal: f"history of signal {signal!r}"
        )

    def close(self) -> None:
        self._pool.shutdown(wait=False)
