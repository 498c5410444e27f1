"""Held-out metrics that say how far to trust the model.

Row metrics (ROC-AUC, PR-AUC, Brier, precision/recall at the alert threshold)
score windows; event metrics score failures, which is what an on-call engineer
experiences: was this failure warned about, and how long before it started?
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

ALERT_THRESHOLD = 0.8


def row_metrics(
    y: np.ndarray, probability: np.ndarray, threshold: float = ALERT_THRESHOLD
) -> dict[str, float]:
    warned = probability >= threshold
    true_positive = float((warned & (y == 1)).sum())
    precision = true_positive / warned.sum() if warned.any() else float("nan")
    recall = true_positive / (y == 1).sum() if (y == 1).any() else float("nan")
    return {
        "roc_auc": float(roc_auc_score(y, probability)),
        "pr_auc": float(average_precision_score(y, probability)),
        "brier": float(brier_score_loss(y, probability)),
        "base_rate": float(y.mean()),
        "precision_at_threshold": float(precision),
        "recall_at_threshold": float(recall),
    }


def event_metrics(
    rows_target: np.ndarray,
    rows_time: np.ndarray,
    probability: np.ndarray,
    failure_target: np.ndarray,
    failure_time: np.ndarray,
    horizon: float,
    threshold: float = ALERT_THRESHOLD,
) -> dict[str, float]:
    """Per failure: warned when some row of its target in [start - horizon, start) crossed
    the threshold; the lead time is from the first such row to the start."""
    warned_rows = probability >= threshold
    leads = []
    for target, start in zip(failure_target, failure_time, strict=True):
        before = (rows_target == target) & (rows_time >= start - horizon) & (rows_time < start) & warned_rows
        if before.any():
            leads.append(start - rows_time[before].min())
    events = len(failure_time)
    return {
        "failures": float(events),
        "event_recall": len(leads) / events if events else float("nan"),
        "median_lead_time_seconds": float(np.median(leads)) if leads else float("nan"),
    }


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
                    "low": float(edges[b]),
                    "high": float(edges[b + 1]),
                    "rows": int(members.sum()),
                    "predicted": float(probability[members].mean()),
                    "observed": float(y[members].mean()),
                }
            )
    return table
