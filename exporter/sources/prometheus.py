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

import hashlib
import json
import logging
import math
import operator
import threading
import time
import warnings
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import requests
import urllib3

from exporter.config import PrometheusSettings, Settings
from exporter.frame import Frame
from exporter.memory import collection_paused, return_large_buffers
from exporter.redact import mask, mask_url
from exporter.sources import Fetch, QueryError, QueryFailed
from exporter.sources.matrix import Matrix, MatrixError, decode_matrix, matrix_of
from exporter.sources.owners import OwnerReader
from exporter.sources.transport import AbortableAdapter, Attempts
from exporter.sources.window import Key, RollingWindow

log = logging.getLogger(__name__)

_RETRYABLE_STATUS = frozenset({429, 502, 503, 504})
# One answer decoded at a time: its temporaries (~3x the body) are the peak of a cycle.
_DECODING = threading.Lock()
_RETRYABLE_REASONS = frozenset({"timeout", "connection", "http_5xx"})


@dataclass(frozen=True)
class Answer:
    """One range query's series as flat arrays, without a Python object per series (a history
    chunk at 10,000 targets made ~200,000 of them): series i is ``keys[i]`` (None: it lacks a
    target label, or is not wanted) with samples ``offsets[i]:offsets[i + 1]``."""

    keys: list[Key | None]
    timestamps: np.ndarray
    values: np.ndarray
    offsets: np.ndarray

    def only(self, wanted: Callable[[Key], bool]) -> Answer:
        """The same samples, the series whose key is not ``wanted`` dropped (keyed None)."""
        return replace(self, keys=[key if key is not None and wanted(key) else None for key in self.keys])


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

    def query_range(
        self, query: str, start: float, end: float, step: float, known: Matrix | None = None
    ) -> Matrix:
        """The answer as a Matrix; with ``known`` (this query's previous answer) its label
        objects are reused when unchanged (see decode_matrix)."""
        params = {
            "query": query,
            "start": f"{start:.3f}",
            "end": f"{end:.3f}",
            "step": f"{step:g}",
            "timeout": f"{self._settings.timeout:g}s",
        }
        return _decode(self._with_retries("/api/v1/query_range", params), known)

    def query_labels(self, query: str, at: float) -> list[dict[str, str]]:
        """The label sets of an instant query's answer at Unix time ``at`` (values are not
        needed where a series' presence is the fact, as for kube-state-metrics' owner series)."""
        params = {"query": query, "time": f"{at:.3f}", "timeout": f"{self._settings.timeout:g}s"}
        response = self._with_retries("/api/v1/query", params)
        try:
            with collection_paused():
                parsed = json.loads(response.content)
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            raise QueryFailed(
                _status_reason(response.status_code),
                f"HTTP {response.status_code}, body is not a Prometheus JSON answer",
            )
        data = _success_data(response.status_code, parsed)
        result = data.get("result")
        if data.get("resultType") != "vector" or not isinstance(result, list):
            raise QueryFailed("bad_response", "expected data.resultType 'vector' with a result list")
        labels: list[dict[str, str]] = []
        for item in result:
            metric = item.get("metric") if isinstance(item, dict) else None
            if not isinstance(metric, dict):
                raise QueryFailed("bad_response", "a result of the vector has no metric object")
            labels.append(metric)
        return labels

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


def _decode(response: requests.Response, known: Matrix | None = None) -> Matrix:
    body = response.content
    if response.status_code == 200:
        with _DECODING:
            matrix = decode_matrix(body, known)
        if matrix is not None:
            return matrix
    try:
        with collection_paused():  # millions of small objects: GC passes over them halved throughput
            parsed = json.loads(body)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise QueryFailed(
            _status_reason(response.status_code),
            f"HTTP {response.status_code}, body is not a Prometheus JSON answer",
        )
    data = _success_data(response.status_code, parsed)
    if data.get("resultType") != "matrix" or not isinstance(data.get("result"), list):
        raise QueryFailed("bad_response", "expected data.resultType 'matrix' with a result list")
    try:
        return matrix_of(data["result"])
    except MatrixError as exc:
        raise QueryFailed("bad_response", str(exc)) from None


