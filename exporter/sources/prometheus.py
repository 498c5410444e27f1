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
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import requests
import urllib3

from exporter.config import PrometheusSettings, Settings
from exporter.frame import Frame
from exporter.redact import mask, mask_url
from exporter.sources import Fetch, QueryError
from exporter.sources.transport import AbortableAdapter, Attempts

log = logging.getLogger(__name__)

_RETRYABLE_STATUS = frozenset({429, 502, 503, 504})
_RETRYABLE_REASONS = frozenset({"timeout", "connection", "http_5xx"})


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
    """A session carrying auth and extra headers for every request (TLS goes per request, see tls_options)."""
    session = requests.Session()
    session.mount("http://", AbortableAdapter(max_retries=0))
    session.mount("https://", AbortableAdapter(max_retries=0))
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
        quiet_insecure_warnings(settings.url)
    return session


def tls_options(settings: PrometheusSettings) -> dict[str, Any]:
    """``verify`` and ``cert`` for each request.

    Passed per request, not set on the session: requests lets ``REQUESTS_CA_BUNDLE`` (set in
    many corporate images) replace a session's ``verify`` (Session.merge_environment_settings),
    which silently ignored ``ca_file`` and ``insecure_skip_verify``. Per request, the config
    wins; with neither set, the environment's bundle still applies, as users expect.
    """
    options: dict[str, Any] = {}
    if settings.insecure_skip_verify:
        options["verify"] = False
    elif settings.ca_file is not None:
        options["verify"] = str(settings.ca_file)
    if settings.cert_file is not None and settings.key_file is not None:
        options["cert"] = (str(settings.cert_file), str(settings.key_file))
    return options


_insecure_noted: set[str] = set()


def quiet_insecure_warnings(url: str) -> None:
    """One structured log line instead of urllib3's plain-text InsecureRequestWarning per request."""
    warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)
    if url not in _insecure_noted:
        _insecure_noted.add(url)
        log.warning(
            "TLS certificate verification is off (prometheus.insecure_skip_verify)",
            extra={"prometheus": mask_url(url)},
        )


