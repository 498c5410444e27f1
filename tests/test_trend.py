"""signal_time_to_limit_seconds (exporter/models/trend.py): only a clear rise towards the limit reads."""

from __future__ import annotations

import numpy as np

from exporter.models.trend import MAX_SECONDS, time_to_limit

STEP = 60.0


def test_a_steady_rise_reads_the_time_until_the_ratio_reaches_one() -> None:
    line = 0.5 + 0.001 * np.arange(60)  # 0.559 at the newest step, +0.001 a minute
    with_gaps = line.copy()
    with_gaps[::7] = np.nan

    seconds = time_to_limit(np.vstack([line, with_gaps]), STEP)

    np.testing.assert_allclose(seconds, (1 - line[-1]) / 0.001 * STEP)


def test_noise_a_fall_a_short_window_or_a_far_limit_read_nothing() -> None:
    rng = np.random.default_rng(0)
    flat = 0.5 + rng.normal(0, 0.01, 60)
    falling = 0.9 - 0.001 * np.arange(60)
    short = np.full(60, np.nan)
    short[-9:] = 0.5 + 0.01 * np.arange(9)
    slow = 0.1 + 1e-9 * np.arange(60)  # reaches 1.0 in years

    assert np.isnan(time_to_limit(np.vstack([flat, falling, short, slow]), STEP)).all()
    assert (0.9 - 0.1) / 1e-9 * STEP > MAX_SECONDS


def test_a_target_past_its_limit_and_still_rising_reads_zero() -> None:
    assert time_to_limit((1.1 + 0.01 * np.arange(60))[None], STEP).tolist() == [0.0]
