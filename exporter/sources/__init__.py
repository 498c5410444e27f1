"""Where windows of series come from.

Contract: a Source has ``signals`` (names, in Frame order) and ``fetch()``, which
returns a Fetch for the window ending now. A source never raises for a signal it
could not read: it reports it in ``Fetch.errors`` and leaves that signal NaN, so
one broken query never costs the whole cycle.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from exporter.frame import Frame


@dataclass(frozen=True)
class QueryError:
    signal: str
    # short, low-cardinality: "timeout" (one attempt), "deadline" (the whole query), "connection",
    # "tls", "http_4xx", "http_5xx", "promql", "bad_response", "shutdown"; partial ones:
    # "duplicate_series", "unparsable_samples" (the signal was read, some series left out)
    reason: str
    message: str

    @property
    def partial(self) -> bool:
        """The signal was read; only some of its series were left out."""
        return self.reason in ("duplicate_series", "unparsable_samples")


class QueryFailed(Exception):
    """A query that produced no answer; ``reason`` is a QueryError reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Owners:
    """The workload that owns each pod, as the source last learned it (sources/owners.py).

    ``pods`` maps (namespace, pod) to a workload such as "Deployment/cart" for the targets
    watched; it is None while the owners are unknown (the query failed or found no owner
    series: ``failure`` says why, and workloads fall back to the pattern). The same ``pods``
    object is returned until the next answer, so a consumer can tell when it changed.
    """

    pods: Mapping[tuple[str, str], str] | None
    namespace_label: str
    pod_label: str
    failure: QueryError | None = None
    asked: bool = False  # this cycle queried Prometheus (failures are counted per query)

    def of(self, target: Mapping[str, str]) -> str | None:
        """The workload owning the pod of this target's labels, or None when not known."""
        if self.pods is None:
            return None
        return self.pods.get((target.get(self.namespace_label, ""), target.get(self.pod_label, "")))


@dataclass(frozen=True)
class Fetch:
    """What a Source returns per cycle: the window, plus the signals that could not be read."""

    frame: Frame
    errors: tuple[QueryError, ...] = ()
    dropped: int = 0  # live targets left out by max_targets
    owners: Owners | None = None  # None: this source reads no owners (workloads by pattern)


class Source(Protocol):
    signals: tuple[str, ...]

    def fetch(self) -> Fetch: ...
