"""Workloads named by kube-state-metrics' owner series: a rollout whose new pods have names no
pattern relates to the old ones (random names, as custom controllers and some operators give)
is not blind when ``kube_pod_owner`` names their ReplicaSet and ``kube_replicaset_owner`` its
Deployment. Real Prometheus, backfilled with promtool: two Deployments (cart with two pods,
search with one), each rolled out at step ROLLOUT to a new ReplicaSet with new random pod names;
kube-state-metrics names the new search pod one step late (scraped after the pod's own
metrics). The daemon is driven in-process by a clock that visits every step."""

from __future__ import annotations

import random
import string
from collections.abc import Iterator

import numpy as np
import pytest
from backfill import SIGNAL_QUERIES, Series, create_blocks, write_openmetrics
from prometheus_client import CollectorRegistry
from servers import TEST_SPEED, PrometheusServer, promtool_bin

from exporter.config import BOOTSTRAP_MODEL, Settings
from exporter.frame import Frame
from exporter.models.bundle import load_bundle
from exporter.service.daemon import Daemon
from exporter.snapshot import Snapshot
from exporter.sources.prometheus import PrometheusClient, PrometheusSource
from exporter.sources.simulate import History

START, STEPS, ROLLOUT = 1_700_000_000.0, 200, 150
NAMESPACE = "shop"
SIGNALS = ("cpu", "memory", "latency", "errors")
# Per Deployment: its ReplicaSet before and after the rollout, pods, and its level per signal.
DEPLOYMENTS = {
    "cart": ("cart-7d9f8b6c4", "cart-84c5d6f7b9", 2, (0.2, 0.4, 0.05, 0.01)),
    "search": ("search-5f6c7d8e9a", "search-6a7b8c9d0e", 1, (0.7, 0.6, 0.3, 0.02)),
}
SPIKE = 3.0  # the first sample of the first new cart pod: its CPU times three
LATE = "search"  # the Deployment whose new pod's owner series start one step after the pod


def random_names(count: int, seed: int) -> list[str]:
    """Pod names with nothing in common: no workload prefix, no pod-template hash, no suffix."""
    rng = random.Random(seed)
    return ["".join(rng.choices(string.ascii_lowercase + string.digits, k=9)) for _ in range(count)]


def pods_of(deployment: str) -> tuple[list[str], list[str]]:
    """The old and the new pod names of a Deployment."""
    count = DEPLOYMENTS[deployment][2]
    names = random_names(2 * count, seed=sorted(DEPLOYMENTS).index(deployment))
    return names[:count], names[count:]


OLD = {pod: name for name in DEPLOYMENTS for pod in pods_of(name)[0]}  # pod -> Deployment
NEW = {pod: name for name in DEPLOYMENTS for pod in pods_of(name)[1]}


def history() -> tuple[History, dict[str, list[Series]]]:
    """Each pod's signals around its Deployment's levels while it runs, and the owner series
    kube-state-metrics would export: kube_pod_owner per pod, kube_replicaset_owner per ReplicaSet."""
    rng = np.random.default_rng(11)
    pods = list(OLD) + list(NEW)
    values = np.full((len(pods), STEPS, len(SIGNALS)), np.nan)
    alive = np.zeros((len(pods), STEPS), dtype=bool)
    owner_of, owners = {}, []
    for row, pod in enumerate(pods):
        deployment = (OLD | NEW)[pod]
        old_rs, new_rs, _, levels = DEPLOYMENTS[deployment]
        steps = slice(0, ROLLOUT) if pod in OLD else slice(ROLLOUT, STEPS)
        alive[row, steps] = True
        level = np.array(levels)
        values[row, steps] = level * (1 + 0.03 * rng.standard_normal((STEPS, len(SIGNALS))))[steps]
        owner_of[pod] = old_rs if pod in OLD else new_rs
    values[pods.index(next(iter(NEW))), ROLLOUT, 0] *= SPIKE
    for row, pod in enumerate(pods):
        labels = {"namespace": NAMESPACE, "pod": pod, "uid": f"uid-{pod}", "owner_kind": "ReplicaSet"}
        labels |= {"owner_name": owner_of[pod], "owner_is_controller": "true"}
        named = alive[row].copy()
        if pod in NEW and NEW[pod] == LATE:
            named[ROLLOUT] = False
        owners.append((labels, np.where(named, 1.0, np.nan)))
    replicasets = []
    for deployment, (old_rs, new_rs, _, _) in DEPLOYMENTS.items():
        for replicaset in (old_rs, new_rs):
            labels = {"namespace": NAMESPACE, "replicaset": replicaset, "owner_kind": "Deployment"}
            labels |= {"owner_name": deployment, "owner_is_controller": "true"}
            replicasets.append((labels, np.ones(STEPS)))
    targets = tuple({"namespace": NAMESPACE, "pod": pod} for pod in pods)
    frame = Frame(values, targets, START + np.arange(STEPS, dtype=float), SIGNALS)
    failed = np.zeros(values.shape[:2], dtype=bool)
    return History(frame, (), failed), {"kube_pod_owner": owners, "kube_replicaset_owner": replicasets}


