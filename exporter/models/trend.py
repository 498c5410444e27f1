"""Time until a ratio of a limit reaches 1.0 at its current trend (``signal_time_to_limit_seconds``).

A least-squares line through each target's window (a compiled pass per target, NaN samples
skipped) gives the level at the newest step and the slope. The time to the limit is
(1 - level) / slope, reported only when the target is *approaching* it: the slope is positive
and clearly so (its t-statistic above ``MIN_T``: noise around a flat line is not a trend), and
the limit is reached within ``MAX_SECONDS``. A target already at or above its limit while still
rising reads 0.
"""

from __future__ import annotations

import numpy as np

from exporter.kernels import limit_seconds

MIN_SAMPLES = 10  # fewer samples in the window: no trend
MIN_T = 4.0  # slope / its standard error
MAX_SECONDS = 7 * 86400.0  # further than a week is "not approaching"


def time_to_limit(values: np.ndarray, step: float) -> np.ndarray:
    """``values[targets, time]`` (ratios of a limit, the newest last) -> seconds, NaN when not approaching."""
    values = np.ascontiguousarray(values, dtype=float)
    if values.ndim != 2 or not values.shape[1]:
        return np.full(len(values), np.nan)
    return limit_seconds(values, float(step), MIN_SAMPLES, MIN_T, MAX_SECONDS)
