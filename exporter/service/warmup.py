"""Warm start: replay recent history from Prometheus into the anomaly statistics.

Without it every restart, upgrade or node drain would start each target's statistics from
nothing. At start a background thread reads the last ``anomaly.warmup`` of every signal and
replays it through the same scoring the daemon runs (models/replay.py) into a normaliser of its
own; later, targets seen for the first time that inherited nothing from their workload get a
replay of their own, of them alone (the queries narrowed to them through ``{selector}``), and
no target is replayed twice while it is watched (service/daemon.py). Once the thread has caught
up with the newest step it hands its normaliser over; the scoring cycle adopts it between two
cycles (``take``), so the cycle and the thread never share state.

Memory is bounded by chunks: each reads ``anomaly.warmup_chunk`` of history, fewer steps where
that would pass CHUNK_SAMPLES new samples (15 steps at 10,000 targets of 4 signals), one
range query per signal. A chunk's first windows need the ``window_steps - 1`` steps before it:
they are carried over from the chunk before (``Lead``), not read again, so a chunk holds its new
steps plus one window of lead-in. The scores are those of one unchunked replay (the windows are
the same samples). What stays is the per-target statistics being built.

A query that fails leaves the targets cold: ``failure_predictor_anomaly_warmup_errors_total``
counts it, the log says why, and the next first-seen targets try again.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence

import numpy as np

from exporter.config import Settings
from exporter.models.bundle import ModelBundle
from exporter.models.normalize import AnomalyNormaliser, TargetKey, target_key
from exporter.models.replay import replay
from exporter.service.turns import Turns
from exporter.sources.prometheus import MAX_POINTS, QueryFailed

log = logging.getLogger(__name__)

# Reads every signal on a step grid, of every target or only some, from an index on, with rows
# also for some keys (PrometheusSource.read_history): (values[targets, time, signals], target keys).
ReadRange = Callable[
    [np.ndarray, Collection[tuple[str, ...]] | None, int, Collection[tuple[str, ...]]],
    tuple[np.ndarray, list[tuple[str, ...]]],
]
# New samples (targets x steps x signals) one chunk reads: 15 steps at 10,000 targets of 4
# signals, ~5 MB decoded, plus the lead-in carried over (module docstring). With CHUNK_ROWS at
# 1,000 (from 1.2 million and 2,000) it saved 12 MB of peak RSS at 10,000 targets, for 6 % more time.
CHUNK_SAMPLES = 600_000
CHUNK_ROWS = 1_000  # windows scored per batch: their features and scores are ~40x a window's size


class Lead:
    """The newest steps of the chunk replayed last, of the targets with a sample in them: the
    lead-in of the next chunk's windows, so that no chunk reads the same steps twice."""

    def __init__(self, targets: int) -> None:
        self.values = np.zeros((0, 0, 0))
        self.keys: list[tuple[str, ...]] = []
        self.end = -math.inf  # time of the newest step held
        self.targets = targets  # the most targets expected or read by a chunk (sizes the next)

    def fill(self, values: np.ndarray, keys: Sequence[tuple[str, ...]]) -> None:
        """Move the held steps into the first columns of ``values`` (rows in ``keys`` order),
        a batch of rows at a time so that no second copy of them exists at once."""
        held = {key: row for row, key in enumerate(self.keys)}
        rows = np.array([held.get(key, -1) for key in keys], dtype=np.int64)
        dst = np.flatnonzero(rows >= 0)
        for begin in range(0, len(dst), CHUNK_ROWS):
            part = dst[begin : begin + CHUNK_ROWS]
            values[part, : self.values.shape[1]] = self.values[rows[part]]
        self.values = np.zeros((0, 0, 0))

    def keep(self, values: np.ndarray, keys: Sequence[tuple[str, ...]], end: float, steps: int) -> None:
        """Hold the newest ``steps`` columns of ``values`` (ending at ``end``), a copy, so that the
        chunk's array is freed."""
        tail = values[:, values.shape[1] - steps :]
        live = np.isfinite(tail).any(axis=(1, 2))
        self.values = tail[live]  # a boolean index copies
        self.keys = [key for key, alive in zip(keys, live, strict=True) if alive]
        self.end = end
        self.targets = max(self.targets, len(keys))  # an empty stretch must not size the next chunk


