"""Human-readable advice derived from what drives a target's score.

The advice follows the signals whose SHAP contributions push the score up the
most (their shares, see ``snapshot.contribution_shares``), phrased with the
window features behind them: how close memory is to its limit and how fast it
grows, how far latency is above its recent average, how high the error ratio
climbed. It is a starting point for a runbook, not a diagnosis.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from exporter.features import EXHAUSTION_CAP
from exporter.snapshot import RISK_THRESHOLDS

MIN_SHARE = 0.2  # a signal explaining less of the risk than this gets no advice of its own
ANOMALOUS = 0.95  # anomaly score about two standard deviations out (see models/anomaly.py)
NO_ACTION = "No action needed: nothing in the window points to a failure within the horizon."


def recommend(
    probability: float,
    anomaly: float,
    shares: Mapping[str, float],
    features: Mapping[str, float],
    step: float,
) -> list[str]:
    """Advice for one target, most important first.

    ``shares`` is each signal's share of what pushes the score up, ``features`` the
    window features by name (NaN where unknown), ``step`` the seconds per window step.
    """
    advice = []
    if probability >= RISK_THRESHOLDS[0]:
        drivers = sorted(
            ((share, name) for name, share in shares.items() if share >= MIN_SHARE), reverse=True
        )
        advice = [_for_signal(name, features, step) for _, name in drivers]
    if anomaly >= ANOMALOUS:
        advice.append(
            f"Behaviour is unusual (anomaly score {anomaly:.2f}) even where it does not match a known "
            "failure pattern: compare with the workload's dashboards and its most recent changes."
        )
    return advice or [NO_ACTION]


def _for_signal(signal: str, features: Mapping[str, float], step: float) -> str:
    def value(name: str) -> float:
        return features.get(f"{signal}_{name}", math.nan)

    last, slope = value("last"), value("slope")
    per_minute = slope / step * 60.0
    if signal == "memory":
        return (
            f"Memory is at {_percent(last)} of its limit{_growth(per_minute, value('exhaustion_steps'), step)}: "
            "check for a memory leak (heap profile, what changed recently), raise the memory limit, "
            "or restart the pod before it is OOM-killed."
        )
    if signal == "cpu":
        return (
            f"CPU is at {_percent(last)} of its limit{_growth(per_minute, value('exhaustion_steps'), step)}: "
            "expect throttling; raise the CPU limit or scale out (more replicas, HPA), "
            "and look for a hot loop or a load spike."
        )
    if signal == "latency":
        mean = value("mean")
        versus = f", {last / mean:.1f}x its window average" if mean > 0 and math.isfinite(last) else ""
        return (
            f"p99 latency is {_number(last)} s{versus}: check downstream dependencies, connection pools "
            "and saturation; scale out if the load rose."
        )
    if signal == "errors":
        trend = f" and rising by {per_minute * 100:.2g} points per minute" if per_minute > 0 else ""
        return (
            f"The error ratio is {_percent(last)}{trend}: check the latest deployment or config change "
            "and roll it back if the errors started with it; check the dependencies it calls."
        )
    return (
        f"Signal {signal!r} drives the risk (last value {_number(last)}): "
        "check what changed in it over the window."
    )


def _growth(per_minute: float, exhaustion_steps: float, step: float) -> str:
    if not per_minute > 0:
        return ""
    text = f", growing {per_minute * 100:.2g} points per minute"
    if exhaustion_steps <= 0:
        text += ", already at the limit"
    elif exhaustion_steps < EXHAUSTION_CAP:
        text += f" and reaching it in about {_duration(exhaustion_steps * step)}"
    return text


def _percent(ratio: float) -> str:
    return f"{ratio:.0%}" if math.isfinite(ratio) else "an unknown share"


def _number(x: float) -> str:
    return f"{x:.3g}" if math.isfinite(x) else "unknown"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(seconds, 0):.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
