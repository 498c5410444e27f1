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

ALERT_THRESHOLD = 0.35  # HighFailureProbability's threshold in rules/failure-predictor.rules.yml
FALSE_ALARM_BUDGET = 1.0  # false alarm episodes per target-day an on-call team can live with
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
    timeline = _Timeline(rows_target, rows_time, failure_target, failure_time, horizon)
    return timeline.metrics(probability >= threshold)


class _Timeline:
    """Rows and failures sorted once by (target, time), so each threshold costs O(rows)."""

    def __init__(
        self,
        rows_target: np.ndarray,
        rows_time: np.ndarray,
        failure_target: np.ndarray,
        failure_time: np.ndarray,
        horizon: float,
    ) -> None:
        self.order = np.lexsort((rows_time, rows_target))
        self.target = np.asarray(rows_target)[self.order]
        self.time = np.asarray(rows_time, dtype=float)[self.order]
        self.key = _key(self.target, self.time)
        failures = np.argsort(_key(failure_target, failure_time), kind="stable")
        self.failure_key = _key(failure_target, failure_time)[failures]
        self.failure_time = np.asarray(failure_time, dtype=float)[failures]
        self.horizon = horizon
        self.target_days = _target_days(rows_target, rows_time)
        # Rows in [start - horizon, start) of each failure's own target: [first, stop).
        self.first = np.searchsorted(self.key, self.failure_key - horizon, side="left")
        self.stop = np.searchsorted(self.key, self.failure_key, side="left")

    def metrics(self, warned_in_row_order: np.ndarray) -> dict[str, Any]:
        warned = np.asarray(warned_in_row_order, bool)[self.order]
        leads = self._leads(warned)
        false_alarms = self._false_alarms(warned)
        events = len(self.failure_key)
        found = leads[np.isfinite(leads)]
        return {
            "failures": events,
            "event_recall": len(found) / events if events else float("nan"),
            "false_alarms": false_alarms,
            "false_alarms_per_target_day": false_alarms / self.target_days
            if self.target_days
            else float("nan"),
            "lead_time_minutes": {f"p{p}": float(np.percentile(found, p)) for p in LEAD_PERCENTILES}
            if len(found)
            else {},
        }

    def _leads(self, warned: np.ndarray) -> np.ndarray:
        """Minutes from the first warned row before each failure to its start; NaN if none."""
        n = len(warned)
        index = np.where(warned, np.arange(n), n)
        next_warned = np.append(np.minimum.accumulate(index[::-1])[::-1], n)
        hit = next_warned[self.first]
        ok = hit < self.stop
        leads = np.full(len(self.failure_key), np.nan)
        leads[ok] = (self.failure_time[ok] - self.time[hit[ok]]) / 60.0
        return leads

    def _false_alarms(self, warned: np.ndarray) -> int:
        if not warned.any():
            return 0
        same = np.concatenate(([False], self.target[1:] == self.target[:-1]))
        begins = warned & ~(np.concatenate(([False], warned[:-1])) & same)
        ends = warned & ~(np.concatenate((warned[1:], [False])) & np.append(same[1:], False))
        first_key, last_key = self.key[begins], self.key[ends]
        # A failure of the same target starting in (first, last + horizon] makes it a true alarm.
        low = np.searchsorted(self.failure_key, first_key, side="right")
        high = np.searchsorted(self.failure_key, last_key + self.horizon, side="right")
        return int((high <= low).sum())


def _key(target: np.ndarray, time: np.ndarray) -> np.ndarray:
    """One sortable number per (target, time): targets 1e11 s (3,000 years) apart."""
    return np.asarray(target, dtype=float) * 1e11 + np.asarray(time, dtype=float)


def _target_days(rows_target: np.ndarray, rows_time: np.ndarray) -> float:
    if len(rows_time) == 0:
        return 0.0
    return len(np.unique(rows_target)) * (rows_time.max() - rows_time.min()) / 86_400.0


def threshold_for_false_alarms(
    rows_target: np.ndarray,
    rows_time: np.ndarray,
    probability: np.ndarray,
    failures: tuple[np.ndarray, np.ndarray],
    horizon: float,
    budget: float = FALSE_ALARM_BUDGET,
) -> float:
    """The lowest threshold at which this and every higher one raise at most ``budget``
    false alarm episodes per target-day (1.0 when none does below it)."""
    timeline = _Timeline(rows_target, rows_time, *failures, horizon)
    candidates = np.unique(np.round(np.quantile(probability, np.linspace(0.5, 1.0, 400)), 3))
    candidates = np.unique(np.concatenate([candidates, np.round(np.arange(0.05, 1.0, 0.01), 2)]))
    within = np.array(
        [timeline.metrics(probability >= t)["false_alarms_per_target_day"] <= budget for t in candidates]
    )
    outside = np.flatnonzero(~within)
    if not len(outside):
        return float(candidates[0])
    above = candidates[outside[-1] + 1 :]
    return float(above[0]) if len(above) else 1.0


def expected_calibration_error(table: list[dict[str, float]]) -> float:
    """Row-weighted mean gap between predicted and observed rates over the reliability bins."""
    rows = sum(b["rows"] for b in table)
    if not rows:
        return float("nan")
    return float(sum(b["rows"] * abs(b["predicted"] - b["observed"]) for b in table) / rows)


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
    supported_threshold: float | None = None,
) -> dict[str, Any]:
    """Everything the manifest and the printed report say about the rows in ``rows``.

    ``supported_threshold`` is the threshold chosen on the calibration rows for at most
    FALSE_ALARM_BUDGET false alarms per target-day; the report says what it gives on
    these rows. ``budget_threshold_here`` is the same search run on these rows
    themselves: what this period would have needed, for comparison, never for choosing.
    """
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
        "budget": FALSE_ALARM_BUDGET,
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
    report["ece"] = expected_calibration_error(report["reliability"])
    here = threshold_for_false_alarms(target, time, probability, failures, horizon)
    report["budget_threshold_here"] = here
    report["at_budget_threshold_here"] = event_metrics(target, time, probability, *failures, horizon, here)
    if supported_threshold is not None:
        report["supported_threshold"] = supported_threshold
        report["at_supported_threshold"] = event_metrics(
            target, time, probability, *failures, horizon, supported_threshold
        )
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
    lines += [
        "",
        f"what the pager sees (at most {report.get('budget', FALSE_ALARM_BUDGET):g} false alarm per target-day):",
    ]
    rows = [("shipped alert threshold", report["threshold"], report)]
    if "supported_threshold" in report:
        rows.append(
            ("chosen on calibration", report["supported_threshold"], report["at_supported_threshold"])
        )
    if "budget_threshold_here" in report:
        rows.append(
            ("needed on this period", report["budget_threshold_here"], report["at_budget_threshold_here"])
        )
    lines.append(f"  {'':<26}{'threshold':>10}{'warned':>9}{'false/target-day':>18}{'median lead':>13}")
    for label, threshold, events in rows:
        lead = events["lead_time_minutes"].get("p50", float("nan"))
        lines.append(
            f"  {label:<26}{threshold:>10.2f}{events['event_recall']:>9.1%}"
            f"{events['false_alarms_per_target_day']:>18.2f}{lead:>9.0f} min"
        )
    lead = report["lead_time_minutes"]
    if lead:
        lines += [
            "",
            "lead time of the first warning at the shipped threshold (minutes): "
            + ", ".join(f"{k} {v:.0f}" for k, v in lead.items()),
        ]
    lines += [
        "",
        f"reliability (is 0.8 really 80 %?), expected calibration error {report.get('ece', float('nan')):.4f}:",
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
