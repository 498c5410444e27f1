"""Recent failure probabilities per target, kept in memory for the HTTP API.

A bounded ring of the last ``points`` cycles: one ``[targets, points]`` array
re-aligned to each new Snapshot's targets, so memory is bounded by targets x
points and a target that vanished is forgotten with the cycle that dropped it.
Like the Snapshot, each update builds new arrays and swaps one reference, so
readers need no lock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from exporter.snapshot import Snapshot

TargetKey = tuple[tuple[str, str], ...]


def target_key(labels: Mapping[str, str]) -> TargetKey:
    return tuple(sorted(labels.items()))


@dataclass(frozen=True)
class _Rings:
    rows: dict[TargetKey, int]
    times: np.ndarray  # [points] data time of each cycle, oldest first, NaN before the first
    values: np.ndarray  # [targets, points] probabilities, NaN where a target was not scored


class ProbabilityHistory:
    """Call ``update`` with each published Snapshot (it fits ``Daemon.on_cycle``)."""

    def __init__(self, points: int) -> None:
        self.points = points
        self._rings = _Rings({}, np.full(points, np.nan), np.empty((0, points)))

    def update(self, snapshot: Snapshot) -> None:
        old = self._rings
        keys = [target_key(labels) for labels in snapshot.targets]
        previous = np.array([old.rows.get(key, -1) for key in keys], dtype=np.intp)
        values = np.full((len(keys), self.points), np.nan)
        known = previous >= 0
        values[known, :-1] = old.values[previous[known], 1:]
        values[:, -1] = snapshot.probability
        times = np.append(old.times[1:], snapshot.data_time)
        self._rings = _Rings(dict(zip(keys, range(len(keys)), strict=True)), times, values)

    def of(self, labels: Mapping[str, str]) -> list[tuple[float, float]]:
        """(data time, probability) pairs of one target, oldest first; empty when unknown."""
        rings = self._rings
        row = rings.rows.get(target_key(labels))
        if row is None:
            return []
        present = np.isfinite(rings.values[row])
        return list(zip(rings.times[present].tolist(), rings.values[row, present].tolist(), strict=True))
