"""Turn "when was each target failed" into training labels.

A window ending at t is positive when a failure *starts* in (t, t + horizon].
Windows that end while the target is already failed are not eligible: the model
should learn to warn before a failure, not to describe one in progress. Windows
whose horizon runs past the end of the data are not eligible either, because
their label is not known yet.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Labels:
    """``positive`` and ``eligible`` are bool ``[targets, time]`` aligned with the failed mask."""

    positive: np.ndarray
    eligible: np.ndarray
    starts: np.ndarray


def failure_starts(failed: np.ndarray) -> np.ndarray:
    """True at the first step of every failed stretch."""
    before = np.zeros_like(failed)
    before[:, 1:] = failed[:, :-1]
    return failed & ~before


def horizon_labels(failed: np.ndarray, horizon_steps: int) -> Labels:
    """Label every (target, time) of a ``[targets, time]`` failed mask."""
    if horizon_steps < 1:
        raise ValueError(f"horizon must span at least one step, got {horizon_steps}")
    failed = np.asarray(failed, dtype=bool)
    starts = failure_starts(failed)
    steps = failed.shape[1]
    cumulative = np.zeros((failed.shape[0], steps + 1), dtype=np.int64)
    np.cumsum(starts, axis=1, out=cumulative[:, 1:])
    t = np.arange(steps)
    upper = np.minimum(t + horizon_steps + 1, steps)
    starts_ahead = cumulative[:, upper] - cumulative[:, t + 1]
    positive = starts_ahead > 0
    known = (t + horizon_steps < steps)[None, :] | positive
    return Labels(positive=positive, eligible=known & ~failed, starts=starts)
