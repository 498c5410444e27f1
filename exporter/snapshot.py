"""The immutable result of one scoring cycle.

A cycle builds a new Snapshot and swaps one reference; the collector and the HTTP
handlers only read whichever Snapshot is current, so they never see half a cycle
and need no locks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

RISK_THRESHOLDS = np.array([0.2, 0.4, 0.6, 0.8])
RISK_NAMES = ("MINIMAL", "LOW", "MEDIUM", "HIGH", "CRITICAL")


def risk_levels(probability: np.ndarray) -> np.ndarray:
    """0 minimal .. 4 critical; a probability equal to a threshold takes the higher level."""
    return np.searchsorted(RISK_THRESHOLDS, probability, side="right")


def risk_floor(name: str) -> float:
    """The lowest probability at risk level ``name`` (case-insensitive): 0 for minimal."""
    level = RISK_NAMES.index(name.upper())
    return 0.0 if level == 0 else float(RISK_THRESHOLDS[level - 1])


def contribution_shares(signal_contributions: np.ndarray) -> np.ndarray:
    """Each signal's share of what pushes the score *up* (rows sum to 1, or 0 if nothing does).

    Signals arguing for "healthy" get 0: the question an operator asks is "why is
    this risky?", not "what is it made of?".
    """
    positive = np.clip(signal_contributions, 0.0, None)
    total = positive.sum(axis=1, keepdims=True)
    return np.divide(positive, total, out=np.zeros_like(positive), where=total > 0)


@dataclass(frozen=True)
class ModelInfo:
    version: str
    trained_at: str
    kind: str


@dataclass(frozen=True)
class Explanations:
    """What the model saw and why it scored as it did: row i explains ``Snapshot.targets[i]``."""

    features: tuple[str, ...]  # the model's feature order
    values: np.ndarray  # [targets, features] the model's inputs (NaN where missing)
    contributions: np.ndarray  # [targets, features + 1] SHAP on the margin, last column the bias
    # The cycle explains only targets at risk (NaN rows otherwise); this computes the rest
    # on demand with the bundle that scored them (ModelBundle.explainer).
    explain: Callable[[np.ndarray], np.ndarray] | None = None

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """SHAP of ``rows``, computing on demand those the cycle left unexplained."""
        contributions = self.contributions[rows]
        missing = np.isnan(contributions).all(axis=1)
        if missing.any() and self.explain is not None:
            contributions[missing] = self.explain(self.values[rows[missing]])
        return contributions


@dataclass(frozen=True)
class Bands:
    """What the anomaly statistics expected of each target's newest samples (models/normalize.py)
    and where cpu/memory are heading (models/trend.py); row i is ``Snapshot.targets[i]``."""

    signals: tuple[str, ...]  # the signals queried (columns below)
    expected: (
        np.ndarray | None
    )  # [targets, signals, 3] lower, mean, upper (NaN: no band yet); None: not exported
    time_to_limit: np.ndarray  # [targets, signals] seconds until the ratio reaches 1.0 (NaN: not approaching)
    history: np.ndarray  # [targets] samples behind each target's statistics


@dataclass(frozen=True)
class Snapshot:
    """Scores of every target at ``data_time``; row i of each array is ``targets[i]``."""

    created_at: float
    data_time: float
    horizon: str
    model: ModelInfo
    signals: tuple[str, ...]
    targets: tuple[Mapping[str, str], ...]
    probability: np.ndarray
    anomaly: np.ndarray
    contribution: np.ndarray  # [targets, signals] shares, see contribution_shares; NaN: not explained
    explanations: Explanations | None = None  # per-feature detail for the HTTP API
    drift: tuple[float, ...] | None = None  # PSI per signal (same order as signals), see models/drift.py
    bands: Bands | None = None  # expected bands, time to limit, history behind anomaly_score

    @property
    def risk(self) -> np.ndarray:
        return risk_levels(self.probability)

    def top_signals(self, row: int, count: int = 2) -> list[tuple[str, float]]:
        """The signals pushing this target's score up the most, largest first (none if not explained)."""
        return top_shares(self.signals, self.contribution[row], count)


def top_shares(signals: tuple[str, ...], shares: np.ndarray, count: int = 2) -> list[tuple[str, float]]:
    """The ``count`` signals with the largest positive shares, largest first."""
    order = np.argsort(-shares, kind="stable")[:count]
    return [(signals[i], float(shares[i])) for i in order if shares[i] > 0]
