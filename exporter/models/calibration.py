"""Platt scaling: the one map from the trees' margin to a calibrated probability.

Training fits its two parameters (models/classifier.py) and the bundle applies them when
serving (models/bundle.py); both call this, so they cannot drift apart.
"""

from __future__ import annotations

import numpy as np


def platt(margin: np.ndarray, calibration: tuple[float, float]) -> np.ndarray:
    """``sigmoid(slope * margin + intercept)``: strictly monotone, so it keeps the ranking."""
    slope, intercept = calibration
    return 1.0 / (1.0 + np.exp(-(slope * margin + intercept)))
