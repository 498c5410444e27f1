"""Our TreeSHAP tables give XGBoost's own exact SHAP values and margin."""

from __future__ import annotations

import numpy as np
import pytest
import xgboost as xgb
from helpers import booster_of

from exporter.models import ubjson
from exporter.models.treeshap import TreeShap


@pytest.fixture(scope="module")
def booster() -> xgb.Booster:
    """Depth-4 trees on features of very different scales, trained with missing values."""
    rng = np.random.default_rng(3)
    X = rng.standard_normal((3000, 8)) * np.array([1, 10, 1e-3, 1, 1, 100, 1, 1])
    X[rng.random(X.shape) < 0.15] = np.nan
    y = (np.nan_to_num(X[:, 0]) + np.nan_to_num(X[:, 1]) / 10 + rng.normal(0, 0.5, len(X)) > 0).astype(int)
    model = xgb.XGBClassifier(n_estimators=60, max_depth=4, subsample=0.8, n_jobs=1, random_state=0)
    return model.fit(X, y).get_booster()


def served(booster: xgb.Booster) -> TreeShap:
    """The trees as a bundle serves them: read from XGBoost's UBJSON file, without XGBoost."""
    return TreeShap.from_model(ubjson.loads(bytes(booster.save_raw("ubj"))))


def rows(count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((count, 8)) * np.array([1, 10, 1e-3, 1, 1, 100, 1, 1]) * 2
    X[rng.random(X.shape) < 0.2] = np.nan
    return X


def test_contributions_equal_xgboost_pred_contribs(booster):
    X = rows(700, 1)

    expected = booster.predict(xgb.DMatrix(X, nthread=1), pred_contribs=True)

    np.testing.assert_allclose(served(booster).contributions(X), expected, rtol=0, atol=1e-5)


def test_margin_equals_xgboost_and_the_contributions_sum(booster):
    X = rows(300, 2)
    shap = served(booster)

    expected = booster.predict(xgb.DMatrix(X, nthread=1), output_margin=True)

    np.testing.assert_allclose(shap.margin(X), expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(shap.contributions(X).sum(axis=1), expected, rtol=0, atol=1e-5)


def test_a_trained_bundle_is_explained_as_xgboost_does(tiny):
    X = tiny.dataset.X[::5].astype(np.float64)
    expected = booster_of(tiny.bundle).predict(xgb.DMatrix(X, nthread=1), pred_contribs=True)

    np.testing.assert_allclose(tiny.bundle.explainer.contributions(X), expected, rtol=0, atol=1e-5)


def test_a_row_explained_in_a_batch_gets_the_values_it_gets_alone(booster):
    X = rows(600, 4)
    shap = served(booster)

    batch = shap.contributions(X)  # leaf by leaf over blocks of rows

    np.testing.assert_array_equal(batch, np.vstack([shap.contributions(row[None]) for row in X]))
    np.testing.assert_array_equal(batch[:7], shap.contributions(X[:7]))


def test_infinite_values_count_as_missing(booster):
    X = rows(50, 3)
    infinite = X.copy()
    infinite[:, 1] = np.where(np.isnan(X[:, 1]), np.inf, X[:, 1])
    shap = served(booster)

    np.testing.assert_array_equal(shap.contributions(infinite), shap.contributions(X))


def test_rows_of_the_wrong_width_are_refused_with_one_line(booster):
    with pytest.raises(ValueError, match=r"the trees take rows of 8 features, got shape \(3, 5\)"):
        served(booster).contributions(np.zeros((3, 5)))
