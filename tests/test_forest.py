"""The array forest scores exactly as scikit-learn / pyod do, and loads only as data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pyod.models.iforest import IForest

from exporter.kernels import SPLIT_ROWS
from exporter.models.forest import ArrayForest, ForestError, average_path_length


@pytest.mark.parametrize(
    "features, max_samples, max_features, rows",
    [(60, 256, 1.0, 3000), (12, 100, 0.5, 800), (4, 3, 1.0, 50), (3, 1, 1.0, 20), (2, 256, 1.0, 5)],
)
def test_scores_equal_pyod_decision_function_on_random_data(features, max_samples, max_features, rows):
    rng = np.random.default_rng(features)
    fitted = IForest(
        n_estimators=50, max_samples=min(max_samples, rows), max_features=max_features, random_state=1
    ).fit(rng.standard_normal((rows, features)))
    forest = ArrayForest.from_sklearn(fitted.detector_)
    # Far outliers, ties at thresholds and float32 rounding all exercised.
    X = np.vstack(
        [
            rng.standard_normal((2000, features)) * 3,
            rng.standard_normal((1, features)) * 1e6,
            fitted.detector_.estimators_[0].tree_.threshold[:1].repeat(features)[None],
        ]
    )

    np.testing.assert_allclose(forest.decision_function(X), fitted.decision_function(X), rtol=0, atol=1e-9)
    np.testing.assert_allclose(forest.score_samples(X), fitted.detector_.score_samples(X), rtol=0, atol=1e-9)


def test_average_path_length_is_sklearns_c_of_n():
    from sklearn.ensemble._iforest import _average_path_length

    n = np.array([0, 1, 2, 3, 10, 256, 10_000])

    np.testing.assert_allclose(average_path_length(n), _average_path_length(n), rtol=0, atol=1e-12)


def test_saved_forest_loads_back_with_the_same_scores(tmp_path: Path):
    rng = np.random.default_rng(0)
    fitted = IForest(n_estimators=20, random_state=0).fit(rng.standard_normal((500, 5)))
    forest = ArrayForest.from_sklearn(fitted.detector_)
    X = rng.standard_normal((100, 5))

    forest.save(tmp_path / "forest.npz")

    np.testing.assert_array_equal(
        ArrayForest.load(tmp_path / "forest.npz").decision_function(X), forest.decision_function(X)
    )


def test_rows_of_the_wrong_width_are_refused():
    fitted = IForest(n_estimators=5, random_state=0).fit(np.random.default_rng(0).standard_normal((50, 3)))

    with pytest.raises(ForestError, match="expected rows of 3 features"):
        ArrayForest.from_sklearn(fitted.detector_).decision_function(np.zeros((2, 4)))


def test_a_forest_deeper_than_supported_is_refused():
    nodes = 40
    index = np.arange(nodes)
    chain = {  # every node's left child is a leaf, its right child the next node: depth 20
        "feature": np.zeros((1, nodes), np.int64),
        "threshold": np.zeros((1, nodes)),
        "left": np.where((index % 2 == 0) & (index < nodes - 2), index + 1, -1)[None],
        "right": np.where((index % 2 == 0) & (index < nodes - 2), index + 2, -1)[None],
        "samples": np.ones((1, nodes), np.int64),
    }

    with pytest.raises(ForestError, match="deeper than 16"):
        ArrayForest(**chain, n_features=1, max_samples=256, offset=-0.5)


def test_a_batch_split_across_cores_scores_as_row_by_row_blocks_do():
    fitted = IForest(n_estimators=30, random_state=0).fit(np.random.default_rng(0).standard_normal((500, 6)))
    forest = ArrayForest.from_sklearn(fitted.detector_)
    X = np.random.default_rng(1).standard_normal((SPLIT_ROWS * 2 + 7, 6))

    whole = forest.decision_function(X)  # split across the cores (this machine has 2)
    pieces = np.concatenate([forest.decision_function(X[i : i + 1000]) for i in range(0, len(X), 1000)])

    np.testing.assert_array_equal(whole, pieces)
    np.testing.assert_allclose(whole, fitted.decision_function(X), rtol=1e-12, atol=1e-12)
