"""Warm start: replay recent history from Prometheus into the anomaly statistics.

Without it every restart, upgrade or node drain would start each target's statistics from
nothing. At start (and later for targets seen for the first time that inherited nothing from
their workload) a background thread reads the last ``anomaly.warmup`` of every signal,
``anomaly.warmup_chunk`` per query (one range query per signal per chunk, each starting one
window early so its first steps have whole windows), and replays each chunk through the same
scoring the daemon runs (models/replay.py) into a normaliser of its own. Once it has caught up
with the newest step it hands that normaliser over; the scoring cycle adopts it between two
cycles (``take``), so the cycle and the thread never share state. Memory is one chunk of
samples plus the per-target statistics.

A query that fails leaves the targets cold: ``failure_predictor_anomaly_warmup_errors_total``
counts it, the log says why, and the next first-seen targets try again.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping

import numpy as np

from exporter.config import Settings
from exporter.models.bundle import ModelBundle
from exporter.models.normalize import AnomalyNormaliser, TargetKey, target_key
from exporter.models.replay import replay
from exporter.sources.prometheus import QueryFailed, plan_chunks

log = logging.getLogger(__name__)

# Reads every signal of every target on a step grid: (values[targets, time, signals], target keys).
ReadRange = Callable[[np.ndarray], tuple[np.ndarray, list[tuple[str, ...]]]]


class WarmUp:
    """One background replay at a time; ``take`` returns its normaliser once, when done."""

    def __init__(
        self,
        settings: Settings,
        read: ReadRange,
        on_error: Callable[[str], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._read = read
        self._on_error = on_error
        self._clock = clock
        self._thread: threading.Thread | None = None
        self._result: tuple[AnomalyNormaliser, ModelBundle, list[Mapping[str, str]]] | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def begin(
        self, make: Callable[[], AnomalyNormaliser], bundle: ModelBundle, only: set[TargetKey] | None = None
    ) -> bool:
        """Start replaying into ``make()`` (every target, or ``only`` these); False if one runs."""
        if self.running:
            return False
        self._thread = threading.Thread(
            target=self._run, args=(make(), bundle, only), name="anomaly-warmup", daemon=True
        )
        self._thread.start()
        return True

    def take(self) -> tuple[AnomalyNormaliser, ModelBundle, list[Mapping[str, str]]] | None:
        """The finished replay (normaliser, the bundle it scored with, its targets), once."""
        result, self._result = self._result, None
        return result

    def wait(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self, normaliser: AnomalyNormaliser, bundle: ModelBundle, only: set[TargetKey] | None) -> None:
        settings = self._settings
        step = settings.step
        started = time.monotonic()
        end = self._newest()
        done_until = end - settings.anomaly.warmup
        targets: dict[TargetKey, Mapping[str, str]] = {}
        try:
            # Catch up until no new step arrived while replaying.
            while end > done_until:
                grid = np.arange(done_until + step, end + step / 2, step)
                self._replay(normaliser, bundle, grid, only, targets)
                done_until, end = end, self._newest()
        except Exception as exc:  # a thread that dies silently would leave nothing said
            reason = exc.reason if isinstance(exc, QueryFailed) else "error"
            log.error(
                "anomaly warm-up failed, those targets start cold",
                extra={"reason": reason, "error": str(exc)},
                exc_info=not isinstance(exc, QueryFailed),
            )
            self._on_error(reason)
            return
        log.info(
            "anomaly warm-up done",
            extra={
                "targets": len(targets),
                "seconds": round(time.monotonic() - started, 2),
                "history_until": done_until,
            },
        )
        self._result = (normaliser, bundle, list(targets.values()))

    def _replay(
        self,
        normaliser: AnomalyNormaliser,
        bundle: ModelBundle,
        grid: np.ndarray,
        only: set[TargetKey] | None,
        targets: dict[TargetKey, Mapping[str, str]],
    ) -> None:
        settings, width = self._settings, bundle.manifest.window_steps
        chunk_steps = max(1, round(settings.anomaly.warmup_chunk / settings.step))
        for chunk in plan_chunks(len(grid), min(chunk_steps, 11_000 - width), width):
            times = grid[chunk.first] + settings.step * np.arange(-(width - 1), chunk.last - chunk.first + 1)
            values, keys = self._read(times)
            labels = [dict(zip(settings.target_labels, key, strict=True)) for key in keys]
            keep = np.array([only is None or target_key(t) in only for t in labels], dtype=bool)
            chosen = [t for t, k in zip(labels, keep, strict=True) if k]
            replay(normaliser, bundle, values[keep], times, chosen, first=width - 1)
            targets.update((target_key(t), t) for t in chosen)

    def _newest(self) -> float:
        step = self._settings.step
        return math.floor(self._clock() / step) * step
