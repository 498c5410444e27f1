"""The normaliser's first pass made cheaper, not different (models/normalize.py): the null forest's
input (``_shape_scores``) standardised by a compiled pass equal to numpy's value for value, and
the band widths computed once per distinct count, so every anomaly_score and band is unchanged
(to rounding: the t quantiles are exporter/kernels.py's, held to scipy's here)."""

from __future__ import annotations

import numpy as np
from scipy import special

from exporter.kernels import standardised_windows
from exporter.models import normalize
from exporter.models.normalize import BAND_Z, Z_CLIP, AnomalyNormaliser, band_width, forest_score


def numpy_standardised(windows: np.ndarray, level: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The numpy definition the kernel replaced."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        standard = (windows - level[:, None, :]) / scale[:, None, :]
    embedded = np.clip(np.nan_to_num(standard, nan=0.0), -Z_CLIP, Z_CLIP)
    return np.ascontiguousarray(embedded.transpose(0, 2, 1).reshape(-1, windows.shape[1]), dtype=np.float32)


def awkward_windows(rng: np.random.Generator, rows: int, steps: int, signals: int) -> tuple[np.ndarray, ...]:
    windows = rng.standard_normal((rows, steps, signals)) * rng.choice(
        [1e-6, 1.0, 1e3, 1e300], size=(rows, 1, 1)
    )
    windows[rng.random(windows.shape) < 0.1] = np.nan
    windows[rng.random(windows.shape) < 0.01] = np.inf
    windows[rng.random(windows.shape) < 0.01] = -np.inf
    level = rng.standard_normal((rows, signals))
    scale = rng.exponential(1.0, (rows, signals)) * rng.choice([1e-9, 1e-3, 1.0], size=(rows, 1))
    scale[rng.random(scale.shape) < 0.1] = np.nan
    scale[rng.random(scale.shape) < 0.02] = 0.0
    scale[rng.random(scale.shape) < 0.02] = np.inf
    return windows, level, scale


def test_compiled_standardisation_equals_numpys_bit_for_bit() -> None:
    rng = np.random.default_rng(7)
    for rows, steps, signals in [(0, 60, 4), (1, 60, 1), (300, 60, 4), (57, 12, 3)]:
        windows, level, scale = awkward_windows(rng, rows, steps, signals)

        compiled = standardised_windows(windows, level, scale, Z_CLIP)
        strided = standardised_windows(np.asfortranarray(windows)[:, -steps:], level, scale, Z_CLIP)

        expected = numpy_standardised(windows, level, scale)
        assert compiled.dtype == np.float32
        assert compiled.tobytes() == expected.tobytes()
        assert strided.tobytes() == expected.tobytes()


def test_anomaly_scores_are_those_of_the_numpy_standardisation(monkeypatch) -> None:
    rng = np.random.default_rng(3)
    targets = [{"pod": f"p{i}"} for i in range(40)]
    cycles = rng.standard_normal((90, 40, 60, 4)).cumsum(axis=2) * 0.1 + 5.0
    cycles[:, :, :, 2][rng.random(cycles.shape[:3]) < 0.2] = np.nan
    cycles[60:, 5] *= 30.0  # a target whose level jumps

    def run() -> list[bytes]:
        normaliser = AnomalyNormaliser(("cpu", "memory", "latency", "errors"))
        out = []
        for t, values in enumerate(cycles):
            evaluation = normaliser.cycle(values, targets, np.zeros(len(targets)), 1e9 + 60.0 * t)
            out += [evaluation.score.tobytes(), evaluation.expected.tobytes()]
        return out

    compiled = run()

    def numpy_shape_scores(self, windows, level, scale):
        flat = numpy_standardised(windows, level, scale)
        return forest_score(self._forest, flat).reshape(-1, level.shape[1])

    monkeypatch.setattr(normalize.AnomalyNormaliser, "_shape_scores", numpy_shape_scores)
    assert run() == compiled


def test_band_widths_are_the_inverse_t_of_each_count() -> None:
    counts = np.random.default_rng(1).integers(0, 300, (500, 4)).astype(float)
    counts[0, 0], counts[1, 1] = np.nan, np.inf
    for count in (counts, counts[:0], np.full((3, 2), 7.0)):
        expected = special.stdtrit(np.maximum(count - 1.0, 1.0), special.ndtr(BAND_Z))
        assert band_width(count).shape == expected.shape
        np.testing.assert_allclose(band_width(count), expected, rtol=1e-13, atol=0)
