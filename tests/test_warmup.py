"""The anomaly statistics survive a restart: the real daemon, killed and started again against a
real Prometheus that holds the targets' history, scores its next cycles as an uninterrupted
daemon does; a daemon without the warm start does not, and one whose history query fails says so.

Prometheus is backfilled (promtool) with simulated series from ten minutes before the test to
a few minutes after it, at 1 s steps, so the daemons have both history and a present. The
uninterrupted daemon is the same Daemon class driven in-process by a clock that visits every
step from the first sample on.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from backfill import SIGNAL_QUERIES, create_blocks, write_openmetrics
from prometheus_client.parser import text_string_to_metric_families
from servers import TEST_SPEED, DaemonServer, PrometheusServer, promtool_bin

from exporter.config import BOOTSTRAP_MODEL, Settings
from exporter.models.bundle import load_bundle
from exporter.service.daemon import Daemon
from exporter.snapshot import Snapshot
from exporter.sources.prometheus import PrometheusSource
from exporter.sources.simulate import simulate_history

MODEL = BOOTSTRAP_MODEL
PAST, FUTURE = 600, 900  # seconds of backfilled history before and after the test starts
TARGETS = 5


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    simulated = simulate_history(targets=TARGETS, steps=PAST + FUTURE, seed=11, incident_rate=1.0)
    start = math.floor(time.time()) - PAST
    frame = dataclasses.replace(simulated.frame, timestamps=start + np.arange(PAST + FUTURE, dtype=float))
    workdir = tmp_path_factory.mktemp("recorded")
    server = PrometheusServer(workdir)
    openmetrics = workdir / "history.om"
    write_openmetrics(dataclasses.replace(simulated, frame=frame), openmetrics)
    create_blocks(promtool_bin(), openmetrics, server.data_path)
    openmetrics.unlink()
    server.first_sample = float(start)
    with server:
        yield server


def config(prometheus_url: str, **anomaly: object) -> dict:
    return {
        "prometheus": {"url": prometheus_url, "timeout": "5s", "retries": 0},
        **TEST_SPEED,
        "signals": SIGNAL_QUERIES,
        "anomaly": {"warmup": "1h", "warmup_chunk": "5m", **anomaly},
    }


class Uninterrupted:
    """The in-process daemon that saw every step since the first sample, cycle by cycle."""

    def __init__(self, prometheus: PrometheusServer) -> None:
        settings = Settings.model_validate(config(prometheus.url, warmup=0))
        self.now = prometheus.first_sample
        clock = lambda: self.now + 0.5  # noqa: E731 (a clock, read by source and daemon)
        self.daemon = Daemon(
            settings, PrometheusSource(settings, clock=clock), load_bundle(MODEL), clock=clock
        )
        self.snapshots: dict[float, Snapshot] = {}

    def at(self, data_time: float) -> Snapshot:
        while self.now < data_time:
            self.now += 1.0
            snapshot = self.daemon.run_cycle()
            self.snapshots[snapshot.data_time] = snapshot
        return self.snapshots[data_time]


def observe(daemon: DaemonServer) -> tuple[float, dict[str, float], dict[tuple[str, str, str], float]]:
    """(data time, anomaly_score per pod, signal_expected per (pod, signal, bound)) of one cycle:
    /metrics read between two API reads that name the same cycle."""
    while True:
        before = daemon.get("/api/v1/targets").json()
        metrics = daemon.get("/metrics").text
        after = daemon.get("/api/v1/targets").json()
        if before.get("data_time") is not None and before["data_time"] == after.get("data_time"):
            break
        time.sleep(0.2)
    anomaly = {row["labels"]["pod"]: row["anomaly_score"] for row in after["targets"]}
    expected = {
        (s.labels["pod"], s.labels["signal"], s.labels["bound"]): s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
        if s.name == "signal_expected"
    }
    return after["data_time"], anomaly, expected


def relative_gap(ours: dict, theirs: Snapshot) -> float:
    """Largest |difference| of the expected means, relative to the band's half-width."""
    bands = theirs.bands
    worst = 0.0
    for row, target in enumerate(theirs.targets):
        for column, signal in enumerate(bands.signals):
            _, mean, upper = bands.expected[row, column]
            key = (target["pod"], signal, "mean")
            if np.isfinite(mean) and key in ours:
                worst = max(worst, abs(ours[key] - mean) / max(upper - mean, 1e-12))
    return worst


def settled(daemon: DaemonServer) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if (daemon.metric_value("failure_predictor_anomaly_warmed_targets_total") or 0) >= TARGETS:
            return
        time.sleep(0.5)
    pytest.fail(f"the warm-up never finished\n{daemon.log_tail()}")


def test_a_restarted_daemon_scores_as_an_uninterrupted_one_and_a_cold_one_does_not(
    recorded: PrometheusServer, tmp_path: Path
) -> None:
    first = DaemonServer(tmp_path / "first", config(recorded.url))
    first.start()
    settled(first)
    first._process.kill()  # SIGKILL: nothing is saved on the way down
    first._process.wait()
    first._process = None
    restarted = DaemonServer(tmp_path / "restarted", config(recorded.url))
    cold = DaemonServer(tmp_path / "cold", config(recorded.url, warmup=0))
    with restarted, cold:
        assert restarted.get("/metrics").ok  # answers while the warm-up runs in the background
        settled(restarted)
        reference = Uninterrupted(recorded)
        gaps, cold_gaps, same_scores = [], [], []
        for _ in range(5):
            data_time, anomaly, expected = observe(restarted)
            truth = reference.at(data_time)
            gaps.append(relative_gap(expected, truth))
            scores = dict(zip((t["pod"] for t in truth.targets), truth.anomaly.tolist(), strict=True))
            same_scores.append(max(abs(anomaly[pod] - scores[pod]) for pod in scores))
            cold_time, _, cold_expected = observe(cold)
            cold_gaps.append(relative_gap(cold_expected, reference.at(cold_time)))
            time.sleep(1.0)
    assert max(gaps) < 0.05, gaps  # the restarted daemon's band sits where the uninterrupted one's does
    assert max(same_scores) < 0.05, same_scores
    assert min(cold_gaps) > 0.2, cold_gaps  # without the warm start it would not (the test can fail)


def test_a_failing_history_query_leaves_the_cold_start_and_says_so(
    recorded: PrometheusServer, tmp_path: Path
) -> None:
    broken = config(recorded.url)
    broken["signals"] = {**SIGNAL_QUERIES, "cpu": "sim_cpu[5m]"}  # a range query refuses a range vector
    with DaemonServer(tmp_path / "broken", broken) as daemon:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            errors = daemon.metric_value("failure_predictor_anomaly_warmup_errors_total", reason="promql")
            if errors:
                break
            time.sleep(0.5)
        assert errors and errors >= 1, daemon.log_tail()
        assert "anomaly warm-up failed" in daemon.log_path.read_text()
        assert daemon.metric_value("failure_predictor_targets") == TARGETS  # still scoring, cold