class PrometheusClient:
    """Range queries with a total deadline and bounded retries; errors become QueryFailed.

    Each attempt gets ``timeout`` (or what is left of ``deadline``) on the wall clock from
    connecting to the last byte (sources/transport.py), retries back off, and the whole
    query ends by ``deadline``. ``close()`` abandons every query in flight at once, so a
    hung Prometheus never holds a shutdown.
    """

    def __init__(
        self,
        settings: PrometheusSettings,
        sleep: Callable[[float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._session = build_session(settings)
        self._tls = tls_options(settings)
        self._attempts = Attempts()
        self._sleep = sleep or self._attempts.closed.wait
        self._clock = clock
        self._url = mask_url(settings.url)

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
        return _decode(self._with_retries("/api/v1/query_range", params))

    def syntax_error(self, query: str) -> str | None:
        """Prometheus's own parse error for ``query``, or None when it parses.

        ``/api/v1/parse_query`` exists from Prometheus 2.45 on; older servers (2.42 here)
        and many compatible APIs answer 404, so the query then runs as an instant query
        at Unix time 1, where no data exists: parsing and type checks happen, the
        evaluation costs nothing. Raises QueryFailed when Prometheus cannot be asked.
        """
        probes = (
            ("/api/v1/parse_query", {"query": query}),
            ("/api/v1/query", {"query": query, "time": "1", "timeout": f"{self._settings.timeout:g}s"}),
        )
        for path, params in probes:
            response = self._with_retries(path, params)
            if response.status_code == 404 and path.endswith("parse_query"):
                continue
            try:
                body = response.json()
            except ValueError:
                body = None
            if isinstance(body, dict) and body.get("status") == "success":
                return None
            if isinstance(body, dict) and body.get("errorType") == "bad_data":
                return str(body.get("error"))
            raise QueryFailed(
                _status_reason(response.status_code), f"HTTP {response.status_code} from {path}"
            )
        return None

    def _with_retries(self, path: str, params: Mapping[str, str]) -> requests.Response:
        settings = self._settings
        deadline = self._clock() + settings.deadline
        for attempt in range(settings.retries + 1):
            budget = min(settings.timeout, deadline - self._clock())
            try:
                return self._post(path, params, budget)
            except QueryFailed as exc:
                if exc.reason not in _RETRYABLE_REASONS:
                    raise
                pause = settings.backoff * 2**attempt
                cut_by_deadline = exc.reason == "timeout" and budget < settings.timeout
                no_time_left = self._clock() + pause >= deadline and attempt < settings.retries
                if cut_by_deadline or (no_time_left and exc.reason == "timeout"):
                    raise QueryFailed(
                        "deadline",
                        f"no complete answer within the {settings.deadline:g}s query deadline: {exc}",
                    ) from exc
                if attempt == settings.retries or no_time_left:
                    raise
            self._sleep(pause)
            if self._attempts.closed.is_set():
                break
        raise QueryFailed("shutdown", "abandoned: the daemon is stopping")

    def _post(self, path: str, params: Mapping[str, str], budget: float) -> requests.Response:
        with self._attempts.attempt(budget) as attempt:
            try:
                response = self._session.post(
                    self._settings.url + path,
                    data=params,
                    headers=self._bearer_from_file(),
                    timeout=budget,
                    **self._tls,
                )
            except (requests.RequestException, OSError) as exc:
                raise self._failure(exc, attempt.cut, budget) from exc
        if response.status_code in _RETRYABLE_STATUS or response.status_code >= 500:
            _decode(response)  # raises the retryable QueryFailed with Prometheus's message
        return response

    def _failure(self, exc: Exception, cut: str | None, budget: float) -> QueryFailed:
        """What went wrong, with every URL and configured secret masked."""
        if cut == "shutdown":
            return QueryFailed("shutdown", "abandoned: the daemon is stopping")
        if cut == "deadline" or isinstance(exc, requests.Timeout):
            return QueryFailed("timeout", f"no complete answer within {budget:g}s")
        detail = mask(str(exc), self._settings.secrets)
        if isinstance(exc, requests.exceptions.SSLError):
            return QueryFailed("tls", f"TLS with {self._url} failed: {detail}")
        if isinstance(exc, requests.RequestException):
            return QueryFailed("connection", f"cannot connect to {self._url}: {detail}")
        return QueryFailed("connection", f"cannot read credentials: {detail}")

    def close(self) -> None:
        """Abandon every query in flight and refuse new ones (shutdown)."""
        self._attempts.abort_all()
        self._session.close()


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


def choose_targets(
    per_signal: Mapping[str, list[Series]], timestamps: np.ndarray, limit: int
) -> tuple[set[tuple[str, ...]], int]:
    """The targets to score: live ones only, at most ``limit``; and how many live ones did not fit.

    Live means a sample at the newest step in some signal. Counting before the limit
    matters: pods that vanished minutes ago are still inside the window and would
    otherwise take the slots of new pods for as long as the lookback.
    """
    step = timestamps[1] - timestamps[0] if len(timestamps) > 1 else 1.0
    newest = timestamps[-1] - step / 2 if len(timestamps) else -math.inf
    live = sorted(
        {
            s.key
            for series in per_signal.values()
            for s in series
            if len(s.timestamps) and s.timestamps[-1] >= newest
        }
    )
    return set(live[:limit]), max(0, len(live) - limit)


class ClashLog:
    """Warns once per change when a signal's series do not map one-to-one onto targets.

    Both clashes are silent in the numbers (the first series wins, unlabelled ones are
    ignored), and both come from a query aggregated by other labels than the target
    labels, so the warning names the query and shows label sets that clash.
    """

    def __init__(self, target_labels: Sequence[str]) -> None:
        self._labels = tuple(target_labels)
        self._state: dict[str, tuple[bool, bool]] = {}

    def check(
        self, signal: str, query: str, result: Sequence[dict], series: Sequence[Series], unlabelled: int
    ) -> None:
        state = (len({s.key for s in series}) < len(series), unlabelled > 0)
        if state == self._state.get(signal, (False, False)):
            return
        self._state[signal] = state
        where = {"signal": signal, "query": query}
        if state[0]:
            log.warning(
                "several series per target: only the first is used; aggregate the query by the target labels",
                extra={**where, "target_labels": list(self._labels), "example": self._duplicates(result)},
            )
        if state[1]:
            example = next(item.get("metric") for item in result if self._key(item) is None)
            log.warning(
                "series without every target label are ignored",
                extra={
                    **where,
                    "target_labels": list(self._labels),
                    "series": unlabelled,
                    "example": example,
                },
            )
        if not any(state):
            log.info("series map onto targets again", extra=where)

    def _key(self, item: dict) -> tuple[str, ...] | None:
        metric = item.get("metric")
        if not isinstance(metric, dict) or any(label not in metric for label in self._labels):
            return None
        return tuple(metric[label] for label in self._labels)

    def _duplicates(self, result: Sequence[dict]) -> list[dict]:
        first: dict[tuple[str, ...], dict] = {}
        for item in result:
            key = self._key(item)
            if key is not None and key in first:
                return [first[key], item["metric"]]
            if key is not None:
                first[key] = item["metric"]
        return []


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
        self._clashes = ClashLog(settings.target_labels)
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
        kept, dropped = choose_targets(per_signal, timestamps, self._settings.max_targets)
        per_signal = {signal: [s for s in series if s.key in kept] for signal, series in per_signal.items()}
        values, keys, duplicated = align(per_signal, self.signals, timestamps, max(len(kept), 1))
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
        return Fetch(frame=frame, errors=tuple(errors), dropped=dropped)

    def _read_signal(self, signal: str, query: str, timestamps: np.ndarray) -> list[Series] | QueryError:
        try:
            result = self._client.query_range(query, timestamps[0], timestamps[-1], self._settings.step)
            series, unlabelled = parse_series(result, self._settings.target_labels)
            self._clashes.check(signal, query, result, series, unlabelled)
        except QueryFailed as exc:
            log.warning("query failed", extra={"signal": signal, "reason": exc.reason, "error": str(exc)})
            return QueryError(signal, exc.reason, str(exc))
        if unlabelled and not series:
            labels = ", ".join(self._settings.target_labels)
            return QueryError(signal, "missing_labels", f"no series carries all target labels ({labels})")
        return series

    def close(self) -> None:
        """Abandon the queries in flight (shutdown); their threads end at once."""
        self._client.close()
        self._pool.shutdown(wait=False)
