"""The advice the API gives follows the signals that drive the risk and the features behind them."""

from __future__ import annotations

import math

from exporter.recommend import NO_ACTION, recommend

NAN = math.nan
CALM = {"cpu": 0.0, "memory": 0.0, "latency": 0.0, "errors": 0.0}


def test_memory_growing_towards_its_limit_suggests_a_leak_and_says_when():
    features = {"memory_last": 0.84, "memory_slope": 0.02, "memory_exhaustion_steps": 8.0}

    [advice] = recommend(0.9, 0.1, CALM | {"memory": 0.9, "cpu": 0.1}, features, step=60.0)

    assert advice.startswith(
        "Memory is at 84% of its limit, growing 2 points per minute and reaching it in about 8 min"
    )
    assert "memory leak" in advice and "raise the memory limit" in advice and "restart" in advice


def test_memory_already_at_its_limit_says_so():
    features = {"memory_last": 1.02, "memory_slope": 0.01, "memory_exhaustion_steps": 0.0}

    [advice] = recommend(0.9, 0.1, CALM | {"memory": 1.0}, features, step=60.0)

    assert ", already at the limit:" in advice


def test_rising_error_ratio_points_at_the_latest_deployment():
    features = {"errors_last": 0.07, "errors_slope": 0.004}

    [advice] = recommend(0.7, 0.2, CALM | {"errors": 0.8}, features, step=60.0)

    assert advice.startswith("The error ratio is 7% and rising by 0.4 points per minute")
    assert "latest deployment" in advice and "roll it back" in advice


def test_cpu_and_latency_advice_come_in_order_of_their_share():
    features = {"cpu_last": 0.97, "cpu_slope": 0.0, "latency_last": 1.2, "latency_mean": 0.3}

    advice = recommend(0.5, 0.1, CALM | {"cpu": 0.3, "latency": 0.6}, features, step=60.0)

    assert advice[0].startswith("p99 latency is 1.2 s, 4.0x its window average")
    assert advice[1].startswith("CPU is at 97% of its limit:")
    assert "throttling" in advice[1]


def test_per_step_rates_scale_with_the_step():
    features = {"memory_last": 0.5, "memory_slope": 0.01, "memory_exhaustion_steps": 50.0}

    [advice] = recommend(0.9, 0.1, CALM | {"memory": 1.0}, features, step=1.0)

    assert "growing 60 points per minute and reaching it in about 50 s" in advice


def test_minor_signals_and_minimal_risk_get_no_advice():
    assert recommend(0.1, 0.1, CALM | {"memory": 1.0}, {"memory_last": 0.9}, step=60.0) == [NO_ACTION]
    assert recommend(0.5, 0.1, CALM | {"memory": 0.1, "cpu": 0.1}, {}, step=60.0) == [NO_ACTION]


def test_unusual_behaviour_is_mentioned_even_at_low_risk():
    [advice] = recommend(0.05, 0.99, CALM, {}, step=60.0)

    assert "unusual (anomaly score 0.99)" in advice


def test_unknown_values_and_extra_signals_still_read_well():
    advice = recommend(0.9, 0.1, {"memory": 0.5, "gc_pause": 0.5}, {"memory_last": NAN}, step=60.0)

    assert advice[0].startswith("Memory is at an unknown share of its limit:") or advice[1].startswith(
        "Memory is at an unknown share of its limit:"
    )
    assert any(line.startswith("Signal 'gc_pause' drives the risk (last value unknown)") for line in advice)