def _success_data(status: int, body: dict) -> dict:
    """The ``data`` of a successful Prometheus answer; QueryFailed with the reason otherwise."""
    if body.get("status") != "success":
        error = f"{body.get('errorType', 'error')}: {body.get('error', 'no error message')}"
        if status >= 500 or status in _RETRYABLE_STATUS:
            reason = "timeout" if body.get("errorType") == "timeout" else "http_5xx"
        elif body.get("errorType") in ("bad_data", "execution"):
            reason = "promql"
        else:
            reason = "http_4xx"
        raise QueryFailed(reason, f"HTTP {status}, {error}")
    data = body.get("data")
    if not isinstance(data, dict):
        raise QueryFailed("bad_response", "the answer has no data object")
    return data


def _status_reason(status: int) -> str:
    if status >= 500 or status in _RETRYABLE_STATUS:
        return "http_5xx"
    return "http_4xx" if status >= 400 else "bad_response"


def answer_of(result: Matrix, target_labels: Sequence[str]) -> Answer:
    """A matrix's series by target key; the labels objects are not kept."""
    keys, _ = target_keys(result, target_labels)
    return Answer(keys, result.timestamps, result.values, result.offsets)


def target_keys(result: Matrix, target_labels: Sequence[str]) -> tuple[list[Key | None], int]:
    """The target key of each series (None when it lacks a target label) and how many lack one."""
    pick = operator.itemgetter(*target_labels)
    try:  # every series labelled (the rule): one C-level pass, a tenth of the general one's time
        picked = list(map(pick, result.labels))
    except KeyError:
        keys: list[Key | None] = [
            tuple(metric[label] for label in target_labels)
            if all(name in metric for name in target_labels)
            else None
            for metric in result.labels
        ]
        return keys, sum(key is None for key in keys)
    return ([(value,) for value in picked] if len(target_labels) == 1 else picked), 0


def align(
    per_signal: Mapping[str, Answer],
    signals: Sequence[str],
    timestamps: np.ndarray,
    max_targets: int,
    include: Collection[Key] = (),
) -> tuple[np.ndarray, list[tuple[str, ...]], set[str]]:
    """Place every sample in a dense targets x time x signals array (NaN where absent), with a
    row also for each key of ``include`` (a target the caller holds earlier samples of), in one
    vectorised scatter per signal.

    Returns the array, the sorted target keys and the signals that returned more
    than one series for a target (an aggregation that does not match target_labels); of
    those, the first series is placed.
    """
    named = {key for answer in per_signal.values() for key in answer.keys if key is not None}
    keys = sorted(named | set(include))[:max_targets]
    row = {key: i for i, key in enumerate(keys)}
    values = np.full((len(keys), len(timestamps), len(signals)), np.nan)
    step = timestamps[1] - timestamps[0] if len(timestamps) > 1 else 1.0
    duplicated: set[str] = set()
    for column, signal in enumerate(signals):
        answer = per_signal.get(signal)
        if answer is None or not answer.keys:
            continue
        rows = np.array([-1 if key is None else row.get(key, -1) for key in answer.keys], dtype=np.int64)
        placed = np.flatnonzero(rows >= 0)
        _, first = np.unique(rows[placed], return_index=True)
        if len(first) < len(placed):
            duplicated.add(signal)
            later = np.ones(len(placed), dtype=bool)
            later[first] = False
            rows[placed[later]] = -1
        sample_rows = np.repeat(rows, np.diff(answer.offsets))
        slots = np.rint((answer.timestamps - timestamps[0]) / step).astype(np.int64)
        inside = (sample_rows >= 0) & (slots >= 0) & (slots < len(timestamps))
        values[sample_rows[inside], slots[inside], column] = answer.values[inside]
    values[~np.isfinite(values)] = np.nan
    return values, keys, duplicated


