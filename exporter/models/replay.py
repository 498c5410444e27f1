"""Replay a stretch of history through the daemon's own scoring into a normaliser's state.

Every step of ``values[targets, time, signals]`` from ``first`` on is scored as the daemon
would have scored it at that moment: the ``width``-step window ending there (the values before
``first`` are the lead-in that fills the first windows), its features, the bundle forest's raw
score, then ``AnomalyNormaliser.evaluate`` in time order. Only targets with a sample at a step
take part in it, as only those are in the daemon's frame then. Rows go to the models
``chunk_rows`` at a time, so memory stays bounded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from exporter.features import window_features
from exporter.models.bundle import ModelBundle
from exporter.models.normalize import AnomalyNormaliser

CHUNK_ROWS = 10_000


def replay(
    normaliser: AnomalyNormaliser,
    bundle: ModelBundle,
    values: np.ndarray,
    timestamps: np.ndarray,
    targets: Sequence[Mapping[str, str]],
    first: int,
    chunk_rows: int = CHUNK_ROWS,
) -> int:
    """Feed steps ``first..`` of every target into ``normaliser`` (targets are added to it, none
    dropped); returns the number of samples replayed."""
    width = bundle.manifest.window_steps
    signals = normaliser.signals
    rows = normaliser.include(targets)
    shift = max(width - 1 - first, 0)
    padded = values  # a lead-in shorter than a window is padded with NaN: a copy, so only then
    if shift:
        padding = np.full((len(targets), shift, len(signals)), np.nan)
        padded = np.concatenate([padding, values], axis=1)
    views = sliding_window_view(padded, width, axis=1)  # [targets, ends, signals, width]
    alive = np.isfinite(values[:, first:, :]).any(axis=2)  # [targets, steps]
    step_of, target_of = np.nonzero(alive.T)  # time order, then target
    done = 0
    for begin in range(0, len(step_of), chunk_rows):
        steps, who = step_of[begin : begin + chunk_rows] + first, target_of[begin : begin + chunk_rows]
        windows = views[who, steps + shift - (width - 1)].transpose(0, 2, 1)
        times = timestamps[steps]
        raw = bundle.raw_anomaly(window_features(windows, signals))
        normaliser.evaluate(rows[who], windows, raw, times)
        done += len(steps)
    return done
