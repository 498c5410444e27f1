"""The anomaly statistics survive a restart: the real daemon, killed and started again against a
real Prometheus that holds the targets' history, scores its next cycles as an uninterrupted
daemon does; a daemon without the warm start does not, and one whose history query fails says so.

Prometheus is backfilled (promtool) with simulated series from ten minutes before the test to
a few minutes after it, at 1 s steps, so the daemons have both history and a present. The
uninterrupted daemon is the same Daemon class driven in-process by a clock that visits every
step from the first sample on. The replay itself is chunked: many small chunks score as one
whole replay, and a daemon replays each target once, a pod that arrives later alone.
"""

from __future__ import annotations

import dataclasses
import logging
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
from exporter.features import frame_features
from exporter.models.bundle import load_bundle
from exporter.models.normalize import EMBED_STEPS, AnomalyNormaliser, Evaluation
from exporter.service.daemon import Daemon
from exporter.service.warmup import WarmUp
from exporter.snapshot import Snapshot
from exporter.sources.prometheus import PrometheusSource
from exporter.sources.simulate import simulate_history

MODEL = BOOTSTRAP_MODEL
PAST, FUTURE = 600, 900  # seconds of backfilled history before and after the test starts
TARGETS = 5
LATE, ARRIVAL = 2, 400  # the pods that arrive later, and at which step of the recording


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    yield from backfilled(tmp_path_factory.mktemp("recorded"), arrival=0)


@pytest.fixture(scope="module")
def arriving(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    """The same recording, but the last LATE pods have no sample before step ARRIVAL."""
    yield from backfilled(tmp_path_factory.mktemp("arriving"), arrival=ARRIVAL)


def backfilled(workdir: Path, arrival: int) -> Iterator[PrometheusServer]:
    simulated = simulate_history(targets=TARGETS, steps=PAST + FUTURE, seed=11, incident_rate=1.0)
    start = math.floor(time.time()) - PAST
    values = simulated.frame.values.copy()
    values[TARGETS - LATE :, :arrival] = np.nan
    frame = dataclasses.replace(
        simulated.frame, values=values, timestamps=start + np.arange(PAST + FUTURE, dtype=float)
    )
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


def replayed(prometheus: PrometheusServer, chunk: str, now: float) -> AnomalyNormaliser:
    """A warm-up's normaliser, replayed ``chunk`` at a time up to ``now``."""
    settings = Settings.model_validate(config(prometheus.url, warmup="8m", warmup_chunk=chunk))
    clock = lambda: now + 0.5  # noqa: E731
    errors: list[str] = []
    warmup = WarmUp(settings, PrometheusSource(settings, clock=clock).read_history, errors.append, clock)
    make = lambda: AnomalyNormaliser(tuple(settings.queries), EMBED_STEPS, step=settings.step)  # noqa: E731
    assert warmup.begin(make, load_bundle(MODEL))
    warmup.wait()
    finished = warmup.take()
    assert finished is not None, errors
    return finished[0]


def test_a_replay_in_chunks_shorter_than_a_window_scores_as_one_whole_replay(
    recorded: PrometheusServer,
) -> None:
    """7-step chunks (a 60-step window's lead-in spans nine of them) against one 480-step read:
    the statistics after the replay, and the scores of the cycles that follow, are the same."""
    now = recorded.first_sample + PAST
    chunked, whole = replayed(recorded, "7s", now), replayed(recorded, "1h", now)
    settings = Settings.model_validate(config(recorded.url, warmup=0))
    bundle = load_bundle(MODEL)
    clock = [now]
    source = PrometheusSource(settings, clock=lambda: clock[0] + 0.5)
    for _ in range(20):  # the first reads the replayed newest step; the others are new
        frame = source.fetch().frame
        raw = bundle.score(frame_features(frame), explain=False).raw_anomaly
        ours, theirs = (n.cycle(frame.values, frame.targets, raw, frame.end) for n in (chunked, whole))
        assert_same(ours, theirs)
        clock[0] += 1.0
    assert len(chunked) == len(whole) == TARGETS


def assert_same(ours: Evaluation, theirs: Evaluation) -> None:
    np.testing.assert_array_equal(ours.history, theirs.history)
    np.testing.assert_allclose(ours.score, theirs.score, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ours.expected, theirs.expected, rtol=1e-9, atol=1e-12)
    assert np.isfinite(ours.expected).any() and (ours.history > 100).all()  # warmed, not cold


def test_each_target_is_replayed_once_and_a_pod_arriving_later_alone(
    arriving: PrometheusServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The start replays the pods there; the pods that arrive later get one replay of their own,
    of them alone (queries narrowed through {selector}), and no pod is replayed again."""
    signals = {name: query + "{{selector}}" for name, query in SIGNAL_QUERIES.items()}
    settings = Settings.model_validate({**config(arriving.url, warmup="10m"), "signals": signals})
    clock = [arriving.first_sample + ARRIVAL - 100]
    tick = lambda: clock[0] + 0.5  # noqa: E731
    daemon = Daemon(settings, PrometheusSource(settings, clock=tick), load_bundle(MODEL), clock=tick)
    caplog.set_level(logging.INFO, logger="exporter.service.warmup")

    def cycles_until_warmed(targets: int) -> Snapshot:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            snapshot = daemon.run_cycle()
            if daemon.metrics.warmed_targets._value.get() >= targets:
                return snapshot
            time.sleep(0.1)
        pytest.fail(f"never {targets} warmed targets")

    first = cycles_until_warmed(TARGETS - LATE)
    assert len(first.targets) == TARGETS - LATE
    clock[0] = arriving.first_sample + ARRIVAL + 50  # the late pods have 50 samples in Prometheus
    later = cycles_until_warmed(TARGETS)
    for _ in range(5):
        clock[0] += 1.0
        later = daemon.run_cycle()
    replays = [r.targets for r in caplog.records if r.getMessage() == "anomaly warm-up done"]
    assert replays == [TARGETS - LATE, LATE]
    assert len(later.targets) == TARGETS and (later.bands.history > 50).all()
