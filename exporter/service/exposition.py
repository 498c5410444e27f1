"""The /metrics page: self-metrics from the registry, per-target families rendered once per Snapshot.

prometheus_client formats every sample at every scrape through generic code (label-name
validation, escaping, a list per sample): 15-30 us a sample, about a second per scrape at
10,000 targets with their bands. The per-target families only change when a cycle publishes a
new Snapshot, so they are rendered here once per Snapshot and output format, and the cached
bytes are spliced after the registry's own (small) output. Each family part's lines are kept
as one %-format while the targets stay the same (SampleFormats), so a render is one C-level
``format % values`` per part. The samples are the ones prometheus_client would write for the
same families (same escaping, float formatting and family headers, in the 0.0.4 text format or
OpenMetrics as the scraper asks); only the order of labels within a sample differs (target
labels first), which the format leaves free.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

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
        self._formats = SampleFormats(self._labels)

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
                text = "".join(render_targets(snapshot, self._formats, openmetrics)).encode()
                self._cached = (snapshot, openmetrics, text)
            return text


class SampleFormats:
    """Per family part, the %-format of its samples (``name{<target labels>,<own>} %s`` a line),
    so a render is one ``format % values`` per part, a C loop, instead of a Python step per
    sample (~0.9 us each, 155,000 samples at 10,000 targets). A format is one ``str.join`` of
    the targets' label blocks; a block is escaped once per target while the target lasts, and
    a format is kept while the same targets have a value (most cycles)."""

    def __init__(self, target_labels: Sequence[str]) -> None:
        self._labels = tuple(target_labels)
        self._targets: Sequence[Mapping[str, str]] = ()
        self._blocks: list[str] = []
        self._block_of: dict[tuple[str | None, ...], str] = {}
        self._formats: dict[tuple[str, str, str], tuple[bytes, str]] = {}

    def of(
        self, targets: Sequence[Mapping[str, str]], name: str, extra: str, conversion: str, rows: np.ndarray
    ) -> str:
        """The format of family ``name`` (own labels ``extra``) for ``targets[rows]``, each value
        written by ``conversion`` (``%s``, ``%.6g``)."""
        if targets is not self._targets and targets != self._targets:
            self._use(targets)
        chosen = rows.tobytes()
        cached = self._formats.get((name, extra, conversion))
        if cached is not None and cached[0] == chosen:
            return cached[1]
        own = f",{extra}" if extra else ""  # target labels are never empty (validated in config)
        prefix = f"{name}{{".replace("%", "%%")
        suffix = f"{own}}} ".replace("%", "%%") + conversion + "\n"
        blocks = (
            self._blocks if len(rows) == len(self._blocks) else [self._blocks[row] for row in rows.tolist()]
        )
        format_ = prefix + (suffix + prefix).join(blocks) + suffix if blocks else ""
        self._formats[name, extra, conversion] = (chosen, format_)
        return format_

    def _use(self, targets: Sequence[Mapping[str, str]]) -> None:
        """Label blocks of these targets (escaped, ``%`` doubled): kept ones reused, new ones built."""
        labels, known = self._labels, self._block_of
        keys = [tuple(map(target.get, labels)) for target in targets]
        self._block_of = {
            key: known.get(key)
            or ",".join(
                f'{label}="{_escape(value or "")}"' for label, value in zip(labels, key, strict=True)
            ).replace("%", "%%")
            for key in keys
        }
        self._blocks = [self._block_of[key] for key in keys]
        self._targets = targets
        self._formats = {}


def render_targets(snapshot: Snapshot, formats: SampleFormats, openmetrics: bool = False) -> Iterator[str]:
    """Text of the per-target families, one string per family part. Each sample names the
    target labels first (in the configured order) and then its family's own labels."""
    signals = [_escape(signal) for signal in snapshot.signals]
    part = _Part(formats, snapshot.targets)
    horizon = f'horizon="{_escape(snapshot.horizon)}"'
    yield from _header("failure_probability", PROBABILITY_HELP, openmetrics)
    yield part.samples("failure_probability", horizon, snapshot.probability)
    yield from _header("failure_risk_level", RISK_HELP, openmetrics)
    yield part.samples("failure_risk_level", "", snapshot.risk.astype(float))
    yield from _header("anomaly_score", ANOMALY_HELP, openmetrics)
    yield part.samples("anomaly_score", "", snapshot.anomaly)
    yield from _header("failure_probability_contribution", CONTRIBUTION_HELP, openmetrics)
    # Only targets at explain_min_risk or above are explained (SHAP is the costly part): the
    # others' contributions are NaN, and absent.
    for column, signal in enumerate(signals):
        yield part.samples(
            "failure_probability_contribution", f'signal="{signal}"', snapshot.contribution[:, column]
        )
    if snapshot.bands is not None:
        yield from _bands(snapshot.bands, part, openmetrics)


def _bands(bands: Bands, part: _Part, openmetrics: bool) -> Iterator[str]:
    """signal_expected and signal_time_to_limit_seconds; a NaN (no band yet, not approaching the
    limit) is simply absent."""
    signals = [_escape(signal) for signal in bands.signals]
    if bands.expected is not None:
        yield from _header("signal_expected", EXPECTED_HELP, openmetrics)
        for column, signal in enumerate(signals):
            for index, bound in enumerate(BOUNDS):
                where = f'signal="{signal}",bound="{bound}"'
                yield part.samples("signal_expected", where, bands.expected[:, column, index], BAND_DIGITS)
    yield from _header("signal_time_to_limit_seconds", LIMIT_HELP, openmetrics)
    for column, signal in enumerate(signals):
        where = f'signal="{signal}"'
        yield part.samples("signal_time_to_limit_seconds", where, bands.time_to_limit[:, column], BAND_DIGITS)


class _Part:
    """The samples of one snapshot's family parts, through the cached formats."""

    def __init__(self, formats: SampleFormats, targets: Sequence[Mapping[str, str]]) -> None:
        self._formats, self._targets = formats, targets

    def samples(self, name: str, extra: str, values: np.ndarray, digits: int | None = None) -> str:
        """One line per target whose value is not NaN (a NaN sample is left out); values in full
        precision (Go's float text, as prometheus_client writes it), or ``digits`` significant
        digits."""
        rows = np.flatnonzero(~np.isnan(values))
        present = values[rows]
        if digits is not None and np.isfinite(present).all():
            return self._formats.of(self._targets, name, extra, f"%.{digits}g", rows) % tuple(
                present.tolist()
            )
        return self._formats.of(self._targets, name, extra, "%s", rows) % tuple(_go_floats(present, digits))


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
