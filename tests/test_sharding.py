"""Shards split the targets: every target is scored by exactly one of several replicas."""

from __future__ import annotations

import subprocess
import sys

import pytest
from servers import PrometheusServer
from workload import Workload

from exporter.config import ConfigError, Settings, load_settings
from exporter.sources.prometheus import PrometheusSource, is_mine, shard_matcher, shard_of


def shard_settings(prometheus: PrometheusServer, index: int, count: int, by: str | None = None) -> Settings:
    return Settings.model_validate(
        {
            "prometheus": {"url": prometheus.url},
            "step": "1s",
            "lookback": "30s",
            "rate_window": "10s",
            "interval": "1s",
            "stale_after": "5s",
            "shard": {"index": index, "count": count, "by": by},
        }
    )


def scored(
    prometheus: PrometheusServer, index: int, count: int, by: str | None = None
) -> set[tuple[str, ...]]:
    source = PrometheusSource(shard_settings(prometheus, index, count, by))
    try:
        frame = source.fetch().frame
    finally:
        source.close()
    return {(t["namespace"], t["pod"]) for t in frame.targets}


@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_every_target_lands_in_exactly_one_shard(
    prometheus: PrometheusServer, workload: Workload, count: int
):
    prometheus.wait_for('count_over_time(up{job="workload"}[10s]) >= 4', timeout=20)
    everything = scored(prometheus, 0, 1)
    shards = [scored(prometheus, index, count) for index in range(count)]
    assert {pod for _, pod in everything} >= set(workload.pods)
    assert sum(len(s) for s in shards) == len(everything)
    assert set().union(*shards) == everything
    if count in (2, 3):
        assert all(shards), "with 20 pods no shard of two or three should be empty"


@pytest.mark.parametrize("count", [2, 3])
def test_shards_by_the_pod_name_split_the_targets_and_prometheus_sends_each_only_its_own(
    prometheus: PrometheusServer, workload: Workload, count: int
):
    prometheus.wait_for('count_over_time(up{job="workload"}[10s]) >= 4', timeout=20)
    everything = scored(prometheus, 0, 1)
    shards = [scored(prometheus, index, count, by="pod") for index in range(count)]
    assert sum(len(s) for s in shards) == len(everything)
    assert set().union(*shards) == everything
    assert all(shards), "pods app-0 .. app-19 end in every digit: no shard of two or three is empty"
    for index, mine in enumerate(shards):  # what the real Prometheus returns to the replica's own selector
        settings = shard_settings(prometheus, index, count, by="pod")
        query = settings.fill(settings.signal_templates["memory"], shard_matcher(settings))
        answered = {(s["metric"]["namespace"], s["metric"]["pod"]) for s in prometheus.query(query)}
        assert answered and answered <= mine
        assert all(is_mine(key, settings) for key in answered)


def test_shard_by_is_a_target_label_and_needs_selectors():
    with pytest.raises(ValueError, match=r"shard\.by"):
        Settings.model_validate({"shard": {"count": 2, "by": "node"}})
    with pytest.raises(ValueError, match="selector"):
        Settings.model_validate(
            {"shard": {"count": 2, "by": "pod"}, "signals": {"cpu": "sum by ({by}) (up)"}}
        )


def test_shard_of_is_stable_across_processes():
    """Python's hash() is salted per process; the shard must not be."""
    code = "from exporter.sources.prometheus import shard_of; print(shard_of(('shop', 'cart-1'), 7))"
    runs = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        for _ in range(2)
    }
    assert runs == {f"{shard_of(('shop', 'cart-1'), 7)}\n"}


@pytest.mark.parametrize("shard", [{"index": 3, "count": 3}, {"index": -1, "count": 2}, {"count": 0}])
def test_shard_index_must_be_below_count(shard):
    with pytest.raises(ConfigError, match="shard"):
        load_settings(
            None,
            {
                "FAILURE_PREDICTOR_SHARD__INDEX": str(shard.get("index", 0)),
                "FAILURE_PREDICTOR_SHARD__COUNT": str(shard["count"]),
            },
        )
