"""The /metrics page: self-metrics from the registry, per-target families rendered once per Snapshot.

prometheus_client formats every sample at every scrape through generic code (label-name
validation, escaping, a list per sample): 15-30 us a sample, about a second per scrape at
10,000 targets with their bands. The per-target families only change when a cycle publishes a
new Snapshot, so they are rendered here once per Snapshot and output format, each target's
label block built once for all its samples, and the cached bytes are spliced after the
registry's own (small) output. The samples are the ones prometheus_client would write for the
same families (same escaping, float formatting and family headers, in the 0.0.4 text format or
OpenMetrics as the scraper asks); only the order of labels within a sample differs (target
labels first), which the format leaves free.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.utils import floatToGoString

from exporter.service.state import State
from exporter.snapshot import Bands, Snapshot

BOUNDS = ("lower", "mean", "upper")
EOF = b"# EOF\n"
# Bands and times to limit are estimates (a mean +- 3 deviations, a trend): 6 significant digits
# carry all they know, and they are most of the page's samples (12 + 2 per target).
BAND_DIGITS = 6

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
    """Text of the per-target families, one string per family part. Each sample names the
    target labels first (in the configured order, built once per target) and then its
    family's own labels: one f-string per sample, no per-sample label handling."""
    blocks = [
        ",".join(f'{name}="{_escape(target.get(name, ""))}"' for name in labels)
        for target in snapshot.targets
    ]
    signals = [_escape(signal) for signal in snapshot.signals]
    horizon = f'horizon="{_escape(snapshot.horizon)}"'
    yield from _header("failure_probability", PROBABILITY_HELP, openmetrics)
    yield from _samples("failure_probability", blocks, horizon, snapshot.probability)
    yield from _header("failure_risk_level", RISK_HELP, openmetrics)
    yield from _samples("failure_risk_level", blocks, "", snapshot.risk.astype(float))
    yield from _header("anomaly_score", ANOMALY_HELP, openmetrics)
    yield from _samples("anomaly_score", blocks, "", snapshot.anomaly)
    yield from _header("failure_probability_contribution", CONTRIBUTION_HELP, openmetrics)
    # Only targets at explain_min_risk or above are explained (SHAP is the costly part): the
    # others' contributions are NaN, and absent.
    for column, signal in enumerate(signals):
        yield from _present(
            "failure_probability_contribution", blocks, f'signal="{signal}"', snapshot.contribution[:, column]
        )
    if snapshot.bands is not None:
        yield from _bands(snapshot.bands, blocks, openmetrics)


def _bands(bands: Bands, blocks: list[str], openmetrics: bool) -> Iterator[str]:
    """signal_expected and signal_time_to_limit_seconds; a NaN (no band yet, not approaching the
    limit) is simply absent."""
    signals = [_escape(signal) for signal in bands.signals]
    if bands.expected is not None:
        yield from _header("signal_expected", EXPECTED_HELP, openmetrics)
        for column, signal in enumerate(signals):
            for index, bound in enumerate(BOUNDS):
                where = f'signal="{signal}",bound="{bound}"'
                yield from _present(
                    "signal_expected", blocks, where, bands.expected[:, column, index], BAND_DIGITS
                )
    yield from _header("signal_time_to_limit_seconds", LIMIT_HELP, openmetrics)
    for column, signal in enumerate(signals):
        where = f'signal="{signal}"'
        yield from _present(
            "signal_time_to_limit_seconds", blocks, where, bands.time_to_limit[:, column], BAND_DIGITS
        )


def _present(
    name: str, blocks: list[str], extra: str, values: np.ndarray, digits: int | None = None
) -> Iterator[str]:
    """``_samples`` of the targets whose value is not NaN (a NaN sample is left out)."""
    rows = np.flatnonzero(~np.isnan(values))
    return _samples(name, [blocks[row] for row in rows.tolist()], extra, values[rows], digits)


def _samples(
    name: str, blocks: list[str], extra: str, values: np.ndarray, digits: int | None = None
) -> Iterator[str]:
    """One line per (target label block, value), ``extra`` the family's own labels; values in
    full precision, or ``digits`` significant digits."""
    texts = _go_floats(values, digits)
    own = f",{extra}" if extra else ""  # target labels are never empty (validated in config)
    yield "".join([f"{name}{{{block}{own}}} {text}\n" for block, text in zip(blocks, texts, strict=True)])


def _go_floats(values: np.ndarray, digits: int | None = None) -> list[str]:
    """prometheus_client's floatToGoString for every value (Python's repr, except that Go writes
    exponents from 1e6 on and spells NaN and infinities its own way: those are fixed up one by
    one), or ``digits`` significant digits ("%g"), which costs a third of the shortest repr."""
    if digits is not None:
        texts = list(map(f"{{:.{digits}g}}".format, values.tolist()))
        for index in np.flatnonzero(~np.isfinite(values)).tolist():
            texts[index] = floatToGoString(values[index])
        return texts
    texts = list(map(repr, values.tolist()))
    for index in np.flatnonzero(~np.isfinite(values) | (values >= 1e6)).tolist():
        texts[index] = floatToGoString(values[index])
    return texts


def _header(name: str, help_text: str, openmetrics: bool) -> Iterator[str]:
    escaped = help_text.replace("\\", r"\\").replace("\n", r"\n")
    if openmetrics:
        escaped = escaped.replace('"', r"\"")
    yield f"# HELP {name} {escaped}\n"
    yield f"# TYPE {name} gauge\n"


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
