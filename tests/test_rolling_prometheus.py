"""Against a real Prometheus: the rolled window equals a full refetch after any sequence of cycles.

Prometheus is backfilled (promtool) with pods that start and stop mid-window and pause
for a few steps, then the real source rolls its window over that history on a clock
that jumps by random amounts (zero, one step, several, more than the window), for one
shard or several; after every cycle a fresh source's full fetch must give the same
frame. Late samples cannot be made to arrive late in a backfilled TSDB: the in-memory
test (test_rolling_window.py) covers those.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

import numpy as np
import pytest
from backfill import create_blocks
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from servers import PrometheusServer, promtool_bin

from exporter.config import Settings
from exporter.sources.prometheus import PrometheusSource, shard_of

STEP = 10
POINTS = 12
STEPS = 90  # backfilled
BASE = (int(time.time()) // 86400 - 2) * 86400  # two days ago, on a day boundary
# last_over_time over just under a step: a pod that pauses is absent at once (no 5 min lookback).
SIGNALS = {
    "a": "last_over_time(roll_a{{selector}}[9s])",
    "b": "last_over_time(roll_b{{selector}}[9s])",
    "c": "last_over_time(roll_c[9s])",  # no {selector}: never narrowed
}


def lifetimes(pods: int, rng: np.random.Generator) -> dict[str, set[int]]:
    """Per pod, the steps it reports: some all along, some start or stop mid-way, some pause."""
    alive = {}
    for i in range(pods):
        first = int(rng.integers(-10, STEPS // 2)) if i % 3 else 0
        last = int(rng.integers(first + 5, STEPS + 20))
        steps = set(range(max(first, 0), min(last, STEPS)))
        if i % 4 == 1:
            pause = int(rng.integers(first + 2, last))
            steps -= set(range(pause, pause + int(rng.integers(1, 6))))
        alive[f"pod-{i}"] = steps
    return alive


@pytest.fixture(scope="module")
def churning(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    workdir = tmp_path_factory.mktemp("rolling")
    rng = np.random.default_rng(7)
    alive = lifetimes(30, rng)
    lines = []
    for signal, share in (("a", 1.0), ("b", 0.7), ("c", 0.5)):
        lines.append(f"# TYPE roll_{signal} gauge")
        for pod, steps in alive.items():
            if rng.random() > share:
                continue
            namespace = f"ns{int(pod.split('-')[1]) % 2}"
            for step in sorted(steps):
                value = round(float(rng.random()), 4)
                lines.append(
                    f'roll_{signal}{{namespace="{namespace}",pod="{pod}"}} {value} {BASE + step * STEP}'
                )
    lines.append("# EOF")
    openmetrics = workdir / "history.om"
    openmetrics.write_text("\n".join(lines) + "\n")
    create_blocks(promtool_bin(), openmetrics, workdir / "data")
    with PrometheusServer(workdir) as server:
        yield server


def source_settings(url: str, shard: tuple[int, int], full_refresh: float) -> Settings:
    return Settings.model_validate(
        {
            "prometheus": {"url": url},
            "step": STEP,
            "lookback": STEP * POINTS,
            "interval": STEP,
            "stale_after": STEP * 10,
            "signals": {"cpu": None, "memory": None, "latency": None, "errors": None, **SIGNALS},
            "full_refresh": full_refresh,
            "shard": {"index": shard[0], "count": shard[1]},
        }
    )


def refetch(url: str, shard: tuple[int, int], now: float) -> tuple[np.ndarray, tuple]:
    fresh = PrometheusSource(source_settings(url, shard, 1e9), clock=lambda: now)
    try:
        fetch = fresh.fetch()
    finally:
        fresh.close()
    assert fetch.errors == ()
    return fetch.frame.values, fetch.frame.targets


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    start=st.integers(0, 30),
    advances=st.lists(st.integers(0, POINTS + 2), min_size=2, max_size=8),
    shard=st.sampled_from([(0, 1), (0, 2), (1, 3)]),
    full_refresh=st.sampled_from([1e9, STEP * 5.0]),
)
def test_rolled_frame_equals_a_full_refetch_on_a_real_prometheus(
    churning: PrometheusServer, start: int, advances: list[int], shard: tuple[int, int], full_refresh: float
) -> None:
    now = [BASE + (POINTS + start) * STEP + 0.5]
    rolling = PrometheusSource(source_settings(churning.url, shard, full_refresh), clock=lambda: now[0])
    try:
        for advance in advances:
            now[0] += advance * STEP
            fetch = rolling.fetch()
            assert fetch.errors == ()
            expected, targets = refetch(churning.url, shard, now[0])
            assert fetch.frame.targets == targets
            np.testing.assert_array_equal(fetch.frame.values, expected)
            assert all(shard_of(tuple(t.values()), shard[1]) == shard[0] for t in targets)
    finally:
        rolling.close()


def test_the_backfill_has_churn_to_roll_over(churning: PrometheusServer) -> None:
    """Guards the property test above against a history in which nothing ever changes."""
    seen = [
        {tuple(t.values()) for t in refetch(churning.url, (0, 1), BASE + (POINTS + k) * STEP + 0.5)[1]}
        for k in range(0, STEPS - POINTS, 5)
    ]
    assert any(later - earlier for earlier, later in itertools.pairwise(seen))
    assert any(earlier - later for earlier, later in itertools.pairwise(seen))


def test_every_pod_is_scored_by_exactly_one_of_three_shards(churning: PrometheusServer) -> None:
    now = BASE + (POINTS + 20) * STEP + 0.5
    _, everyone = refetch(churning.url, (0, 1), now)
    shards = [refetch(churning.url, (index, 3), now)[1] for index in range(3)]
    assert sorted(t["pod"] for part in shards for t in part) == sorted(t["pod"] for t in everyone)
