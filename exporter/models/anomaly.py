"""The anomaly detector: pyod's Isolation Forest over the same window features.

Raw isolation scores have no fixed scale, so they are mapped to [0, 1] with
pyod's "unify" normalisation (Kriegel et al., 2011): erf of the score's z-value
against the training scores, clipped at 0. Typical windows read 0, a window two
standard deviations out reads 0.95, which is a number an operator can alert on.
A plain rank would not do: half of all healthy windows would read above 0.5.

pyod fits the forest; what is kept and served is an ``ArrayForest`` (models/forest.py)
with the same scores, which saves as plain arrays and scores a row in microseconds. pyod
is imported by ``fit`` alone: serving never fits, and pyod brings scikit-learn (~75 MB).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from exporter.kernels import error_function
from exporter.models.forest import ArrayForest, ForestError

_STATS = ("fill", "train_mean", "train_std")


class AnomalyDetector:
    """Estimator contract: ``fit(X)``; afterwards ``forest_``, ``fill_`` (per-feature
    medians that stand in for NaN, which the forest cannot take), ``train_mean_`` and
    ``train_std_`` (of the raw training scores, for the unify mapping) are set."""

    def __init__(
        self, n_estimators: int = 100, max_samples: int = 256, seed: int = 0, n_jobs: int = 1
    ) -> None:
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.seed = seed
        self.n_jobs = n_jobs

    def fit(self, X: np.ndarray) -> AnomalyDetector:
        from pyod.models.iforest import IForest

        with np.errstate(all="ignore"):
            fill = (
                np.nanmedian(np.where(np.isfinite(X), X, np.nan), axis=0) if len(X) else np.zeros(X.shape[1])
            )
        self.fill_ = np.nan_to_num(fill, nan=0.0)
        fitted = IForest(
            n_estimators=self.n_estimators,
            max_samples=min(self.max_samples, len(X)),
            random_state=self.seed,
            n_jobs=self.n_jobs,
        ).fit(self._impute(X))
        self.forest_ = ArrayForest.from_sklearn(fitted.detector_)
        self.train_mean_ = float(np.mean(fitted.decision_scores_))
        self.train_std_ = float(np.std(fitted.decision_scores_))
        return self

    def _impute(self, X: np.ndarray) -> np.ndarray:
        return np.where(np.isfinite(X), X, self.fill_)

    def raw_score(self, X: np.ndarray) -> np.ndarray:
        """pyod's outlier score: larger is more anomalous, unbounded."""
        return self.forest_.decision_function(self._impute(X))

    def unify(self, raw: np.ndarray) -> np.ndarray:
        """Raw scores to [0, 1] as pyod's ``predict_proba(method="unify")`` does."""
        z = np.asarray((raw - self.train_mean_) / (self.train_std_ * np.sqrt(2)), dtype=float)
        return error_function(z.ravel()).reshape(z.shape).clip(0, 1)

    def score(self, X: np.ndarray) -> np.ndarray:
        """Anomaly score in [0, 1]: 0 for typical windows, towards 1 far in the tail."""
        return self.unify(self.raw_score(X)) if len(X) else np.empty(0)

    def save(self, path: str | Path) -> None:
        """Plain arrays in one ``.npz``: nothing in the file can run code on load."""
        stats = {"fill": self.fill_, "train_mean": self.train_mean_, "train_std": self.train_std_}
        with Path(path).open("wb") as handle:
            np.savez(handle, **self.forest_.to_arrays("forest_"), **stats)

    @classmethod
    def load(cls, path: str | Path, features: int) -> AnomalyDetector:
        """Read ``save``'s file (``allow_pickle=False``); ForestError if it is not a detector for
        ``features`` features."""
        try:
            with np.load(path, allow_pickle=False) as arrays:
                forest = ArrayForest.from_arrays(arrays, "forest_")
                stats = {name: np.asarray(arrays[name], dtype=np.float64) for name in _STATS}
        except KeyError as exc:
            raise ForestError(f"no array {exc.args[0]!r}") from None
        except (OSError, ValueError, EOFError) as exc:
            raise ForestError(str(exc)) from None
        if forest.n_features != features or stats["fill"].shape != (features,):
            raise ForestError(f"not a detector for {features} features")
        if not (np.isfinite(stats["fill"]).all() and stats["train_std"].shape == ()):
            raise ForestError("fill values and training statistics must be finite scalars per feature")
        detector = cls()
        detector.forest_, detector.fill_ = forest, stats["fill"]
        detector.train_mean_, detector.train_std_ = float(stats["train_mean"]), float(stats["train_std"])
        return detector