MAX_POINTS = 11_000  # Prometheus refuses range queries with more points per series
NARROW_MAX = 1_000  # targets a read narrows its queries to by name; beyond, it reads all and drops


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
    only: Collection[Key] | None = None,
    read_from: int = 0,
    include: Collection[Key] = (),
) -> tuple[np.ndarray, list[tuple[str, ...]]]:
    """Every signal of every target (of this shard when ``sharded``; of ``only`` these when
    given) on the grid ``timestamps``, one range query per signal: ``values[targets, time,
    signals]`` and the target keys. Only ``timestamps[read_from:]`` is queried; the columns
    before it are NaN, for the caller to fill from what it read before (a warm-up carries its
    windows' lead-in from chunk to chunk, and asks for a row for each key of ``include``, as
    ``align``). ``only`` narrows the queries through ``{selector}``
    where the template has one (up to NARROW_MAX targets) and drops the other series in any
    case. Raises QueryFailed with the message "<describe(signal)> (<reason>): <error>"."""
    wanted = None if only is None else set(only)
    narrow = wanted is not None and 0 < len(wanted) <= NARROW_MAX
    selector = matcher(wanted, settings.target_labels) if narrow else ""
    if sharded:
        selector = shard_matcher(settings) + selector
    per_signal = {}
    for signal, template in settings.signal_templates.items():
        try:
            query = settings.fill(template, selector)
            answer = answer_of(
                client.query_range(query, timestamps[read_from], timestamps[-1], settings.step),
                settings.target_labels,
            )
        except QueryFailed as exc:
            raise QueryFailed(exc.reason, f"{describe(signal)} ({exc.reason}): {exc}") from exc
        if sharded and settings.shard.count > 1:
            answer = answer.only(lambda key: is_mine(key, settings))
        if wanted is not None:
            answer = answer.only(wanted.__contains__)
        per_signal[signal] = answer
    values, keys, _ = align(per_signal, tuple(settings.queries), timestamps, settings.max_targets, include)
    return values, keys


class ClashLog:
    """Warns once per change when a signal's series do not map one-to-one onto targets.

    Both clashes are silent in the numbers (the first series wins, unlabelled ones are
    ignored), and both come from a query aggregated by other labels than the target
    labels, so the warning names the query and shows label sets that clash.
    """

    def __init__(self, target_labels: Sequence[str]) -> None:
        self._labels = tuple(target_labels)
        self._state: dict[str, tuple[bool, bool]] = {}

    def check(self, signal: str, query: str, metrics: Sequence[dict], keys: Sequence[Key | None]) -> None:
        """``metrics`` are a matrix's label sets, ``keys`` their target keys (None: a label is missing)."""
        labelled = [key for key in keys if key is not None]
        state = (len(set(labelled)) < len(labelled), len(labelled) < len(keys))
        if state == self._state.get(signal, (False, False)):
            return
        self._state[signal] = state
        where = {"signal": signal, "query": query}
        if state[0]:
            log.warning(
                "several series per target: only the first is used; aggregate the query by the target labels",
                extra={**where, "target_labels": list(self._labels), "example": _duplicates(metrics, keys)},
            )
        if state[1]:
            example = next(metric for metric, key in zip(metrics, keys, strict=True) if key is None)
            log.warning(
                "series without every target label are ignored",
                extra={
                    **where,
                    "target_labels": list(self._labels),
                    "series": len(keys) - len(labelled),
                    "example": example,
                },
            )
        if not any(state):
            log.info("series map onto targets again", extra=where)


def _duplicates(metrics: Sequence[dict], keys: Sequence[Key | None]) -> list[dict]:
    first: dict[Key, dict] = {}
    for metric, key in zip(metrics, keys, strict=True):
        if key is not None and key in first:
            return [first[key], metric]
        if key is not None:
            first[key] = metric
    return []


def shard_of(key: Sequence[str], count: int) -> int:
    """The shard a target belongs to: stable across processes and restarts, unlike hash()."""
    digest = hashlib.sha1("\x00".join(key).encode()).digest()
    return int.from_bytes(digest[:8], "big") % count


# Last characters of a DNS name, dealt to shards round-robin in this order: first the 27 that end
# a ReplicaSet pod's random suffix (Kubernetes' rand.String alphabet), then the other nine.
SHARD_CHARACTERS = "bcdfghjklmnpqrstvwxz2456789" + "013aeiouy"


