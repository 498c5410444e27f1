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
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import numpy as np
import requests

from exporter.config import PrometheusSettings, Settings
from exporter.frame import Frame
from exporter.memory import return_large_buffers
from exporter.sources import Fetch, QueryError
from exporter.sources.matrix import Matrix, MatrixError, decode_matrix, matrix_of
from exporter.sources.window import Key, RollingWindow

log = logging.getLogger(__name__)

_RETRYABLE_STATUS = frozenset({429, 502, 503, 504})
# One answer decoded at a time: its temporaries (~3x the body) are the peak of a cycle.
_DECODING = threading.Lock()


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

    def query_range(self, query: str, start: float, end: float, step: float) -> Matrix:
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

    def _post(self, path: str, params: Mapping[str, str]) -> Matrix:
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


def _decode(response: requests.Response) -> Matrix:
    body = response.content
    if response.status_code == 200:
        with _DECODING:
            matrix = decode_matrix(body)
        if matrix is not None:
            return matrix
    try:
        with _gc_paused():
            parsed = json.loads(body)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise QueryFailed(
            _status_reason(response.status_code),
            f"HTTP {response.status_code}, body is not a Prometheus JSON answer",
        )
    body = parsed
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
    try:
        return matrix_of(data["result"])
    except MatrixError as exc:
        raise QueryFailed("bad_response", str(exc)) from None


def _status_reason(status: int) -> str:
    if status >= 500 or status in _RETRYABLE_STATUS:
        return "http_5xx"
    return "http_4xx" if status >= 400 else "bad_response"


def parse_series(result: Matrix, target_labels: Sequence[str]) -> tuple[list[Series], int]:
    """Split a matrix into series; those lacking a target label are dropped and counted."""
    series, unlabelled = [], 0
    offsets = result.offsets
    for i, metric in enumerate(result.labels):
        if any(label not in metric for label in target_labels):
            unlabelled += 1
            continue
        part = slice(offsets[i], offsets[i + 1])
        key = tuple(metric[label] for label in target_labels)
        series.append(Series(key, result.timestamps[part], result.values[part]))
    return series, unlabelled


def target_keys(result: Matrix, target_labels: Sequence[str]) -> tuple[list[Key | None], int]:
    """The target key of each series (None when it lacks a target label) and how many lack one."""
    keys: list[Key | None] = [
        tuple(metric[label] for label in target_labels)
        if all(name in metric for name in target_labels)
        else None
        for metric in result.labels
    ]
    return keys, sum(key is None for key in keys)


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


def shard_of(key: Sequence[str], count: int) -> int:
    """The shard a target belongs to: stable across processes and restarts, unlike hash()."""
    digest = hashlib.sha1("\x00".join(key).encode()).digest()
    return int.from_bytes(digest[:8], "big") % count


_REGEX_SPECIAL = frozenset("\\.+*?()|[]{}^$")


def matcher(keys: Iterable[Key], target_labels: Sequence[str]) -> str:
    """Label matchers (``{selector}``, with a trailing comma) that select at least ``keys``.

    One regex alternation of exact values per target label: the cross product may
    admit a few more targets (the same pod name in another namespace), which the
    caller drops. Prometheus resolves such alternations from its index, not by regex.
    """
    columns = zip(*keys, strict=True)
    parts = []
    for label, values in zip(target_labels, columns, strict=True):
        alternatives = "|".join(_regex_literal(value) for value in sorted(set(values)))
        escaped = alternatives.replace("\\", "\\\\").replace('"', '\\"')
        parts.append(f'{label}=~"{escaped}",')
    return "".join(parts)


def _regex_literal(value: str) -> str:
    return "".join("\\" + c if c in _REGEX_SPECIAL else c for c in value)


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


@dataclass(frozen=True)
class _Read:
    """One query of one signal: the time columns it covers and, when restricted, the rows it is for."""

    signal: int
    first: int  # window column the query starts at
    last: int  # window column it ends at (inclusive)
    rows: tuple[int, ...] | None = None  # None: every target the query returns


