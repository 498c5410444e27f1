"""The rolled window equals a full refetch, whatever happened between cycles.

These tests drive the real PrometheusSource with a client that answers range
queries from an in-memory set of samples (each with the time it becomes visible,
so late samples are real), because a Prometheus cannot be made to receive a sample
late and on demand; tests/test_rolling_prometheus.py checks the same against a real,
backfilled Prometheus.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.config import Settings
from exporter.sources.matrix import Matrix, decode_matrix
from exporter.sources.prometheus import PrometheusSource, QueryFailed, shard_of
from exporter.sources.window import RollingWindow

STEP = 10.0
POINTS = 12
START = 1_700_000_000.0
SIGNALS = {"a": "a{{selector}}", "b": "b{{selector}}", "c": "c"}  # c cannot be narrowed
_MATCHER = re.compile(r'(\w+)=~"([^"]*)"')


@dataclass
class Store:
    """Samples per (signal, key): time -> (value, visible from)."""

    samples: dict[tuple[str, tuple[str, str]], dict[float, tuple[float, float]]] = field(default_factory=dict)
    now: float = START
    failing: set[str] = field(default_factory=set)
    queries: list[tuple[str, float, float, bool]] = field(default_factory=list)
    narrowed_to: list[set[str]] = field(default_factory=list)  # pods each narrowed query asked for

    def add(self, signal: str, key: tuple[str, str], at: float, value: float, delay: float) -> None:
        self.samples.setdefault((signal, key), {})[at] = (value, at + delay)


class StoreClient:
    """Answers ``query_range`` like Prometheus would from ``store`` at ``store.now``."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def close(self) -> None:
        pass

    def query_range(
        self, query: str, start: float, end: float, step: float, known: Matrix | None = None
    ) -> Matrix:
        """The answer in Prometheus' JSON layout, decoded as the real client decodes it (label
        objects reused from ``known`` when unchanged)."""
        signal = query.split("{", 1)[0]
        if signal in self.store.failing:
            raise QueryFailed("http_5xx", "HTTP 503")
        allowed = {label: set(values.split("|")) for label, values in _MATCHER.findall(query)}
        self.store.queries.append((signal, start, end, bool(allowed)))
        if allowed:
            self.store.narrowed_to.append(allowed["pod"])
        grid = np.arange(start, end + step / 2, step)
        result = []
        for (name, key), series in sorted(self.store.samples.items()):
            metric = {"namespace": key[0], "pod": key[1]}
            if name != signal or any(metric[label] not in ok for label, ok in allowed.items()):
                continue
            seen = [
                [t, repr(series[t][0])]
                for t in grid.tolist()
                if t in series and series[t][1] <= self.store.now
            ]
            if seen:
                result.append({"metric": metric, "values": seen})
        answer = {"status": "success", "data": {"resultType": "matrix", "result": result}}
        decoded = decode_matrix(json.dumps(answer, separators=(",", ":")).encode(), known)
        assert decoded is not None, "the fast decoder reads Prometheus' layout"
        return decoded


def source_settings(shard_index: int = 0, shard_count: int = 1, full_refresh: float = 1e9) -> Settings:
    return Settings.model_validate(
        {
            "step": STEP,
            "lookback": STEP * POINTS,
            "interval": STEP,
            "stale_after": STEP * 10,
            "signals": {"cpu": None, "memory": None, "latency": None, "errors": None, **SIGNALS},
            "full_refresh": full_refresh,
            "reread_steps": 2,
            "shard": {"index": shard_index, "count": shard_count},
            "anomaly": {"workload_source": "pattern"},  # the window alone: no owner query to answer
        }
    )


def pods() -> st.SearchStrategy:
    """A pod: its namespace/name, the steps it lives, which signals it reports, how late its samples arrive."""
    return st.tuples(
        st.sampled_from(["ns1", "ns2"]),
        st.integers(0, 9).map(lambda i: f"pod-{i}"),
        st.integers(-POINTS, 40),  # first step (negative: already running before the first cycle)
        st.integers(1, 30),  # lifetime in steps
        st.sets(st.sampled_from(sorted(SIGNALS)), min_size=1),
        st.integers(0, 2),  # arrival delay in steps: up to reread_steps
        st.integers(0, 5),  # a gap of this many steps in the middle of its life
    )


def fill(store: Store, population: list) -> None:
    rng = np.random.default_rng(0)
    for namespace, pod, first, life, signals, delay, gap in population:
        middle = first + life // 2
        for step in range(first, first + life):
            if middle <= step < middle + gap:
                continue
            for signal in signals:
                store.add(signal, (namespace, pod), START + step * STEP, float(rng.random()), delay * STEP)