def is_mine(key: Sequence[str], settings: Settings) -> bool:
    """Whether a target is this replica's (ShardSettings): by hash, or by the last character of
    the ``shard.by`` label (anything outside SHARD_CHARACTERS, e.g. upper case: shard 0)."""
    shard = settings.shard
    if shard.by is None:
        return shard_of(key, shard.count) == shard.index
    value = key[settings.target_labels.index(shard.by)]
    position = SHARD_CHARACTERS.find(value[-1:]) if value else -1
    return (position % shard.count if position >= 0 else 0) == shard.index


def shard_matcher(settings: Settings) -> str:
    """``{selector}`` matchers of this replica's targets with ``shard.by`` (a trailing comma), or
    nothing: the same rule as ``is_mine``, written as an RE2 regex Prometheus anchors."""
    shard = settings.shard
    if shard.by is None or shard.count == 1:
        return ""
    pattern = f".*[{SHARD_CHARACTERS[shard.index :: shard.count]}]"
    if shard.index == 0:
        pattern += f"|.*[^{SHARD_CHARACTERS}]"
    return f'{shard.by}=~"{pattern}",'


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


def _outcome(plan: _Plan, result: Matrix) -> _Outcome:
    """The samples of the series ``plan`` keeps, key after key, as flat arrays (no copy when it
    keeps every series)."""
    if plan.error is not None:
        return _Outcome(error=plan.error)
    counts, timestamps, values = result.counts, result.timestamps, result.values
    if plan.kept is not None:
        chosen = np.zeros(len(counts), dtype=bool)
        chosen[plan.kept] = True
        samples = np.repeat(chosen, counts)
        counts, timestamps, values = counts[plan.kept], timestamps[samples], values[samples]
    return _Outcome(plan.keys, counts, timestamps, values, None, plan.duplicated, result.unparsable)


@dataclass(frozen=True)
class _Read:
    """One query of one signal: the time columns it covers and, when restricted, the rows it is for."""

    signal: int
    first: int  # window column the query starts at
    last: int  # window column it ends at (inclusive)
    rows: tuple[int, ...] | None = None  # None: every target the query returns


@dataclass(frozen=True)
class _Plan:
    """Which series of an answer are kept, as which targets: the same for as long as the label
    objects are (``labels`` is the decoded list, compared by identity), so a cycle redoes this
    per-series work only when pods come or go."""

    labels: list[dict]
    keys: list[Key]  # of the kept series, in answer order
    kept: np.ndarray | None  # indices of the kept series (None: every series)
    duplicated: bool
    error: QueryError | None = None


