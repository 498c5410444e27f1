"""The in-memory window every source yields and everything downstream reads.

A Frame is deliberately dumb: a dense float array plus the labels that name its
axes. Sources are responsible for producing it (aligning, filling gaps with NaN);
features, models and the service only ever read it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Frame:
    """A window of samples: ``values[target, time, signal]``.

    ``values`` is float64 with NaN wherever a target had no sample for a signal
    at a timestamp. ``targets[i]`` is the label set that identifies row ``i``
    (only the configured target labels), ``timestamps`` are Unix seconds,
    ascending and evenly spaced by ``step``.
    """

    values: np.ndarray
    targets: tuple[Mapping[str, str], ...]
    timestamps: np.ndarray
    signals: tuple[str, ...]

    def __post_init__(self) -> None:
        expected = (len(self.targets), len(self.timestamps), len(self.signals))
        if self.values.shape != expected:
            raise ValueError(
                f"Frame values have shape {self.values.shape}, expected (targets, time, signals) = {expected}"
            )

    @property
    def step(self) -> float:
        """Seconds between consecutive timestamps (0 for a single-sample frame)."""
        if len(self.timestamps) < 2:
            return 0.0
        return float(self.timestamps[1] - self.timestamps[0])

    @property
    def end(self) -> float:
        """Timestamp of the newest sample: the moment the window describes."""
        return float(self.timestamps[-1])

    def signal(self, name: str) -> np.ndarray:
        """The ``targets x time`` slice of one signal."""
        return self.values[:, :, self.signals.index(name)]
