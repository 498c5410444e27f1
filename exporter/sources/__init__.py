"""Where windows of series come from.

Contract: a Source has ``signals`` (names, in Frame order) and ``fetch()``, which
returns a Fetch for the window ending now. A source never raises for a signal it
could not read: it reports it in ``Fetch.errors`` and leaves that signal NaN, so
one broken query never costs the whole cycle.
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class Fetch:
    """What a Source returns per cycle: the window, plus the signals that could not be read."""

    frame: Frame
    errors: tuple[QueryError, ...] = ()
    dropped: int = 0  # live targets left out by max_targets


class Source(Protocol):
    signals: tuple[str, ...]

    def fetch(self) -> Fetch: ...