@dataclass
class _Outcome:
    keys: list[Key] = field(default_factory=list)
    samples: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    error: QueryError | None = None
    duplicated: bool = False
    unparsable: int = 0


class PrometheusSource:
    """The window of every configured signal for every target, rolled forward cycle by cycle.

    A full fetch (one range query per signal over the whole window) happens at start,
    after a gap longer than the window, after a signal failed, and every
    ``full_refresh``; a config change restarts the daemon and so starts afresh. Every
    other cycle reads only the steps since the last one plus ``reread_steps`` before
    them (where late samples land), again one query per signal for every target, and
    fetches the history of targets new to the window in one batched query per signal
    (``{selector}`` narrowed to them). A shard reads the newest steps of every target
    to learn which exist, and history only for its own (see ShardSettings).
    """

    def __init__(
        self,
        settings: Settings,
        client: PrometheusClient | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._client = client or PrometheusClient(settings.prometheus)
        self._clock = clock
        return_large_buffers()
        self._templates = settings.signal_templates
        self.signals = tuple(self._templates)
        self._points = round(settings.lookback / settings.step)
        self._pool = ThreadPoolExecutor(max_workers=len(self.signals), thread_name_prefix="query")
        # At most two whole-window answers in memory at once: one arriving while one decodes.
        self._whole = threading.Semaphore(2)
        self._window: RollingWindow | None = None
        self._full_at = -math.inf
        self._stale: set[int] = set()
        for signal, template in self._templates.items():
            if "{selector}" not in template and settings.shard.count > 1:
                log.warning(
                    "signal query has no {selector}: this shard reads its whole window for every target",
                    extra={"signal": signal},
                )

    def window(self) -> np.ndarray:
        """Timestamps of the window ending at the last whole step before now."""
        step = self._settings.step
        end = math.floor(self._clock() / step) * step
        return end - step * np.arange(self._points - 1, -1, -1, dtype=float)

    def fetch(self) -> Fetch:
        end = float(self.window()[-1])
        window, recent = self._roll(end)
        sharded = self._settings.shard.count > 1
        every = range(len(self.signals))
        first_reads = [
            _Read(s, 0 if (s in self._stale and not sharded) else self._points - recent, self._points - 1)
            for s in every
        ]
        known = len(window.keys)
        errors = self._apply(window, first_reads, self._run(window, first_reads))
        failed = {s for s, _, hard in errors if hard}
        history = [
            _Read(s, 0, first.first - 1, tuple(range(0 if s in self._stale else known, len(window.keys))))
            for s, first in zip(every, first_reads, strict=True)
            if first.first > 0 and s not in failed and self._history_pays(s)
        ]
        history = [read for read in history if read.rows]
        if history:
            errors += self._apply(window, history, self._run(window, history))
        failed = {s for s, _, hard in errors if hard}
        self._stale = failed
        for s in failed:
            window.clear(s)
        window.evict()
        values, keys = window.current(self._settings.max_targets)
        targets = tuple(dict(zip(self._settings.target_labels, key, strict=True)) for key in keys)
        frame = Frame(
            values=values, targets=targets, timestamps=window.timestamps.copy(), signals=self.signals
        )
        reported = tuple(error for _, error, _ in sorted(errors, key=lambda e: e[0]))
        return Fetch(frame=frame, errors=reported)

    def _history_pays(self, signal: int) -> bool:
        """Without {selector} a history read returns every target's window: worth it only when the
        rows need it for certain (a shard's own targets, a signal being re-read), not for new pods,
        whose older samples exist only if they arrived later than ``reread_steps``."""
        narrowable = "{selector}" in self._templates[self.signals[signal]]
        return narrowable or self._settings.shard.count > 1 or signal in self._stale

    def _roll(self, end: float) -> tuple[RollingWindow, int]:
        """The window moved to ``end`` and how many newest columns to (re-)read for every target."""
        settings, window = self._settings, self._window
        sharded = settings.shard.count > 1
        full = (
            window is None
            or end < window.end
            or end - self._full_at >= settings.full_refresh
            or (end - window.end) / settings.step + settings.reread_steps >= self._points
        )
        if full:
            window = self._window = RollingWindow(self._points, len(self.signals), settings.step, end)
            self._full_at = end
            self._stale = set(range(len(self.signals)))
            # A shard learns who exists from the newest steps, then reads history for its own only.
            return window, min(settings.reread_steps + 1, self._points) if sharded else self._points
        shift = window.advance(end)
        return window, min(shift + settings.reread_steps, self._points)

    def _run(self, window: RollingWindow, reads: list[_Read]) -> list[_Outcome]:
        with _gc_paused():
            futures = [self._pool.submit(self._read, window, read) for read in reads]
            return [future.result() for future in futures]

    def _read(self, window: RollingWindow, read: _Read) -> _Outcome:
        """Query one signal for ``read`` and key its series (the window is not touched here)."""
        signal = self.signals[read.signal]
        template = self._templates[signal]
        selector = ""
        if read.rows is not None and "{selector}" in template:
            selector = matcher([window.keys[i] for i in read.rows], self._settings.target_labels)
        query = self._settings.fill(template, selector)
        start, end = window.timestamps[read.first], window.timestamps[read.last]
        whole = read.rows is None and read.last - read.first > self._settings.reread_steps
        try:
            with self._whole if whole else nullcontext():
                result = self._client.query_range(query, start, end, self._settings.step)
        except QueryFailed as exc:
            log.warning("query failed", extra={"signal": signal, "reason": exc.reason, "error": str(exc)})
            return _Outcome(error=QueryError(signal, exc.reason, str(exc)))
        return self._keyed(signal, result, read, window)

    def _keyed(self, signal: str, result: Matrix, read: _Read, window: RollingWindow) -> _Outcome:
        keys, unlabelled = target_keys(result, self._settings.target_labels)
        if unlabelled and unlabelled == len(keys):
            labels = ", ".join(self._settings.target_labels)
            message = f"no series carries all target labels ({labels})"
            return _Outcome(error=QueryError(signal, "missing_labels", message))
        shard = self._settings.shard
        wanted = None if read.rows is None else {window.keys[i] for i in read.rows}
        outcome, seen = _Outcome(unparsable=result.unparsable), set()
        for i, key in enumerate(keys):
            if key is None or (wanted is not None and key not in wanted):
                continue
            if shard.count > 1 and shard_of(key, shard.count) != shard.index:
                continue
            if key in seen:
                outcome.duplicated = True
                continue
            seen.add(key)
            part = slice(result.offsets[i], result.offsets[i + 1])
            outcome.keys.append(key)
            outcome.samples.append((result.timestamps[part], result.values[part]))
        return outcome

    def _apply(
        self, window: RollingWindow, reads: list[_Read], outcomes: list[_Outcome]
    ) -> list[tuple[int, QueryError, bool]]:
        """Write what each read returned into its columns; the errors as (signal index, error, hard).

        A hard error (the query failed) leaves the signal unread; a soft one (duplicate or
        unreadable series) only says that some series were left out."""
        errors = []
        for read, outcome in zip(reads, outcomes, strict=True):
            signal = self.signals[read.signal]
            if outcome.error is not None:
                errors.append((read.signal, outcome.error, True))
                continue
            window.clear(read.signal, read.first, read.last, read.rows)
            rows = np.asarray(window.add(outcome.keys), dtype=np.intp)
            if outcome.samples:
                counts = [len(t) for t, _ in outcome.samples]
                window.put(
                    read.signal,
                    np.repeat(rows, counts),
                    np.concatenate([t for t, _ in outcome.samples]),
                    np.concatenate([v for _, v in outcome.samples]),
                    read.first,
                    read.last,
                )
            if outcome.duplicated:
                message = f"several series per target: aggregate by {self._settings.target_labels}"
                errors.append((read.signal, QueryError(signal, "duplicate_series", message), False))
            if outcome.unparsable:
                message = f"{outcome.unparsable} series dropped: a sample is not a number"
                errors.append((read.signal, QueryError(signal, "unparsable_samples", message), False))
        return errors

    def close(self) -> None:
        self._pool.shutdown(wait=False)