@pytest.fixture(scope="module")
def owned(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    workdir = tmp_path_factory.mktemp("owners")
    server = PrometheusServer(workdir)
    openmetrics = workdir / "history.om"
    recorded, owner_series = history()
    write_openmetrics(recorded, openmetrics, owner_series)
    create_blocks(promtool_bin(), openmetrics, server.data_path)
    with server:
        yield server


class CountingClient(PrometheusClient):
    """The real client, counting the owner queries it sends."""

    owner_queries = 0

    def query_labels(self, query: str, at: float) -> list[dict[str, str]]:
        self.owner_queries += 1
        return super().query_labels(query, at)


def run_to_rollout(
    prometheus: PrometheusServer, **anomaly: object
) -> tuple[list[Snapshot], Daemon, CountingClient]:
    """Every cycle from the first step to the second one after the rollout; the last two snapshots."""
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
    client = CountingClient(settings.prometheus)
    source = PrometheusSource(settings, client, clock=clock)
    daemon = Daemon(settings, source, load_bundle(BOOTSTRAP_MODEL), registry=CollectorRegistry(), clock=clock)
    snapshots: list[Snapshot] = []
    for step in range(ROLLOUT + 2):
        now[0] = START + step
        snapshots = [*snapshots[-1:], daemon.run_cycle()]
    return snapshots, daemon, client


def rows_of(snapshot: Snapshot, pods: dict[str, str]) -> dict[str, int]:
    rows = {t["pod"]: row for row, t in enumerate(snapshot.targets) if t["pod"] in pods}
    assert set(rows) == set(pods)
    return rows


def test_random_pod_names_of_a_rollout_inherit_their_deployments_statistics_through_their_owners(
    owned: PrometheusServer,
) -> None:
    (snapshot, after), daemon, client = run_to_rollout(owned)
    rows = rows_of(snapshot, NEW)
    named = {pod: row for pod, row in rows.items() if NEW[pod] != LATE}
    new = np.array(list(named.values()))
    assert (snapshot.bands.history[new] >= ROLLOUT - 1).all()  # each carries its workload's history
    cpu = snapshot.bands.signals.index("cpu")
    for pod, row in named.items():
        # ... its own Deployment's: the band's mean is that Deployment's level, not the other's
        level = DEPLOYMENTS[NEW[pod]][3][0]
        assert snapshot.bands.expected[row, cpu, 1] == pytest.approx(level, rel=0.05)
    spiked = rows[next(iter(NEW))]
    assert snapshot.anomaly[spiked] > 0.7  # the spike on the first sample is seen at once
    assert snapshot.anomaly[[row for row in new if row != spiked]].max() < snapshot.anomaly[spiked]
    # The pod named one step late starts blind, and takes its Deployment's statistics a cycle later.
    [(late_pod, late_row)] = [(pod, row) for pod, row in rows.items() if NEW[pod] == LATE]
    assert snapshot.bands.history[late_row] <= 1
    late_row = rows_of(after, NEW)[late_pod]
    assert after.bands.history[late_row] >= ROLLOUT
    assert after.bands.expected[late_row, cpu, 1] == pytest.approx(DEPLOYMENTS[LATE][3][0], rel=0.05)
    # One owner query at start, one in the cycle the new pods appeared, one more for the pod the
    # answer did not name; none per pod or per cycle.
    assert client.owner_queries == 3
    assert daemon.registry.get_sample_value("failure_predictor_workload_owner_fallback") == 0


def test_with_the_pattern_alone_random_pod_names_start_blind(owned: PrometheusServer) -> None:
    (snapshot, _), _, client = run_to_rollout(owned, workload_source="pattern")
    new = np.array(list(rows_of(snapshot, NEW).values()))
    assert (snapshot.bands.history[new] <= 1).all()
    assert not np.isfinite(snapshot.bands.expected[new]).any()
    assert client.owner_queries == 0


def test_owners_of_another_cluster_are_not_used(owned: PrometheusServer) -> None:
    """anomaly.owners.selector narrows every owner selector: matching nothing, the owners are
    unknown, the random names match no pattern, and the new pods start blind, still scored."""
    (snapshot, _), daemon, _ = run_to_rollout(owned, owners={"selector": 'cluster="elsewhere"'})
    new = np.array(list(rows_of(snapshot, NEW).values()))
    assert (snapshot.bands.history[new] <= 1).all()
    assert np.isfinite(snapshot.probability[new]).all()
    assert daemon.registry.get_sample_value("failure_predictor_workload_owner_fallback") == 1
    errors = daemon.registry.get_sample_value(
        "failure_predictor_workload_owner_errors_total", {"reason": "absent"}
    )
    assert errors == 2


def test_owners_are_asked_again_every_refresh_and_not_more_often(owned: PrometheusServer) -> None:
    _, _, client = run_to_rollout(owned, owners={"refresh": "50s"})
    assert client.owner_queries == 5  # at steps 0, 50, 100, 150 (due, and the rollout's) and 151