def full_refetch(store: Store, shard: tuple[int, int]) -> tuple[np.ndarray, tuple]:
    fresh = PrometheusSource(source_settings(*shard), client=StoreClient(store), clock=lambda: store.now)
    try:
        frame = fresh.fetch().frame
    finally:
        fresh.close()
    return frame.values, frame.targets


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    population=st.lists(pods(), max_size=12),
    advances=st.lists(st.integers(0, POINTS + 3), min_size=1, max_size=12),
    failures=st.lists(st.sets(st.sampled_from(sorted(SIGNALS))), max_size=12),
    shard=st.sampled_from([(0, 1), (0, 2), (1, 2), (2, 3)]),
    full_refresh=st.sampled_from([1e9, STEP * 4]),
)
def test_rolled_frame_equals_a_full_refetch_after_churn_gaps_late_samples_and_failures(
    population, advances, failures, shard, full_refresh
) -> None:
    store = Store()
    fill(store, population)
    rolling = PrometheusSource(
        source_settings(*shard, full_refresh=full_refresh), client=StoreClient(store), clock=lambda: store.now
    )
    try:
        for cycle, advance in enumerate(advances):
            store.now += advance * STEP
            store.failing = failures[cycle] if cycle < len(failures) else set()
            fetch = rolling.fetch()
            failed = {error.signal for error in fetch.errors}
            assert failed == store.failing
            store.failing = set()
            expected, targets = full_refetch(store, shard)
            if failed:
                # A signal that failed this cycle is NaN; the others are what a refetch gives.
                keep = [i for i, s in enumerate(fetch.frame.signals) if s not in failed]
                rows = [targets.index(t) for t in fetch.frame.targets]
                np.testing.assert_array_equal(fetch.frame.values[:, :, keep], expected[rows][:, :, keep])
                assert np.isnan(fetch.frame.values[:, :, [i for i in range(3) if i not in keep]]).all()
                continue
            assert fetch.frame.targets == targets
            np.testing.assert_array_equal(fetch.frame.values, expected)
            if shard[1] > 1:
                assert all(shard_of(tuple(t.values()), shard[1]) == shard[0] for t in targets)
    finally:
        rolling.close()


def test_a_quiet_cycle_reads_only_the_newest_steps_of_every_signal() -> None:
    store = Store()
    fill(store, [("ns1", f"pod-{i}", -POINTS, 100, {"a", "b", "c"}, 0, 0) for i in range(5)])
    source = PrometheusSource(source_settings(), client=StoreClient(store), clock=lambda: store.now)
    source.fetch()
    store.queries.clear()
    store.now += STEP
    source.fetch()
    # One new step plus two re-read ones, one query per signal, nothing narrowed.
    spans = sorted(
        (signal, round((end - start) / STEP) + 1, narrowed) for signal, start, end, narrowed in store.queries
    )
    assert spans == [("a", 3, False), ("b", 3, False), ("c", 3, False)]


def test_a_pod_that_appears_mid_window_gets_its_history_in_one_narrowed_query_per_signal() -> None:
    store = Store()
    fill(store, [("ns1", f"pod-{i}", -POINTS, 100, {"a", "b", "c"}, 0, 0) for i in range(5)])
    source = PrometheusSource(source_settings(), client=StoreClient(store), clock=lambda: store.now)
    source.fetch()
    # Two pods whose first samples arrive late (already 5 steps old when first seen).
    fill(store, [("ns2", "late-1", -4, 100, {"a", "b"}, 0, 0), ("ns2", "late-2", -4, 100, {"a", "b"}, 0, 0)])
    store.queries.clear()
    store.now += STEP
    frame = source.fetch().frame
    history = [q for q in store.queries if q[3]]
    assert sorted(q[0] for q in history) == ["a", "b"]  # c has no {selector}: new pods' history is skipped
    expected, targets = full_refetch(store, (0, 1))
    assert frame.targets == targets
    np.testing.assert_array_equal(frame.values[:, :, :2], expected[:, :, :2])


def test_a_shard_reads_history_only_for_its_own_pods() -> None:
    store = Store()
    fill(store, [("ns1", f"pod-{i}", -POINTS, 100, {"a", "b", "c"}, 0, 0) for i in range(10)])
    source = PrometheusSource(source_settings(1, 3), client=StoreClient(store), clock=lambda: store.now)
    frame = source.fetch().frame

    mine = {t["pod"] for t in frame.targets}
    assert mine == {f"pod-{i}" for i in range(10) if shard_of(("ns1", f"pod-{i}"), 3) == 1}
    # Whole-window reads (a and b, narrowable) asked for this shard's pods only; c had to read everyone.
    whole = [q for q in store.queries if round((q[2] - q[1]) / STEP) + 1 > 3]
    assert sorted((q[0], q[3]) for q in whole) == [("a", True), ("b", True), ("c", False)]
    assert store.narrowed_to == [mine, mine]


def test_window_advance_keeps_the_overlap_and_blanks_the_new_columns() -> None:
    window = RollingWindow(points=4, signals=1, step=1.0, end=10.0)
    rows = np.asarray(window.add([("a",), ("b",)]))
    window.put(0, np.repeat(rows, 4), np.tile(np.arange(7.0, 11.0), 2), np.arange(8.0))
    assert window.advance(12.0) == 2
    np.testing.assert_array_equal(window.timestamps, [9.0, 10.0, 11.0, 12.0])
    np.testing.assert_array_equal(window.values[:, :, 0], [[2, 3, np.nan, np.nan], [6, 7, np.nan, np.nan]])
    assert window.advance(20.0) == 8
    assert window.evict() == 2 and window.keys == []
