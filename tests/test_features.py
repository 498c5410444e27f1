"""Window features on tiny hand-made windows, with the expected numbers worked out by hand."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from exporter.features import (
    EXHAUSTION_CAP,
    PER_SIGNAL,
    Features,
    absent_signals,
    feature_names,
    frame_features,
    reporting,
    select,
    signal_weights,
    window_features,
)
from exporter.frame import Frame

SIGNALS = ("cpu", "memory", "latency", "errors")
NAN = np.nan


def window(**series: list) -> np.ndarray:
    """``values[rows, time, signals]`` from per-signal rows; a signal not given is a flat 0.5."""
    shape = np.asarray(next(iter(series.values())), dtype=float).shape
    values = np.full((*shape, len(SIGNALS)), 0.5)
    for name, rows in series.items():
        values[:, :, SIGNALS.index(name)] = rows
    return values


def features(values: np.ndarray) -> Features:
    return window_features(values, SIGNALS)


def stats(result: Features, signal: str, row: int = 0) -> dict[str, float]:
    return {stat: float(result.column(f"{signal}_{stat}")[row]) for stat in PER_SIGNAL}


def test_per_signal_stats_of_a_ramp():
    result = stats(features(window(cpu=[[1, 2, 3, 4, 5, 6]])), "cpu")

    # mean 3.5; variance (2.5^2 + 1.5^2 + 0.5^2) * 2 / 6 = 17.5 / 6; slope 1 per step.
    assert result == pytest.approx(
        {
            "last": 6.0,
            "mean": 3.5,
            "std": 1.7078251,
            "min": 1.0,
            "max": 6.0,
            "slope": 1.0,
            "zscore": 2.5 / 1.7078251,
            "rate_short": 1.0,  # the window is shorter than the short span: whole window
            "rate_long": 1.0,  # (mean of 2..6 = 4) - (mean of 1..5 = 3), over 6 - 5 = 1 step
            "rel_change": 6 / 3.5,  # slope * 6 steps / |mean|
            "missing": 0.0,
            "stale": 0.0,
            "median": 3.5,
            "recent_median": 3.5,  # the window is shorter than the short span: whole window
            "level_shift": 0.0,
            "recent_missing": 0.0,
        },
        rel=1e-6,
    )


def test_flat_signal_has_zero_spread_slope_and_zscore():
    result = stats(features(window(latency=[[0.2] * 8])), "latency")

    assert result == pytest.approx(
        {
            "last": 0.2,
            "mean": 0.2,
            "std": 0.0,
            "min": 0.2,
            "max": 0.2,
            "slope": 0.0,
            "zscore": 0.0,
            "rate_short": 0.0,
            "rate_long": 0.0,
            "rel_change": 0.0,
            "missing": 0.0,
            "stale": 0.0,
            "median": 0.2,
            "recent_median": 0.2,
            "level_shift": 0.0,
            "recent_missing": 0.0,
        },
        abs=1e-9,
    )


def test_short_rate_reads_the_last_ten_steps_and_long_rate_the_edge_means():
    # The last 10 steps are a clean ramp of +2 per step; the two oldest are a spike.
    result = stats(features(window(errors=[[100, 100, 0, 2, 4, 6, 8, 10, 12, 14, 16, 18]])), "errors")

    assert result["rate_short"] == pytest.approx(2.0)
    # (mean 10..18 = 14) - (mean 100, 100, 0, 2, 4 = 41.2), over 12 - 5 = 7 steps.
    assert result["rate_long"] == pytest.approx((14 - 41.2) / 7)
    assert result["slope"] < 0  # the whole-window slope is dragged down by the spike


def test_recent_median_follows_a_level_that_moved_but_not_a_single_spike():
    # 50 steps at 1 % errors, then the last 10: a ramp to 4 % in one row, a lone 30 % spike in the other.
    calm = [0.01] * 50
    ramp = [*calm, 0.01, 0.015, 0.02, 0.025, 0.03, 0.03, 0.035, 0.035, 0.04, 0.04]
    spike = calm + [0.01] * 9 + [0.3]
    result = features(window(errors=[ramp, spike]))

    np.testing.assert_allclose(result.column("errors_median"), [0.01, 0.01])
    np.testing.assert_allclose(result.column("errors_recent_median"), [0.03, 0.01])
    np.testing.assert_allclose(result.column("errors_level_shift"), [2.0, 0.0], rtol=1e-3)
    assert result.column("errors_last")[1] > result.column("errors_last")[0]  # the spike fools last


def test_recent_missing_tells_requests_that_stopped_from_a_pod_that_is_often_idle():
    # A hung app: 50 served steps, then 10 without a request; an idle one: every other step empty.
    hung = [0.2] * 50 + [NAN] * 10
    idle = [0.2, NAN] * 30
    result = features(window(latency=[hung, idle]))

    np.testing.assert_allclose(result.column("latency_recent_missing"), [1.0, 0.5])
    np.testing.assert_allclose(result.column("latency_missing"), [1 / 6, 0.5])


def test_slope_and_mean_ignore_missing_samples():
    # Present at t = 0, 2, 4, 5 and on the line 1 + t: a NaN read as 0 would bend the slope.
    result = stats(features(window(cpu=[[1, NAN, 3, NAN, 5, 6]])), "cpu")

    assert result["slope"] == pytest.approx(1.0)
    assert result["mean"] == pytest.approx((1 + 3 + 5 + 6) / 4)
    assert result["min"] == 1.0
    assert result["max"] == 6.0
    assert result["missing"] == pytest.approx(2 / 6)


def test_last_is_the_newest_observed_value():
    result = stats(features(window(memory=[[0.1, 0.2, 0.3, 0.4, NAN, NAN]])), "memory")

    assert result["last"] == 0.4
    assert result["max"] == 0.4
    assert result["slope"] == pytest.approx(0.1)
    assert result["missing"] == pytest.approx(1 / 3)
    # zscore compares the last *observed* value with the mean: (0.4 - 0.25) / std(0.1..0.4)
    assert result["zscore"] == pytest.approx(0.15 / np.sqrt(0.0125))


def test_single_sample_has_no_slope():
    result = stats(features(window(cpu=[[NAN, NAN, NAN, NAN, NAN, 0.7]])), "cpu")

    assert result["last"] == 0.7
    assert result["mean"] == pytest.approx(0.7)
    assert result["std"] == 0.0
    assert np.isnan(result["slope"])
    assert np.isnan(result["rate_short"])
    assert result["missing"] == pytest.approx(5 / 6)


def test_absent_target_yields_only_nan_features_without_warnings_and_leaves_other_rows_alone():
    healthy = window(
        cpu=[[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]],
        memory=[[0.5, 0.5, 0.6, 0.6, 0.7, 0.7]],
        latency=[[0.1, 0.2, 0.1, 0.3, 0.1, 0.2]],
        errors=[[0.0, 0.01, 0.0, 0.02, 0.0, 0.01]],
    )
    batch = np.concatenate([np.full_like(healthy, NAN), healthy])

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = features(batch)
        alone = features(healthy)

    # Unknown, not "100 % missing": the model reads NaN as "no evidence".
    assert np.isnan(result.values[0]).all()
    np.testing.assert_array_equal(result.values[1], alone.values[0])
    assert np.isfinite(alone.values[0]).all()


def test_features_of_a_target_do_not_depend_on_the_rest_of_the_batch():
    rng = np.random.default_rng(7)
    values = rng.random((5, 12, 4))
    values[rng.random(values.shape) < 0.2] = NAN
    values[3, :, 1] = NAN  # one target without memory at all
    batch = features(values).values

    for row in range(5):
        single = features(values[row : row + 1]).values[0]
        np.testing.assert_allclose(batch[row], single, rtol=1e-12, equal_nan=True)
    reordered = features(values[[4, 1, 3]]).values
    np.testing.assert_allclose(reordered, batch[[4, 1, 3]], rtol=1e-12, equal_nan=True)


def test_rising_memory_reaches_its_limit_in_the_projected_number_of_steps():
    result = features(
        window(
            memory=[
                [0.2, 0.3, 0.4, 0.5, 0.6, 0.7],  # +0.1 per step, 0.3 to go: 3 steps
                [0.6, 0.6, 0.6, 0.6, 0.6, 0.6],  # flat: never
                [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],  # falling: never
                [0.8, 0.9, 1.0, 1.1, 1.2, 1.3],  # already past the limit: now
            ]
        )
    )

    np.testing.assert_allclose(
        result.column("memory_exhaustion_steps"), [3.0, EXHAUSTION_CAP, EXHAUSTION_CAP, 0.0]
    )


def test_slow_cpu_growth_is_capped():
    result = features(window(cpu=[[0.1, 0.1001, 0.1002, 0.1003, 0.1004, 0.1005]]))

    assert result.column("cpu_exhaustion_steps")[0] == EXHAUSTION_CAP


def test_exhaustion_is_unknown_without_memory_samples():
    result = features(window(memory=[[NAN] * 6]))

    assert np.isnan(result.column("memory_exhaustion_steps")[0])


def test_cpu_times_memory_and_resource_pressure_use_the_last_values():
    result = features(
        window(
            cpu=[[0.9, 0.9, 0.9, 0.9, 0.9, 0.5], [NAN] * 6],
            memory=[[0.1, 0.1, 0.1, 0.1, 0.1, 0.8], [0.3, 0.3, 0.3, 0.3, 0.3, 0.6]],
        )
    )

    assert result.column("cpu_x_memory")[0] == pytest.approx(0.4)
    assert result.column("resource_pressure")[0] == pytest.approx(0.8)
    # Without CPU both are unknown: a cross-signal feature needs both signals, so dropping a
    # signal in training (dataset.drop_signals) blanks exactly the features it owns.
    assert np.isnan(result.column("cpu_x_memory")[1])
    assert np.isnan(result.column("resource_pressure")[1])


def test_errors_latency_correlation():
    errors = [0.0, 0.01, 0.02, 0.03, 0.04, 0.05]
    result = features(
        window(
            errors=[errors, errors, [0.02] * 6, [0.01, NAN, NAN, NAN, NAN, 0.02]],
            latency=[
                [0.1, 0.12, 0.14, 0.16, 0.18, 0.2],  # 0.1 + 2 * errors
                [0.2, 0.18, 0.16, 0.14, 0.12, 0.1],
                [0.1, 0.3, 0.2, 0.5, 0.1, 0.2],
                [0.1, 0.3, 0.2, 0.5, 0.1, 0.2],
            ],
        )
    )

    corr = result.column("errors_latency_corr")
    assert corr[0] == pytest.approx(1.0)
    assert corr[1] == pytest.approx(-1.0)
    assert corr[2] == 0.0  # flat errors: no co-movement, not NaN
    assert np.isnan(corr[3])  # two common samples are too few to say
    # errors_last * latency_last / latency_mean = 0.05 * 0.2 / 0.15
    assert result.column("errors_x_latency")[0] == pytest.approx(0.05 * 0.2 / 0.15)


def test_features_do_not_read_the_clock():
    values = window(cpu=[[0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [0.3] * 6])
    frames = [
        Frame(
            values=values,
            targets=({"pod": "a"}, {"pod": "b"}),
            timestamps=end - 60.0 * np.arange(6)[::-1],
            signals=SIGNALS,
        )
        for end in (1_700_000_000.0, 1_700_000_000.0 + 6 * 3600.0)
    ]

    morning, noon = (frame_features(frame) for frame in frames)

    np.testing.assert_array_equal(morning.values, noon.values)
    assert not [name for name in morning.names if "time" in name]
    np.testing.assert_allclose(morning.column("cpu_last"), [0.6, 0.3])


def test_a_signal_that_stopped_counts_the_steps_since_its_last_sample():
    result = features(window(latency=[[0.1, 0.2, 0.1, NAN, NAN, NAN], [0.1, 0.2, 0.1, 0.2, NAN, 0.1]]))

    np.testing.assert_array_equal(result.column("latency_stale"), [3.0, 0.0])
    np.testing.assert_allclose(result.column("latency_missing"), [0.5, 1 / 6])
    assert result.column("latency_last")[0] == pytest.approx(0.1)


def test_a_signal_never_reported_is_unknown_in_every_feature_of_it():
    values = window(cpu=[[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]], errors=[[NAN] * 6])

    result = features(values)

    of_errors = [i for i, name in enumerate(result.names) if "errors" in name]
    assert np.isnan(result.values[0, of_errors]).all()
    others = [i for i, name in enumerate(result.names) if "errors" not in name]
    assert np.isfinite(result.values[0, others]).all()


def test_absent_signals_and_reporting_drop_only_targets_without_any_signal():
    values = window(cpu=[[0.3] * 6, [NAN] * 6, [NAN] * 6], memory=[[0.5] * 6, [0.5] * 6, [NAN] * 6])
    values[1:, :, 2:] = NAN
    values[2] = NAN
    frame = Frame(values, ({"pod": "a"}, {"pod": "b"}, {"pod": "silent"}), np.arange(6) * 60.0, SIGNALS)

    absent = absent_signals(frame.values)
    kept = reporting(frame)

    np.testing.assert_array_equal(absent.sum(axis=0), [2, 1, 2, 2])
    assert [t["pod"] for t in kept.targets] == ["a", "b"]
    np.testing.assert_array_equal(kept.values, frame.values[:2])
    assert reporting(kept) is kept


def test_feature_names_match_the_computed_columns():
    for signals in (SIGNALS, ("cpu", "memory"), ("errors", "latency"), ("latency",)):
        values = np.full((2, 6, len(signals)), 0.5)
        computed = window_features(values, signals)

        assert computed.names == feature_names(signals)
        assert computed.values.shape == (2, len(feature_names(signals)))


def test_cross_signal_features_need_both_signals():
    names = feature_names(("cpu", "latency"))

    assert "cpu_exhaustion_steps" in names
    assert "memory_exhaustion_steps" not in names
    assert "cpu_x_memory" not in names
    assert "errors_latency_corr" not in names


def test_empty_batch_has_named_columns_and_no_rows():
    result = window_features(np.empty((0, 6, 4)), SIGNALS)

    assert result.values.shape == (0, len(feature_names(SIGNALS)))


def test_select_reorders_columns_and_fills_nan_for_missing_features():
    given = Features(values=np.array([[1.0, 2.0], [3.0, 4.0]]), names=("a", "b"))

    chosen = select(given, ["b", "unknown", "a"])

    np.testing.assert_array_equal(chosen, [[2.0, NAN, 1.0], [4.0, NAN, 3.0]])


def test_signal_weights_split_cross_features_between_their_signals():
    names = feature_names(SIGNALS)
    weights = signal_weights(names, SIGNALS)
    row = {name: list(weights[i]) for i, name in enumerate(names)}

    assert row["cpu_mean"] == [1.0, 0.0, 0.0, 0.0]
    assert row["memory_exhaustion_steps"] == [0.0, 1.0, 0.0, 0.0]
    assert row["errors_missing"] == [0.0, 0.0, 0.0, 1.0]
    assert row["cpu_x_memory"] == [0.5, 0.5, 0.0, 0.0]
    assert row["resource_pressure"] == [0.5, 0.5, 0.0, 0.0]
    assert row["errors_latency_corr"] == [0.0, 0.0, 0.5, 0.5]
    assert row["errors_x_latency"] == [0.0, 0.0, 0.5, 0.5]
    assert row["latency_stale"] == [0.0, 0.0, 1.0, 0.0]
    np.testing.assert_allclose(weights.sum(axis=1), 1.0)


def test_signal_weights_tell_apart_signals_whose_names_share_a_prefix():
    signals = ("cpu", "cpu_throttle")
    names = feature_names(signals)
    weights = dict(zip(names, signal_weights(names, signals).tolist(), strict=True))

    assert weights["cpu_mean"] == [1.0, 0.0]
    assert weights["cpu_throttle_mean"] == [0.0, 1.0]
    assert weights["cpu_exhaustion_steps"] == [1.0, 0.0]


def reference_stats(x: np.ndarray) -> dict[str, np.ndarray]:
    """The per-signal statistics spelled out in numpy, as features.py computed them before its
    compiled kernel: the kernel must agree on every shape of series."""
    from exporter.features import EDGE, SHORT_SPAN

    def nan_mean(v):
        p = np.isfinite(v)
        return np.where(p, v, 0.0).sum(axis=1) / p.sum(axis=1)

    def nan_slope(v):
        p = np.isfinite(v)
        n = p.sum(axis=1)
        t = np.broadcast_to(np.arange(v.shape[1], dtype=float), v.shape)
        dt = np.where(p, t - nan_mean(np.where(p, t, np.nan))[:, None], 0.0)
        dx = np.where(p, v - nan_mean(v)[:, None], 0.0)
        return np.where(n >= 2, (dt * dx).sum(axis=1) / (dt * dt).sum(axis=1), np.nan)

    def nan_median(v):
        p = np.isfinite(v)
        n = p.sum(axis=1)
        ordered = np.sort(np.where(p, v, np.nan), axis=1)
        rows = np.arange(len(v))
        low, high = (
            ordered[rows, np.maximum(n - 1, 0) // 2],
            ordered[rows, np.minimum(n // 2, v.shape[1] - 1)],
        )
        return np.where(n > 0, (low + high) / 2, np.nan)

    present = np.isfinite(x)
    count = present.sum(axis=1)
    empty = count == 0
    mean = nan_mean(x)
    std = np.sqrt(np.where(present, (x - mean[:, None]) ** 2, 0.0).sum(axis=1) / count)
    offset = np.argmax(present[:, ::-1], axis=1)
    last = np.where(empty, np.nan, x[np.arange(len(x)), x.shape[1] - 1 - offset])
    slope = nan_slope(x)
    median, recent_median = nan_median(x), nan_median(x[:, -SHORT_SPAN:])
    recent = present[:, -SHORT_SPAN:]
    return {
        "last": last,
        "mean": mean,
        "std": std,
        "min": np.where(empty, np.nan, np.where(present, x, np.inf).min(axis=1)),
        "max": np.where(empty, np.nan, np.where(present, x, -np.inf).max(axis=1)),
        "slope": slope,
        "zscore": (last - mean) / np.maximum(std, 1e-3 * (np.abs(mean) + 1e-3)),
        "rate_short": nan_slope(x[:, -SHORT_SPAN:]),
        "rate_long": (nan_mean(x[:, -EDGE:]) - nan_mean(x[:, :EDGE])) / (x.shape[1] - EDGE),
        "rel_change": slope * x.shape[1] / (np.abs(mean) + 1e-6),
        "missing": np.where(empty, np.nan, 1.0 - count / x.shape[1]),
        "stale": np.where(empty, np.nan, offset.astype(float)),
        "median": median,
        "recent_median": recent_median,
        "level_shift": (recent_median - median) / (np.abs(median) + 1e-6),
        "recent_missing": np.where(empty, np.nan, 1.0 - recent.sum(axis=1) / recent.shape[1]),
    }


@pytest.mark.parametrize("steps", [60, 11, 7])
def test_compiled_statistics_equal_the_numpy_definitions_on_every_shape_of_series(steps):
    rng = np.random.default_rng(steps)
    x = rng.lognormal(0, 2, (400, steps)) * rng.choice([1e-6, 1, 1e6], (400, 1))
    x[rng.random(x.shape) < 0.3] = np.nan  # scrape gaps
    x[:40] = np.nan  # never reported
    x[40:60, :-1] = np.nan  # one sample, the newest
    x[60:80, -12:] = np.nan  # stopped reporting
    x[80:90] = 0.005  # flat and tiny
    x[90:95, 3] = np.inf  # an absurd sample counts as none
    values = x[:, :, None].repeat(len(SIGNALS), axis=2)

    with np.errstate(all="ignore"):
        expected = reference_stats(x)
    result = features(values)

    for stat in PER_SIGNAL:
        np.testing.assert_allclose(
            result.column(f"cpu_{stat}"), expected[stat], rtol=1e-9, atol=1e-12, err_msg=stat
        )
