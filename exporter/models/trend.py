"""Time until a ratio of a limit reaches 1.0 at its current trend (``signal_time_to_limit_seconds``).

A least-squares line through each target's window (vectorised over targets, NaN samples
skipped) gives the level at the newest step and the slope. The time to the limit is
(1 - level) / slope, reported only when the target is *approaching* it: the slope is positive
and clearly so (its t-statistic above ``MIN_T``: noise around a flat line is not a trend), and
the limit is reached within ``MAX_SECONDS``. A target already at or above its limit while still
rising reads 0.
"""

from __future__ import annotations

import numpy as np

MIN_SAMPLES = 10  # fewer samples in the window: no trend
MIN_T = 4.0  # slope / its standard error
MAX_SECONDS = 7 * 86400.0  # further than a week is "not approaching"


def time_to_limit(values: np.ndarray, step: float) -> np.ndarray:
    """``values[targets, time]`` (ratios of a limit, the newest last) -> seconds, NaN when not approaching."""
    values = np.asarray(values, dtype=float)
    present = np.isfinite(values)
    n = present.sum(axis=1)
    t = np.broadcast_to(np.arange(values.shape[1], dtype=float) * step, values.shape)
    y = np.where(present, values, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        t_mean = np.where(present, t, 0.0).sum(axis=1) / n
        y_mean = y.sum(axis=1) / n
        dt = np.where(present, t - t_mean[:, None], 0.0)
        dy = np.where(present, y - y_mean[:, None], 0.0)
        sxx = (dt * dt).sum(axis=1)
        slope = (dt * dy).sum(axis=1) / sxx
        residual = np.where(present, dy - slope[:, None] * dt, 0.0)
        error = np.sqrt((residual**2).sum(axis=1) / np.maximum(n - 2, 1) / sxx)
        level = y_mean + slope * (t[:, -1] - t_mean) if values.shape[1] else y_mean
        seconds = np.maximum(1.0 - level, 0.0) / slope
        rising = (n >= MIN_SAMPLES) & (slope > 0) & (slope > MIN_T * error)
    return np.where(rising & (seconds <= MAX_SECONDS), seconds, np.nan)
