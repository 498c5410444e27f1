"""A rolling update is not blind: pods renamed by a rollout (same Deployment, new pod-template
hash and suffix) start from their workload's anomaly statistics and score from their first
cycle. Real Prometheus, backfilled with the old pods until the rollout and the new ones after;
the daemon is driven in-process by a clock that visits every step."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator

import numpy as np
import pytest
from backfill import SIGNAL_QUERIES, create_blocks, write_openmetrics
from prometheus_client import CollectorRegistry
from servers import TEST_SPEED, PrometheusServer, promtool_bin

from exporter.config import BOOTSTRAP_MODEL, Settings
from exporter.frame import Frame
from exporter.models.bundle import load_bundle
from exporter.service.daemon import Daemon
from exporter.snapshot import Snapshot
from exporter.sources.prometheus import PrometheusSource
from exporter.sources.simulate import simulate_history

MODEL = BOOTSTRAP_MODEL
START, STEPS, ROLLOUT = 1_700_000_000.0, 200, 150  # the rollout replaces every pod at step 150
OLD = ("cart-7d9f8b6c4-x2k4q", "cart-7d9f8b6c4-p9z8m", "search-5f6c7d8e9a-qq1ww")
NEW = ("cart-84c5d6f7b9-a1b2c", "cart-84c5d6f7b9-d3e4f", "search-6a7b8c9d0e-zz9yy")
SPIKE = 5.0  # the first sample of the first new cart pod: five times its CPU


@pytest.fixture(scope="module")
def rolled_out(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    simulated = simulate_history(targets=len(OLD), steps=STEPS, seed=3, incident_rate=0.0, realistic=False)
    values = np.full((2 * len(OLD), STEPS, 4), np.nan)
    values[: len(OLD), :ROLLOUT] = simulated.frame.values[:, :ROLLOUT]
    values[len(OLD) :, ROLLOUT:] = simulated.frame.values[:, ROLLOUT:]
    values[len(OLD), ROLLOUT, 0] *= SPIKE
    targets = tuple({"namespace": "shop", "pod": pod} for pod in OLD + NEW)
    frame = Frame(values, targets, START + np.arange(STEPS, dtype=float), simulated.frame.signals)
    failed = np.zeros(values.shape[:2], dtype=bool)
    workdir = tmp_path_factory.mktemp("rollout")
    server = PrometheusServer(workdir)
    openmetrics = workdir / "history.om"
    write_openmetrics(dataclasses.replace(simulated, frame=frame, failed=failed), openmetrics)
    create_blocks(promtool_bin(), openmetrics, server.data_path)
    with server:
        yield server


def first_cycle_after_rollout(prometheus: PrometheusServer, **anomaly: object) -> tuple[Snapshot, Daemon]:
    settings = Settings.model_validate(
        {
            "prometheus": {"url": prometheus.url},
            **TEST_SPEED,
            "stale_after": "1h",
            "signals": SIGNAL_QUERIES,
            "anomaly": {"warmup": 0, **anomaly},
        }
    )
    now = [START]
    clock = lambda: now[0] + 0.5  # noqa: E731
    source = PrometheusSource(settings, clock=clock)
    daemon = Daemon(settings, source, load_bundle(MODEL), registry=CollectorRegistry(), clock=clock)
    for step in range(ROLLOUT + 1):
        now[0] = START + step
        snapshot = daemon.run_cycle()
    return snapshot, daemon


def new_pods(snapshot: Snapshot) -> np.ndarray:
    """Rows of the new pods (the old ones' last samples linger for Prometheus's lookback delta,
    as a surge rollout's old pods would)."""
    rows = np.array([row for row, t in enumerate(snapshot.targets) if t["pod"] in NEW])
    assert len(rows) == len(NEW)
    return rows


def test_pods_of_a_rollout_score_from_their_first_cycle_with_their_workloads_statistics(
    rolled_out: PrometheusServer,
) -> None:
    snapshot, daemon = first_cycle_after_rollout(rolled_out)
    rows = new_pods(snapshot)
    spiked = next(row for row in rows if snapshot.targets[row]["pod"] == NEW[0])
    assert (snapshot.bands.history[rows] >= ROLLOUT - 1).all()  # each new pod carries its workload's history
    assert np.isfinite(snapshot.bands.expected[rows]).all()  # and a band from its first cycle
    assert snapshot.anomaly[spiked] > 0.7  # the spike on the first sample is seen at once
    others = [row for row in rows if row != spiked]
    assert snapshot.anomaly[others].max() < snapshot.anomaly[spiked]
    # No kube-state-metrics here: workload_source "auto" fell back to the pattern, and says so.
    assert daemon.registry.get_sample_value("failure_predictor_workload_owner_fallback") == 1


@pytest.mark.parametrize(
    ("owners", "reason"),
    [({}, "absent"), ({"query": "kube_pod_owner{{selector}} +"}, "promql")],
    ids=["kube_pod_owner absent", "owner query broken"],
)
def test_owners_expected_but_unknown_fall_back_to_the_pattern_and_say_so_once(
    rolled_out: PrometheusServer, caplog: pytest.LogCaptureFixture, owners: dict, reason: str
) -> None:
    with caplog.at_level(logging.INFO, logger="exporter.sources.owners"):
        snapshot, daemon = first_cycle_after_rollout(
            rolled_out, workload_source="kube_pod_owner", owners=owners
        )
    rows = new_pods(snapshot)
    assert (snapshot.bands.history[rows] >= ROLLOUT - 1).all()  # inherited by the pattern
    assert daemon.registry.get_sample_value("failure_predictor_workload_owner_fallback") == 1
    # Asked at start and when the new pods appeared: both counted, logged once, as a warning.
    errors = daemon.registry.get_sample_value(
        "failure_predictor_workload_owner_errors_total", {"reason": reason}
    )
    assert errors == 2
    [record] = caplog.records
    assert record.levelno == logging.WARNING and record.reason == reason


def test_without_workloads_the_renamed_pods_start_blind(rolled_out: PrometheusServer) -> None:
    snapshot, _ = first_cycle_after_rollout(rolled_out, workload_label="")
    rows = new_pods(snapshot)
    assert (snapshot.bands.history[rows] <= 1).all()
    assert not np.isfinite(snapshot.bands.expected[rows]).any()
    assert snapshot.anomaly[rows].max() == 0.0