@dataclass
class _Outcome:
    keys: list[Key] = field(default_factory=list)
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # samples per key
    timestamps: np.ndarray = field(default_factory=lambda: np.empty(0))  # key after key
    values: np.ndarray = field(default_factory=lambda: np.empty(0))
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
    to learn which exist, and history only for its own (see ShardSettings). The owners of the
    targets' pods, which name the workload a rollout's new pods inherit statistics from, come
    along when configured (sources/owners.py).
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
        self._clashes = ClashLog(settings.target_labels)
        self._pool = ThreadPoolExecutor(max_workers=len(self.signals), thread_name_prefix="query")
        # At most two whole-window answers in memory at once: one arriving while one decodes.
        self._whole = threading.Semaphore(2)
        self._window: RollingWindow | None = None
        self._plans: dict[int, tuple[Matrix, _Plan]] = {}  # signal -> last whole read's labels, plan
        self._shards: dict[Key, bool] = {}  # target -> whether it is this shard's (see _shard_members)
        self._keys: list[Key] = []  # the last frame's targets, their label sets (see _labelled)
        self._targets: tuple[dict[str, str], ...] = ()
        self._label_sets: dict[Key, dict[str, str]] = {}
        self._full_at = -math.inf
        self._stale: set[int] = set()
        self._owners = OwnerReader(settings, self._client.query_labels) if settings.reads_owners else None
        self._shard_selector = shard_matcher(settings)  # with shard.by: every query selects ours only
        # Hashed shards cannot be selected in PromQL: they learn who exists from the newest steps.
        self._hashed = settings.shard.count > 1 and settings.shard.by is None
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
        sharded = self._hashed
        every = range(len(self.signals))
        first_reads = [
            _Read(s, 0 if (s in self._stale and not sharded) else self._points - recent, self._points - 1)
            for s in every
        ]
        known = len(window.keys)
        errors = self._run(window, first_reads)
        failed = {s for s, _, hard in errors if hard}
        history = [
            _Read(s, 0, first.first - 1, tuple(range(0 if s in self._stale else known, len(window.keys))))
            for s, first in zip(every, first_reads, strict=True)
            if first.first > 0 and s not in failed and self._history_pays(s)
        ]
        history = [read for read in history if read.rows]
        if history:
            errors += self._run(window, history)
        failed = {s for s, _, hard in errors if hard}
        self._stale = failed
        for s in failed:
            window.clear(s)
        window.evict()
        values, keys, dropped = window.current(self._settings.max_targets)
        frame = Frame(
            values=values,
            targets=self._labelled(keys),
            timestamps=window.timestamps.copy(),
            signals=self.signals,
        )
        reported = tuple(error for _, error, _ in sorted(errors, key=lambda e: e[0]))
        # With every signal failed there is no cycle to name workloads for (and no Prometheus to ask).
        owners = None
        if self._owners is not None and len(failed) < len(self.signals):
            owners = self._owners.read(keys, end)
        return Fetch(frame=frame, errors=reported, dropped=dropped, owners=owners)

    def _labelled(self, keys: list[Key]) -> tuple[dict[str, str], ...]:
        """The label sets of ``keys``: last cycle's tuple when the targets are the same, else one
        reusing the label sets of the targets that stay, so readers that compare targets across
        cycles (exposition, anomaly statistics) mostly find the very same objects."""
        if keys == self._keys:
            return self._targets
        known, labels = self._label_sets, self._settings.target_labels
        self._label_sets = {key: known.get(key) or dict(zip(labels, key, strict=True)) for key in keys}
        self._keys, self._targets = keys, tuple(map(self._label_sets.__getitem__, keys))
        return self._targets

    def _history_pays(self, signal: int) -> bool:
        """Without {selector} a history read returns every target's window: worth it only when the
        rows need it for certain (a shard's own targets, a signal being re-read), not for new pods,
        whose older samples exist only if they arrived later than ``reread_steps``."""
        narrowable = "{selector}" in self._templates[self.signals[signal]]
        return narrowable or self._hashed or signal in self._stale

    def _roll(self, end: float) -> tuple[RollingWindow, int]:
        """The window moved to ``end`` and how many newest columns to (re-)read for every target."""
        settings, window = self._settings, self._window
        sharded = self._hashed
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

    def _run(self, window: RollingWindow, reads: list[_Read]) -> list[tuple[int, QueryError, bool]]:
        """Run the reads in parallel and write each answer into the window as soon as it is in
        (rows are sorted when read, so the order they arrive in does not matter), so that the
        decoded whole-window answers of a full fetch never wait in memory together; returns
        the errors (see _apply)."""
        errors = []
        with collection_paused():
            pending = {self._pool.submit(self._read, window, read): read for read in reads}
            for future in as_completed(set(pending)):  # drops each future once yielded
                errors += self._apply(window, pending.pop(future), future.result())
        return errors

    def _read(self, window: RollingWindow, read: _Read) -> _Outcome:
        """Query one signal for ``read`` and key its series (the window is not touched here)."""
        signal = self.signals[read.signal]
        template = self._templates[signal]
        selector = ""
        if read.rows is not None and "{selector}" in template:
            selector = matcher([window.keys[i] for i in read.rows], self._settings.target_labels)
        query = self._settings.fill(template, self._shard_selector + selector)
        start, end = window.timestamps[read.first], window.timestamps[read.last]
        whole = read.rows is None and read.last - read.first > self._settings.reread_steps
        known, plan = self._plans.get(read.signal, (None, None)) if read.rows is None else (None, None)
        try:
            with self._whole if whole else nullcontext():
                result = self._client.query_range(query, start, end, self._settings.step, known)
        except QueryFailed as exc:
            log.warning("query failed", extra={"signal": signal, "reason": exc.reason, "error": str(exc)})
            return _Outcome(error=QueryError(signal, exc.reason, str(exc)))
        if plan is None or result.labels is not plan.labels:
            plan = self._plan(signal, template, result, read, window)
            if read.rows is None and result.label_text is not None:
                # Kept for the next answer: the label text and the plan, not the label objects
                # (~13 MB at 10,000 targets of 4 signals). An answer with the same text gets the
                # placeholder as its labels, which tells by identity that the plan holds.
                placeholder: list[dict] = []
                plan = replace(plan, labels=placeholder)
                self._plans[read.signal] = (
                    replace(Matrix.empty(), labels=placeholder, label_text=result.label_text),
                    plan,
                )
        return _outcome(plan, result)

    def _plan(self, signal: str, template: str, result: Matrix, read: _Read, window: RollingWindow) -> _Plan:
        """Key an answer's series: the targets they are for, those kept (every target label
        present, this shard's, wanted by a narrowed read, the first of duplicates)."""
        keys, unlabelled = target_keys(result, self._settings.target_labels)
        if read.rows is None:  # narrowed reads see a subset: they would flap the clash state
            self._clashes.check(signal, self._settings.fill(template), result.labels, keys)
        if unlabelled and unlabelled == len(keys):
            labels = ", ".join(self._settings.target_labels)
            message = f"no series carries all target labels ({labels})"
            return _Plan(result.labels, [], None, False, QueryError(signal, "missing_labels", message))
        shard = self._settings.shard
        wanted = None if read.rows is None else {window.keys[i] for i in read.rows}
        if wanted is None and shard.count == 1 and not unlabelled and len(set(keys)) == len(keys):
            return _Plan(result.labels, keys, None, False)  # the rule: every series a target of its own
        mine = self._shard_members(keys, whole=read.rows is None) if shard.count > 1 else None
        kept, seen, duplicated = [], set(), False
        for i, key in enumerate(keys):
            if key is None or (wanted is not None and key not in wanted):
                continue
            if mine is not None and not mine[key]:
                continue
            if key in seen:
                duplicated = True
                continue
            seen.add(key)
            kept.append(i)
        every = len(kept) == len(keys)
        chosen = None if every else np.asarray(kept, dtype=np.intp)
        return _Plan(result.labels, [keys[i] for i in kept], chosen, duplicated)

    def _shard_members(self, keys: Sequence[Key | None], whole: bool) -> dict[Key, bool]:
        """Whether each key is this shard's: hashed once while the target lasts, not per series
        per cycle (a shard's plans see every target of the cluster). A whole read's keys become
        the ones remembered, so the memory is bounded by the targets that exist."""
        known = self._shards
        members = {
            key: known[key] if key in known else is_mine(key, self._settings)
            for key in keys
            if key is not None
        }
        if whole:
            self._shards = members
        return members

    def _apply(
        self, window: RollingWindow, read: _Read, outcome: _Outcome
    ) -> list[tuple[int, QueryError, bool]]:
        """Write what a read returned into its columns; the errors as (signal index, error, hard).

        A hard error (the query failed) leaves the signal unread; a soft one (duplicate or
        unreadable series) only says that some series were left out."""
        signal = self.signals[read.signal]
        if outcome.error is not None:
            return [(read.signal, outcome.error, True)]
        errors = []
        window.clear(read.signal, read.first, read.last, read.rows)
        rows = np.asarray(window.add(outcome.keys), dtype=np.intp)
        if len(rows):
            window.put(
                read.signal,
                np.repeat(rows, outcome.counts),
                outcome.timestamps,
                outcome.values,
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

    def read_history(
        self,
        timestamps: np.ndarray,
        only: Collection[Key] | None = None,
        read_from: int = 0,
        include: Collection[Key] = (),
    ) -> tuple[np.ndarray, list[tuple[str, ...]]]:
        """Every signal on an earlier grid (the anomaly warm start), of every target or ``only``
        these, queried from ``timestamps[read_from]`` on (see read_range); raises QueryFailed."""
        return read_range(
            self._client,
            self._settings,
            timestamps,
            lambda signal: f"history of signal {signal!r}",
            only=only,
            read_from=read_from,
            include=include,
        )

    def close(self) -> None:
        """Abandon the queries in flight (shutdown); their threads end at once."""
        self._client.close()
        self._pool.shutdown(wait=False)
