"""The /metrics page: self-metrics from the registry, per-target families rendered once per Snapshot.

prometheus_client formats every sample at every scrape through generic code (label-name
validation, escaping, a list per sample): 15-30 us a sample, about a second per scrape at
10,000 targets with their bands. The per-target families only change when a cycle publishes a
new Snapshot, so they are rendered here once per Snapshot and output format, each family
through one ``%`` template with each target's escaped label values built once, and the cached bytes are
spliced after the registry's own (small) output. The text is what prometheus_client would
write for the same families: the same escaping, float formatting and family headers, in the
0.0.4 text format or OpenMetrics as the scraper asks.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from operator import itemgetter

import numpy as np
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.utils import floatToGoString

from exporter.service.state import State
from exporter.snapshot import Bands, Snapshot

BOUNDS = ("lower", "mean", "upper")
EOF = b"# EOF\n"

PROBABILITY_HELP = "Calibrated probability that the target fails within the horizon."
RISK_HELP = "Risk level: 0 minimal, 1 low, 2 medium, 3 high, 4 critical."
ANOMALY_HELP = (
    "Onset of anomalous behaviour in [0, 1), against the target's own history; 0 while nothing new happens."
)
CONTRIBUTION_HELP = (
    "Share of the failure score attributed to each signal (SHAP, positive part, sums to 1); "
    "only targets at explain_min_risk (default low) or above."
)
EXPECTED_HELP = (
    "The band anomaly_score expected the newest sample in (lower, mean, upper; 3 deviations, "
    "wider on short history)."
)
LIMIT_HELP = "Seconds until the signal's ratio of its limit reaches 1.0 at the current trend (absent when not approaching)."


class Exposition:
    """Renders ``/metrics``; per-target families come from ``state.snapshot`` unless it is older
    than ``stale_after`` (then they are left out, so Prometheus marks the series stale)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        state: State,
        target_labels: Sequence[str],
        stale_after: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._registry = registry
        self._state = state
        self._labels = tuple(target_labels)
        self._stale_after = stale_after
        self._clock = clock
        self._lock = threading.Lock()  # one render per Snapshot even when two scrapes arrive together
        self._cached: tuple[Snapshot | None, bool, bytes] = (None, False, b"")

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The page and its content type for a scraper's ``Accept`` header."""
        encoder, content_type = choose_encoder(accept)
        openmetrics = content_type.startswith("application/openmetrics-text")
        head = encoder(self._registry)
        snapshot = self._state.snapshot
        if snapshot is None or self._clock() - snapshot.created_at > self._stale_after:
            return head, content_type
        body = self._targets(snapshot, openmetrics)
        if openmetrics:
            return head[: -len(EOF)] + body + EOF, content_type
        return head + body, content_type

    def _targets(self, snapshot: Snapshot, openmetrics: bool) -> bytes:
        with self._lock:
            cached, cached_format, text = self._cached
            if cached is not snapshot or cached_format != openmetrics:
                text = "".join(render_targets(snapshot, self._labels, openmetrics)).encode()
                self._cached = (snapshot, openmetrics, text)
            return text


def render_targets(snapshot: Snapshot, labels: Sequence[str], openmetrics: bool = False) -> Iterator[str]:
    """Lines of the per-target families, in the order and form prometheus_client writes them
    (label names sorted within each sample)."""
    values = [tuple(_escape(target.get(name, "")) for name in labels) for target in snapshot.targets]
    signals = tuple(_escape(signal) for signal in snapshot.signals)
    yield from _header("failure_probability", PROBABILITY_HELP, openmetrics)
    line, pick = _line("failure_probability", labels, ("horizon",))
    horizon = (_escape(snapshot.horizon),)
    for target, value in zip(values, snapshot.probability.tolist(), strict=True):
        yield line % (*pick(target + horizon), floatToGoString(value))
    for name, help_text, column in (
        ("failure_risk_level", RISK_HELP, snapshot.risk),
        ("anomaly_score", ANOMALY_HELP, snapshot.anomaly),
    ):
        yield from _header(name, help_text, openmetrics)
        line, pick = _line(name, labels, ())
        for target, value in zip(values, column.tolist(), strict=True):
            yield line % (*pick(target), floatToGoString(value))
    yield from _header("failure_probability_contribution", CONTRIBUTION_HELP, openmetrics)
    line, pick = _line("failure_probability_contribution", labels, ("signal",))
    # Only targets at explain_min_risk or above are explained (SHAP is the costly part).
    explained = np.flatnonzero(~np.isnan(snapshot.contribution).any(axis=1))
    for row in explained.tolist():
        for signal, value in zip(signals, snapshot.contribution[row].tolist(), strict=True):
            yield line % (*pick((*values[row], signal)), floatToGoString(value))
    if snapshot.bands is not None:
        yield from _bands(snapshot.bands, values, labels, openmetrics)


def _bands(
    bands: Bands, values: list[tuple[str, ...]], labels: Sequence[str], openmetrics: bool
) -> Iterator[str]:
    """signal_expected and signal_time_to_limit_seconds; a NaN (no band yet, not approaching the
    limit) is simply absent."""
    signals = tuple(_escape(signal) for signal in bands.signals)
    if bands.expected is not None:
        yield from _header("signal_expected", EXPECTED_HELP, openmetrics)
        line, pick = _line("signal_expected", labels, ("signal", "bound"))
        rows, columns, bounds = np.nonzero(~np.isnan(bands.expected))
        samples = bands.expected[rows, columns, bounds].tolist()
        for row, column, bound, value in zip(
            rows.tolist(), columns.tolist(), bounds.tolist(), samples, strict=True
        ):
            yield line % (*pick((*values[row], signals[column], BOUNDS[bound])), floatToGoString(value))
    yield from _header("signal_time_to_limit_seconds", LIMIT_HELP, openmetrics)
    line, pick = _line("signal_time_to_limit_seconds", labels, ("signal",))
    rows, columns = np.nonzero(~np.isnan(bands.time_to_limit))
    samples = bands.time_to_limit[rows, columns].tolist()
    for row, column, value in zip(rows.tolist(), columns.tolist(), samples, strict=True):
        yield line % (*pick((*values[row], signals[column])), floatToGoString(value))


def _line(name: str, labels: Sequence[str], extra: tuple[str, ...]) -> tuple[str, Callable[[tuple], tuple]]:
    """A ``%`` template for one sample of ``name`` with its label names sorted, and the function
    that orders (target label values..., extra label values...) to fill it."""
    names = (*labels, *extra)
    order = sorted(range(len(names)), key=lambda i: names[i])
    template = ",".join(f'{names[i]}="%s"' for i in order)
    line = f"{name}{{{template}}} %s\n" if names else f"{name} %s\n"
    return line, (lambda values: tuple(values[i] for i in order)) if len(order) < 2 else itemgetter(*order)


def _header(name: str, help_text: str, openmetrics: bool) -> Iterator[str]:
    escaped = help_text.replace("\\", r"\\").replace("\n", r"\n")
    if openmetrics:
        escaped = escaped.replace('"', r"\"")
    yield f"# HELP {name} {escaped}\n"
    yield f"# TYPE {name} gauge\n"


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
