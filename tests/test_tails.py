"""The Student t and normal tails the anomaly normaliser uses (exporter/kernels.py) agree with
scipy.special's, which serving no longer imports (26 MB): across degrees of freedom from 1 to
10^7, fractional ones, tails down to 1e-300, infinities and NaN."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import special

from exporter.kernels import error_function, t_as_normal, t_quantiles
from exporter.models.normalize import BAND_TAIL, BAND_Z, normal_z

DF = np.array(
    [1.0, 1.5, 2.0, 3.7, 10.0, 29.0, 59.0, 99.0, 100.0, 101.0, 1e3, 9999.0, 1e4, 1e5, 1e7, np.inf, np.nan]
)
T = np.array([0.0, 1e-4, 0.1, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 100.0, 1e3, 1e6, 1e300, np.inf, np.nan])


def scipy_normal_z(t: np.ndarray, df: np.ndarray) -> np.ndarray:
    """normalize.normal_z as it was written with scipy.special."""
    with np.errstate(invalid="ignore", divide="ignore"):
        tail = special.stdtr(df, -np.abs(t))
        return np.where(df > 1e4, np.abs(t), -special.ndtri(np.maximum(tail, 1e-300)))


def test_t_read_as_normal_z_agrees_with_scipy_over_the_whole_range() -> None:
    t, df = (grid.ravel() for grid in np.meshgrid(T, DF))
    for sign in (1.0, -1.0):
        np.testing.assert_allclose(
            t_as_normal(sign * t, df), scipy_normal_z(sign * t, df), rtol=1e-12, atol=1e-13
        )


def test_a_t_next_to_zero_keeps_its_digits() -> None:
    """Where scipy rounds the tail against 0.5 (its z a third off at t = 1e-8, 6e-14 off at 1e-4,
    hence the comparisons' atol): the Cauchy's exact tail."""
    exact = math.atan(1e-8) / math.pi * math.sqrt(2.0 * math.pi)
    assert t_as_normal(np.array([1e-8]), np.array([1.0]))[0] == pytest.approx(exact, rel=1e-9)


def test_normal_z_keeps_the_shape_and_broadcasts_the_counts() -> None:
    t = np.random.default_rng(0).normal(0, 4, (50, 4))
    count = np.arange(50.0)[:, None]
    z = normal_z(t, count)
    assert z.shape == (50, 4)
    np.testing.assert_allclose(z, scipy_normal_z(t, np.maximum(count - 1.0, 1.0)), rtol=1e-12, atol=1e-13)


def test_t_quantiles_agree_with_scipy_for_every_degree_of_freedom() -> None:
    scipy_tail = special.ndtr(-BAND_Z)
    assert scipy_tail == pytest.approx(BAND_TAIL, rel=1e-15)
    df = np.concatenate([DF, np.linspace(1, 400, 797)])
    for tail in (BAND_TAIL, 0.25, 1e-6, 1e-12):
        expected = -special.stdtrit(df, tail)  # the lower quantile: 1 - tail would round the tail
        np.testing.assert_allclose(t_quantiles(df, tail), expected, rtol=1e-12)


def test_error_function_is_scipys() -> None:
    x = np.concatenate([np.linspace(-6, 6, 1201), [np.inf, -np.inf, np.nan, 1e-300]])
    np.testing.assert_allclose(error_function(x), special.erf(x), rtol=1e-15, atol=1e-16)
