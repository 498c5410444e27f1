"""Held-out metrics that say how far to trust a model, next to two baselines.

Row metrics (ROC-AUC, PR-AUC, Brier, precision/recall/F1 at the alert threshold)
score windows; event metrics score failures and alarms, which is what an
on-call engineer experiences: was this failure warned about, how long before it
started, and how often did the pager go off for nothing?

The baselines are what a team would otherwise alert on, computed from the same
windows: a static threshold rule on the raw signals, and ``predict_linear``-style
extrapolation of memory and errors over the horizon.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from exporter.features import signal_weights
from exporter.training.dataset import Dataset

ALERT_THRESHOLD = 0.8
# The static rule: any of these on the newest sample (latency: x times its window mean).
STATIC_LIMITS = {"cpu_last": 0.9, "memory_last": 0.9, "errors_last": 0.05}
LATENCY_FACTOR = 3.0
LEAD_PERCENTILES = (10, 25, 50, 75, 90)


def row_metrics(
    y: np.ndarray, probability: np.ndarray, threshold: float = ALERT_THRESHOLD
) -> dict[str, float]:
    warned = probability >= threshold
    true_positive = float((warned & (y == 1)).sum())
    precision = true_positive / warned.sum() if warned.any() else float("nan")
    recall = true_positive / (y == 1).sum() if (y == 1).any() else float("nan")
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else float("nan")
    both_classes = len(np.unique(y)) == 2
    return {
        "roc_auc": float(roc_auc_score(y, probability)) if both_classes else float("nan"),
        "pr_auc": float(average_precision_score(y, probability)) if both_classes else float("nan"),
        "brier": float(brier_score_loss(y, np.clip(probability, 0, 1))),
        "base_rate": float(y.mean()) if len(y) else float("nan"),
        "precision_at_threshold": float(precision),
        "recall_at_threshold": float(recall),
        "f1_at_threshold": float(f1),
    }


def event_metrics(
    rows_target: np.ndarray,
    rows_time: np.ndarray,
    probability: np.ndarray,
    failure_target: np.ndarray,
    failure_time: np.ndarray,
    horizon: float,
    threshold: float = ALERT_THRESHOLD,
) -> dict[str, Any]:
    """Per failure: warned when some row of its target in [start - horizon, start) crossed
    the threshold; the lead time runs from the first such row to the start. An alarm
    episode (consecutive warned rows of a target) is false when no failure starts
    within the horizon after any of its rows."""
    warned = probability >= threshold
    leads = []
    for target, start in zip(failure_target, failure_time, strict=True):
        before = (rows_target == target) & (rows_time >= start - horizon) & (rows_time < start) & warned
        if before.any():
            leads.append((start - rows_time[before].min()) / 60.0)
    false_alarms = _false_alarm_episodes(
        rows_target, rows_time, warned, failure_target, failure_time, horizon
    )
    target_days = _target_days(rows_target, rows_time)
    events = len(failure_time)
    return {
        "failures": events,
        "event_recall": len(leads) / events if events else float("nan"),
        "false_alarms": false_alarms,
        "false_alarms_per_target_day": false_alarms / target_days if target_days else float("nan"),
        "lead_time_minutes": {f"p{p}": float(np.percentile(leads, p)) for p in LEAD_PERCENTILES}
        if leads
        else {},
    }


def _false_alarm_episodes(
    rows_target: np.ndarray,
    rows_time: np.ndarray,
    warned: np.ndarray,
    failure_target: np.ndarray,
    failure_time: np.ndarray,
    horizon: float,
) -> int:
    order = np.lexsort((rows_time, rows_target))
    target, time, alarm = rows_target[order], rows_time[order], warned[order]
    begins = alarm & ~np.concatenate(([False], alarm[:-1] & (target[1:] == target[:-1])))
    episode = np.cumsum(begins)
    false = 0
    for number in np.unique(episode[alarm]):
        members = alarm & (episode == number)
        owner, first, last = target[members][0], time[members].min(), time[members].max()
        starts = failure_time[failure_target == owner]
        if not ((starts > first) & (starts <= last + horizon)).any():
            false += 1
    return false


def _target_days(rows_target: np.ndarray, rows_time: np.ndarray) -> float:
    if len(rows_time) == 0:
        return 0.0
    return len(np.unique(rows_target)) * (rows_time.max() - rows_time.min()) / 86_400.0


def reliability_table(y: np.ndarray, probability: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Predicted vs observed failure rate per probability bin (is 0.8 really 80 %?)."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(probability, edges) - 1, 0, bins - 1)
    table = []
    for b in range(bins):
        members = index == b
        if members.any():
            table.append(
                {
                    "low": round(float(edges[b]), 2),
                    "high": round(float(edges[b + 1]), 2),
                    "rows": int(members.sum()),
                    "predicted": float(probability[members].mean()),
                    "observed": float(y[members].mean()),
                }
            )
    return table


def _column(X: np.ndarray, names: Sequence[str], name: str) -> np.ndarray:
    return X[:, list(names).index(name)] if name in names else np.full(len(X), np.nan)


def static_threshold_score(X: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """How far the worst raw signal is towards its static limit; >= 1 means the rule fires."""
    ratios = [_column(X, names, name) / limit for name, limit in STATIC_LIMITS.items()]
    latency = _column(X, names, "latency_last") / (LATENCY_FACTOR * _column(X, names, "latency_mean"))
    with np.errstate(invalid="ignore"):
        return np.nan_to_num(np.fmax.reduce([*ratios, latency]), nan=0.0)


def linear_extrapolation_score(X: np.ndarray, names: Sequence[str], horizon_steps: int) -> np.ndarray:
    """``predict_linear`` of memory (towards its limit) and errors (towards 5 %) over the
    horizon; >= 1 means the extrapolation crosses the limit within the horizon."""
    memory = _column(X, names, "memory_last") + _column(X, names, "memory_slope") * horizon_steps
    errors = _column(X, names, "errors_last") + _column(X, names, "errors_slope") * horizon_steps
    with np.errstate(invalid="ignore"):
        return np.nan_to_num(np.fmax(memory / 1.0, errors / 0.05), nan=0.0)


def baseline_metrics(
    score: np.ndarray,
    y: np.ndarray,
    rows_target: np.ndarray,
    rows_time: np.ndarray,
    failures: tuple,
    horizon: float,
) -> dict[str, Any]:
    """A rule scored like the model: ranking metrics on its raw score, alarms where it fires (>= 1)."""
    ranking = row_metrics(y, score / (1.0 + score))
    fired = (score >= 1.0).astype(float)
    at_rule = row_metrics(y, fired, threshold=1.0)
    events = event_metrics(rows_target, rows_time, fired, *failures, horizon, threshold=1.0)
    return {
        "roc_auc": ranking["roc_auc"],
        "pr_auc": ranking["pr_auc"],
        "precision_at_threshold": at_rule["precision_at_threshold"],
        "recall_at_threshold": at_rule["recall_at_threshold"],
        "f1_at_threshold": at_rule["f1_at_threshold"],
        **events,
    }


def evaluation_report(
    dataset: Dataset,
    rows: np.ndarray,
    probability: np.ndarray,
    horizon_steps: int,
    step: float,
    importance: np.ndarray | None,
    signals: Sequence[str],
) -> dict[str, Any]:
    """Everything the manifest and the printed report say about the rows in ``rows``."""
    horizon = horizon_steps * step
    y, X = dataset.y[rows], dataset.X[rows]
    target, time = dataset.target[rows], dataset.time[rows]
    first = time.min() if len(time) else 0.0
    in_period = (dataset.failure_time >= first + horizon) & (
        dataset.failure_time <= time.max() if len(time) else False
    )
    failures = (dataset.failure_target[in_period], dataset.failure_time[in_period])
    report: dict[str, Any] = {
        "period": {
            "start": iso_time(first),
            "end": iso_time(time.max() if len(time) else 0.0),
            "rows": len(y),
        },
        "threshold": ALERT_THRESHOLD,
        **row_metrics(y, probability),
        **event_metrics(target, time, probability, *failures, horizon),
        "reliability": reliability_table(y, probability),
        "baselines": {
            "static_threshold": baseline_metrics(
                static_threshold_score(X, dataset.names), y, target, time, failures, horizon
            ),
            "linear_extrapolation": baseline_metrics(
                linear_extrapolation_score(X, dataset.names, horizon_steps),
                y,
                target,
                time,
                failures,
                horizon,
            ),
        },
    }
    if importance is not None:
        order = np.argsort(-importance)[:15]
        report["feature_importance"] = {dataset.names[i]: round(float(importance[i]), 4) for i in order}
        per_signal = importance @ signal_weights(dataset.names, signals)
        report["signal_importance"] = {
            s: round(float(v), 4) for s, v in zip(signals, per_signal, strict=True)
        }
    return report


def iso_time(timestamp: float) -> str:
    """Unix seconds as an ISO 8601 UTC string, for reports and manifests."""
    return datetime.fromtimestamp(float(timestamp), UTC).isoformat()


def format_report(report: dict[str, Any]) -> str:
    """The report as a page a human reads top to bottom."""
    period = report["period"]
    lines = [
        f"held-out period {period['start']} .. {period['end']} ({period['rows']:,} windows, "
        f"base rate {report['base_rate']:.4f})",
        "",
        f"{'':<26}{'model':>10}{'static rule':>13}{'linear extrap.':>16}",
    ]
    static, linear = report["baselines"]["static_threshold"], report["baselines"]["linear_extrapolation"]
    for key, label in (
        ("roc_auc", "ROC-AUC"),
        ("pr_auc", "PR-AUC"),
        ("precision_at_threshold", "precision at alert"),
        ("recall_at_threshold", "recall at alert"),
        ("f1_at_threshold", "F1 at alert"),
        ("event_recall", "failures warned"),
        ("false_alarms_per_target_day", "false alarms / target-day"),
    ):
        lines.append(f"{label:<26}{report[key]:>10.3f}{static[key]:>13.3f}{linear[key]:>16.3f}")
    lines.append(f"{'Brier score':<26}{report['brier']:>10.4f}")
    lines.append(
        f"(alert: model >= {report['threshold']}, rules when they fire; {report['failures']} failures)"
    )
    lead = report["lead_time_minutes"]
    if lead:
        lines += [
            "",
            "lead time of the first warning (minutes): " + ", ".join(f"{k} {v:.0f}" for k, v in lead.items()),
        ]
    lines += [
        "",
        "reliability (is 0.8 really 80 %?):",
        f"  {'bin':<11}{'windows':>9}{'predicted':>11}{'observed':>10}",
    ]
    for row in report["reliability"]:
        lines.append(
            f"  {row['low']:.1f}-{row['high']:.1f}    {row['rows']:>9,}{row['predicted']:>11.3f}{row['observed']:>10.3f}"
        )
    if "signal_importance" in report:
        lines += [
            "",
            "importance by signal: "
            + ", ".join(f"{k} {v:.2f}" for k, v in report["signal_importance"].items()),
        ]
        top = list(report["feature_importance"].items())[:8]
        lines.append("top features: " + ", ".join(f"{k} {v:.2f}" for k, v in top))
    return "\n".join(lines)
