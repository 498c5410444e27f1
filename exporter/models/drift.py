"""Feature drift: how far the features the daemon sees have moved from training.

The bundle stores, per feature, the deciles of its training values and the share
of training rows in each decile bin (NaN counted as its own bin). At serving
time the population stability index (PSI) compares recent rows with that:

    PSI = sum over bins of (recent - training) * ln(recent / training)

Reading: below 0.1 the distribution is stable, 0.1-0.25 a moderate shift,
above 0.25 a significant shift: the model is scoring data unlike what it
learned from, and it is time to retrain on recent history.
"""

from __future__ import annotations

import numpy as np

BINS = 10
FLOOR = 1e-4  # share given to empty bins, so a bin seen on one side only costs a finite amount


def reference_distribution(X: np.ndarray) -> dict[str, list[list[float]]]:
    """Per-feature inner decile edges and the training share of every bin (last bin: NaN)."""
    edges, shares = [], []
    for column in X.T.astype(np.float64):
        present = column[np.isfinite(column)]
        inner = (
            np.quantile(present, np.linspace(0, 1, BINS + 1)[1:-1]) if len(present) else np.zeros(BINS - 1)
        )
        edges.append(inner.tolist())
        shares.append(bin_shares(column[:, None], inner[None, :])[0].tolist())
    return {"edges": edges, "shares": shares}


def bin_shares(X: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """``[features, BINS + 1]`` share of rows per bin; ``edges`` is ``[features, BINS - 1]``."""
    shares = np.zeros((X.shape[1], BINS + 1))
    if len(X) == 0:
        return shares
    for feature in range(X.shape[1]):
        column = X[:, feature]
        present = np.isfinite(column)
        index = np.searchsorted(edges[feature], column[present], side="right")
        shares[feature, :BINS] = np.bincount(index, minlength=BINS) / len(column)
        shares[feature, BINS] = 1.0 - present.mean()
    return shares


def population_stability(reference: dict[str, list[list[float]]], X: np.ndarray) -> np.ndarray:
    """PSI of every feature of ``X`` (recent rows) against the training reference."""
    expected = np.maximum(np.asarray(reference["shares"]), FLOOR)
    actual = np.maximum(bin_shares(X, np.asarray(reference["edges"])), FLOOR)
    return ((actual - expected) * np.log(actual / expected)).sum(axis=1)
