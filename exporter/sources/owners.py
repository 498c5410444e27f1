"""Which workload runs each pod, from kube-state-metrics' owner series.

A rollout gives its pods new names; the anomaly statistics of a new pod start from its
workload's (models/normalize.py), so the workload must be known by the first cycle the pod is
seen. A pattern on the pod name guesses it (``anomaly.workload_pattern``); kube-state-metrics
knows it: ``kube_pod_owner{namespace,pod,owner_kind,owner_name}`` names each pod's owner, a
ReplicaSet for a Deployment's pods (``kube_replicaset_owner{namespace,replicaset,...}`` names its
Deployment), a Job for a CronJob's (``kube_job_owner{namespace,job_name,...}``), the StatefulSet
or DaemonSet itself otherwise. A ReplicaSet or Job without an owner is the workload itself;
``<none>`` (a bare pod) and ``Node`` (static pods: every one of a node would be one workload)
name no workload.

One instant query (the three selectors joined by ``or``) answers for every pod at once, only
every ``anomaly.owners.refresh``, in a cycle where a target appears that the last answer was
not asked for (a rollout's new pods), and once more in the next cycle when a new target was
not named (kube-state-metrics scraped after the pod's own metrics); never more than once per
cycle and never per pod. A young pod named late takes its workload's statistics then
(``AnomalyNormaliser.refresh_workloads``).
Only the pods watched are kept, so memory follows the targets, not the cluster. A failed
query, or an answer without a single owner series (kube-state-metrics not scraped), never
stops scoring: the owners are unknown until the next answer, workloads fall back to the
pattern, and the log says so once per change.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence

from exporter.config import Settings
from exporter.sources import Owners, QueryError, QueryFailed

log = logging.getLogger(__name__)

# Owner kinds whose own owner names the workload, and the label naming them in their series.
PARENT_LABELS = {"ReplicaSet": "replicaset", "Job": "job_name"}
NOT_WORKLOADS = frozenset({"<none>", "", "Node"})
OWNER_SIGNAL = "owners"  # the QueryError.signal of an owner query's failure


def resolve(
    series: Iterable[Mapping[str, str]], namespace_label: str, pod_label: str
) -> tuple[dict[tuple[str, str], str], int]:
    """(namespace, pod) -> "Kind/name" of the workload, and how many owner series of pods the
    answer held. A pod with several owner references takes its controller's."""
    parents: dict[str, dict[tuple[str, str], tuple[str, str]]] = {kind: {} for kind in PARENT_LABELS}
    pods: dict[tuple[str, str], tuple[bool, str, str]] = {}
    pod_series = 0
    for labels in series:
        kind, name = labels.get("owner_kind", ""), labels.get("owner_name", "")
        namespace = labels.get(namespace_label, "")
        parent = next((k for k, label in PARENT_LABELS.items() if label in labels), None)
        if parent is not None:
            parents[parent][(namespace, labels[PARENT_LABELS[parent]])] = (kind, name)
            continue
        if pod_label not in labels:
            continue
        pod_series += 1
        controller = labels.get("owner_is_controller", "true") == "true"
        key = (namespace, labels[pod_label])
        if key not in pods or (controller, kind, name) > pods[key]:
            pods[key] = (controller, kind, name)
    workloads = {}
    for (namespace, pod), (_, kind, name) in pods.items():
        owner = parents.get(kind, {}).get((namespace, name))
        if owner is not None and owner[0] not in NOT_WORKLOADS:
            kind, name = owner
        if kind not in NOT_WORKLOADS and name:
            workloads[(namespace, pod)] = f"{kind}/{name}"
    return workloads, pod_series


class OwnerReader:
    """The owners of the targets watched, re-asked when due; never raises (see module doc)."""

    def __init__(
        self, settings: Settings, query_labels: Callable[[str, float], list[dict[str, str]]]
    ) -> None:
        """``query_labels(query, at)``: an instant query's label sets (PrometheusClient's)."""
        self._query_labels = query_labels
        self._query = settings.owner_query
        self._refresh = settings.anomaly.owners.refresh
        self._expected = settings.anomaly.workload_source == "kube_pod_owner"
        labels = settings.target_labels
        self._labels = (settings.anomaly.owners.namespace_label, settings.anomaly.workload_label)
        self._columns = (labels.index(self._labels[0]), labels.index(self._labels[1]))
        self._asked_at = float("-inf")
        self._asked: frozenset[tuple[str, ...]] = frozenset()  # the targets of the last query
        # Targets new to the last query that it did not name: asked about once more, next cycle
        # (kube-state-metrics may be scraped after a new pod's own metrics).
        self._pending = False
        self._pods: dict[tuple[str, str], str] | None = None
        self._failure: QueryError | None = None
        self._state = "start"  # "known", or why the owners are unknown (logged once per change)

    def read(self, keys: Sequence[tuple[str, ...]], at: float) -> Owners:
        """The owners of these targets (their target-label values) at data time ``at``."""
        due = at - self._asked_at >= self._refresh or self._pending or not self._asked.issuperset(keys)
        if due:
            self._ask(keys, at)
        return Owners(self._pods, *self._labels, failure=self._failure, asked=due)

    def _ask(self, keys: Sequence[tuple[str, ...]], at: float) -> None:
        before = self._asked
        self._asked_at, self._asked, self._pending = at, frozenset(keys), False
        try:
            answer = self._query_labels(self._query, at)
        except QueryFailed as exc:
            self._failed(QueryError(OWNER_SIGNAL, exc.reason, str(exc)))
            return
        workloads, pod_series = resolve(answer, *self._labels)
        if not pod_series:
            message = "the owner query returned no owner series of pods (is kube-state-metrics scraped?)"
            self._failed(QueryError(OWNER_SIGNAL, "absent", message))
            return
        n, p = self._columns
        watched = {(key[n], key[p]) for key in keys}
        self._pods = {pod: workload for pod, workload in workloads.items() if pod in watched}
        self._pending = any(key not in before and (key[n], key[p]) not in workloads for key in keys)
        self._failure = None
        if self._state != "known":
            log.info(
                "workloads are named by their owners (kube_pod_owner)",
                extra={"pods": len(self._pods), "targets": len(keys)},
            )
        self._state = "known"

    def _failed(self, error: QueryError) -> None:
        self._pods, self._failure = None, error
        if error.reason == self._state:
            return
        # Without kube-state-metrics, "auto" keeping to the pattern from the start is no news.
        quiet = error.reason == "absent" and not self._expected and self._state == "start"
        self._state = error.reason
        (log.info if quiet else log.warning)(
            "workload owners unknown: new pods inherit statistics by anomaly.workload_pattern",
            extra={"reason": error.reason, "error": error.message, "query": self._query},
        )