class WarmUp:
    """One background replay at a time; ``take`` returns its normaliser once, when done."""

    def __init__(
        self,
        settings: Settings,
        read: ReadRange,
        on_error: Callable[[str], None],
        clock: Callable[[], float] = time.time,
        turns: Turns | None = None,
    ) -> None:
        self._settings = settings
        self._read = read
        self._on_error = on_error
        self._clock = clock
        self._turns = turns or Turns()
        self._thread: threading.Thread | None = None
        self._result: tuple[AnomalyNormaliser, ModelBundle, list[Mapping[str, str]]] | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def begin(
        self,
        make: Callable[[], AnomalyNormaliser],
        bundle: ModelBundle,
        only: set[TargetKey] | None = None,
        targets: int | None = None,
    ) -> bool:
        """Start replaying into ``make()`` (every target, or ``only`` these); False if one runs.
        ``targets`` (how many the history holds about; default ``max_targets``) sizes the first
        chunk, and the most targets a chunk read the next ones."""
        if self.running:
            return False
        lead = Lead(self._settings.max_targets if targets is None else max(targets, 1))
        self._thread = threading.Thread(
            target=self._run, args=(make(), bundle, only, lead), name="anomaly-warmup", daemon=True
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

    def _run(
        self, normaliser: AnomalyNormaliser, bundle: ModelBundle, only: set[TargetKey] | None, lead: Lead
    ) -> None:
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
                self._replay(normaliser, bundle, grid, only, targets, lead)
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
        lead: Lead,
    ) -> None:
        """Replay the steps of ``grid`` chunk by chunk. Each chunk queries only its own steps:
        the windows' lead-in comes from ``lead``, the newest samples of the chunk before."""
        settings, width = self._settings, bundle.manifest.window_steps
        labels = settings.target_labels
        wanted = None if only is None else {tuple(dict(key)[name] for name in labels) for key in only}
        begin = 0
        while begin < len(grid):
            steps = self._chunk_steps(width, lead.targets if wanted is None else len(wanted))
            chunk = grid[begin : begin + steps]
            times = chunk[0] + settings.step * np.arange(-(width - 1), len(chunk))
            carried = abs(chunk[0] - settings.step - lead.end) < settings.step / 2
            with self._turns.after():  # never beside a cycle (service/turns.py)
                values, keys = self._read(
                    times, wanted, width - 1 if carried else 0, lead.keys if carried else ()
                )
                if carried:
                    lead.fill(values, keys)
                chosen = [dict(zip(labels, key, strict=True)) for key in keys]
                replay(normaliser, bundle, values, times, chosen, first=width - 1, chunk_rows=CHUNK_ROWS)
                targets.update((target_key(t), t) for t in chosen)
                lead.keep(values, keys, times[-1], width - 1)
                del values  # before the next chunk is read: two chunks' arrays never coexist
            begin += len(chunk)

    def _chunk_steps(self, width: int, targets: int) -> int:
        """Steps per chunk: ``anomaly.warmup_chunk``, fewer where the chunk's new samples would
        pass CHUNK_SAMPLES (what bounds the memory of a warm-up of many targets)."""
        settings = self._settings
        configured = max(1, round(settings.anomaly.warmup_chunk / settings.step))
        budget = CHUNK_SAMPLES // max(targets * len(settings.queries), 1)
        return max(1, min(configured, budget, MAX_POINTS - width))

    def _newest(self) -> float:
        step = self._settings.step
        return math.floor(self._clock() / step) * step
