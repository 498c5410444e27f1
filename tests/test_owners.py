"""Owner series -> workloads (exporter/sources/owners.py): what kube-state-metrics' owner chains
resolve to. The query path runs against a real Prometheus in tests/test_owners_prometheus.py."""

from __future__ import annotations

from exporter.sources.owners import resolve


def pod(name: str, kind: str, owner: str, controller: str = "true") -> dict[str, str]:
    return {
        "namespace": "shop",
        "pod": name,
        "owner_kind": kind,
        "owner_name": owner,
        "owner_is_controller": controller,
    }


def parent(label: str, name: str, kind: str, owner: str) -> dict[str, str]:
    return {"namespace": "shop", label: name, "owner_kind": kind, "owner_name": owner}


def test_replicasets_resolve_to_their_deployment_and_jobs_to_their_cronjob() -> None:
    series = [
        pod("q7x2mlp0a", "ReplicaSet", "cart-7d9f8b6c4"),
        parent("replicaset", "cart-7d9f8b6c4", "Deployment", "cart"),
        pod("backup-28930-abcde", "Job", "backup-28930"),
        parent("job_name", "backup-28930", "CronJob", "backup"),
        pod("db-0", "StatefulSet", "db"),
        pod("fluentd-x1y2z", "DaemonSet", "fluentd"),
    ]
    workloads, pods = resolve(series, "namespace", "pod")
    assert workloads == {
        ("shop", "q7x2mlp0a"): "Deployment/cart",
        ("shop", "backup-28930-abcde"): "CronJob/backup",
        ("shop", "db-0"): "StatefulSet/db",
        ("shop", "fluentd-x1y2z"): "DaemonSet/fluentd",
    }
    assert pods == 4


def test_an_owner_without_an_owner_is_the_workload_and_a_missing_parent_leaves_the_replicaset() -> None:
    series = [
        pod("a", "ReplicaSet", "bare-rs"),
        parent("replicaset", "bare-rs", "<none>", "<none>"),
        pod("b", "ReplicaSet", "unknown-rs"),  # its kube_replicaset_owner not (yet) exported
        pod("c", "Job", "one-off"),
    ]
    workloads, _ = resolve(series, "namespace", "pod")
    assert workloads == {
        ("shop", "a"): "ReplicaSet/bare-rs",
        ("shop", "b"): "ReplicaSet/unknown-rs",
        ("shop", "c"): "Job/one-off",
    }


def test_bare_and_static_pods_have_no_workload_but_count_as_answered() -> None:
    series = [pod("debug", "<none>", "<none>"), pod("etcd-node1", "Node", "node1")]
    assert resolve(series, "namespace", "pod") == ({}, 2)


def test_the_controller_reference_wins_and_namespaces_keep_same_names_apart() -> None:
    series = [
        pod("x", "ConfigMap", "aaa", controller="false"),
        pod("x", "StatefulSet", "zookeeper"),
        {**pod("x", "StatefulSet", "kafka"), "namespace": "queue"},
    ]
    workloads, _ = resolve(series, "namespace", "pod")
    assert workloads == {("shop", "x"): "StatefulSet/zookeeper", ("queue", "x"): "StatefulSet/kafka"}


def test_no_pod_owner_series_means_no_answer_even_with_replicaset_owners() -> None:
    assert resolve([parent("replicaset", "rs", "Deployment", "d")], "namespace", "pod") == ({}, 0)
