"""Track feature drift over the last cycles, for ``failure_predictor_feature_drift``."""

from __future__ import annotations

from collections import deque

import numpy as np

from exporter.features import signal_weights
from exporter.models.bundle import ModelBundle
from exporter.models.drift import population_stability

CYCLES = 30  # the recent distribution: the last 30 cycles (30 min at the default interval)
ROWS_PER_CYCLE = 1000  # a deterministic sample per cycle bounds memory at any number of targets


class DriftTracker:
    """Keeps a bounded sample of recent feature rows and compares it with the bundle's reference."""

    def __init__(self) -> None:
        self._recent: deque[np.ndarray] = deque(maxlen=CYCLES)
        self._version: str | None = None
        self._rng = np.random.default_rng(0)

    def update(self, bundle: ModelBundle, inputs: np.ndarray) -> tuple[float, ...] | None:
        """PSI per signal of the bundle, or None for bundles without a stored reference."""
        manifest = bundle.manifest
        if not manifest.reference:
            return None
        if manifest.version != self._version:
            self._recent.clear()
            self._version = manifest.version
        if len(inputs) > ROWS_PER_CYCLE:
            inputs = inputs[self._rng.choice(len(inputs), ROWS_PER_CYCLE, replace=False)]
        self._recent.append(inputs)
        per_feature = population_stability(manifest.reference, np.concatenate(self._recent))
        weights = signal_weights(manifest.features, manifest.signals)
        owned = weights.sum(axis=0)
        per_signal = np.divide(per_feature @ weights, owned, out=np.zeros(len(owned)), where=owned > 0)
        return tuple(float(v) for v in per_signal)
