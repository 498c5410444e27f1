"""The anomaly detector: pyod's Isolation Forest over the same window features.

Raw isolation scores have no fixed scale, so they are mapped to [0, 1] with
pyod's "unify" normalisation (Kriegel et al., 2011): erf of the score's z-value
against the training scores, clipped at 0. Typical windows read 0, a window two
standard deviations out reads 0.95, which is a number an operator can alert on.
A plain rank would not do: half of all healthy windows would read above 0.5.
"""

from __future__ import annotations

import numpy as np
from pyod.models.iforest import IForest


class AnomalyDetector:
    """Estimator contract: ``fit(X)``; afterwards ``forest_``, ``fill_`` (per-feature
    medians that stand in for NaN, which the forest cannot take) are set."""

    def __init__(
        self, n_estimators: int = 100, max_samples: int = 256, seed: int = 0, n_jobs: int = 1
    ) -> None:
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.seed = seed
        self.n_jobs = n_jobs

    def fit(self, X: np.ndarray) -> AnomalyDetector:
        with np.errstate(all="ignore"):
            fill = (
                np.nanmedian(np.where(np.isfinite(X), X, np.nan), axis=0) if len(X) else np.zeros(X.shape[1])
            )
        self.fill_ = np.nan_to_num(fill, nan=0.0)
        self.forest_ = IForest(
            n_estimators=self.n_estimators,
            max_samples=min(self.max_samples, len(X)),
            random_state=self.seed,
            n_jobs=self.n_jobs,
        ).fit(self._impute(X))
        return self

    def _impute(self, X: np.ndarray) -> np.ndarray:
        return np.where(np.isfinite(X), X, self.fill_)

    def raw_score(self, X: np.ndarray) -> np.ndarray:
        """pyod's outlier score: larger is more anomalous, unbounded."""
        return self.forest_.decision_function(self._impute(X))

    def score(self, X: np.ndarray) -> np.ndarray:
        """Anomaly score in [0, 1]: 0 for typical windows, towards 1 far in the tail."""
        if len(X) == 0:
            return np.empty(0)
        return self.forest_.predict_proba(self._impute(X), method="unify")[:, 1]
