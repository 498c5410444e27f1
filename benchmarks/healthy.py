"""Healthy pods with signals missing: what failure_probability says about them.

    python benchmarks/healthy.py [--model DIR]

48 healthy pods, one for each of the 16 subsets of the four signals (a signal
outside the subset is never reported: no histogram, no limit, a broken query) in
each of three shapes: flat, noisy and diurnal. 8 hours at 60 s steps, scored every
step as the daemon would (the same window features and bundle), after the first
hour. The pod with no signal at all is not scored (features.reporting drops it).

The bar (issue 10): every score below 0.2 and every pod's median below 0.05.
tests/test_healthy_pods.py holds the shipped bundle to it.
"""

from __future__ import annotations

import argparse
import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from exporter.config import BOOTSTRAP_MODEL
from exporter.features import reporting, window_features
from exporter.frame import Frame
from exporter.models.bundle import ModelBundle, load_bundle

SIGNALS = ("cpu", "memory", "latency", "errors")
LEVELS = np.array([0.3, 0.45, 0.12, 0.002])  # cpu ratio, memory ratio, p99 seconds, error ratio
SHAPES = ("flat", "noisy", "diurnal")
STEP = 60.0
STEPS = 8 * 60
WARM_UP = 60
MAX_BAR, MEDIAN_BAR = 0.2, 0.05


@dataclass(frozen=True)
class Result:
    names: tuple[str, ...]  # "<shape> <signals>" per scored pod
    probability: np.ndarray  # [pods, steps after the warm-up]
    unscored: tuple[str, ...]  # pods dropped for reporting nothing


def healthy_frame(seed: int = 0) -> Frame:
    """The 48 pods as one Frame: ``<shape>/<signals>`` names each, NaN where a signal is absent."""
    rng = np.random.default_rng(seed)
    t = np.arange(STEPS) * STEP
    day = np.sin(2 * np.pi * t / 86_400.0 + 1.0)[:, None]
    shapes = {
        "flat": np.broadcast_to(LEVELS, (STEPS, 4)).copy(),
        "noisy": LEVELS * np.exp(rng.normal(0.0, [0.15, 0.03, 0.2, 0.5], (STEPS, 4))),
        "diurnal": LEVELS * (1 + np.array([0.4, 0.05, 0.3, 0.2]) * day),
    }
    values, targets = [], []
    for shape in SHAPES:
        for size in range(5):
            for subset in itertools.combinations(range(4), size):
                series = np.full((STEPS, 4), np.nan)
                series[:, list(subset)] = shapes[shape][:, list(subset)]
                values.append(series)
                targets.append({"pod": f"{shape}/{'+'.join(SIGNALS[i] for i in subset) or 'none'}"})
    return Frame(
        values=np.stack(values), targets=tuple(targets), timestamps=1_767_225_600.0 + t, signals=SIGNALS
    )


def score_healthy(bundle: ModelBundle, seed: int = 0) -> Result:
    """Every step after the warm-up, each pod's window of the bundle's length."""
    everything = healthy_frame(seed)
    frame = reporting(everything)
    width = bundle.manifest.window_steps
    views = sliding_window_view(frame.values, width, axis=1)  # [pods, starts, signals, width]
    starts = np.arange(WARM_UP - width + 1, STEPS - width + 1)
    windows = views[:, starts].transpose(0, 1, 3, 2).reshape(-1, width, len(SIGNALS))
    probability = bundle.score(window_features(windows, SIGNALS), explain=False).probability
    scored = {t["pod"] for t in frame.targets}
    return Result(
        names=tuple(t["pod"] for t in frame.targets),
        probability=probability.reshape(len(frame.targets), len(starts)),
        unscored=tuple(t["pod"] for t in everything.targets if t["pod"] not in scored),
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=BOOTSTRAP_MODEL)
    args = parser.parse_args()
    result = score_healthy(load_bundle(args.model))
    medians = np.median(result.probability, axis=1)
    peaks = result.probability.max(axis=1)
    print(f"{'pod (shape/signals)':<36}{'median':>9}{'max':>9}")
    for name, median, peak in zip(result.names, medians, peaks, strict=True):
        flag = "  <-- above the bar" if peak >= MAX_BAR or median >= MEDIAN_BAR else ""
        print(f"{name:<36}{median:>9.4f}{peak:>9.4f}{flag}")
    print(f"not scored (no signal): {', '.join(result.unscored)}")
    print(
        f"max {peaks.max():.4f} (bar < {MAX_BAR}), largest median {medians.max():.4f} (bar < {MEDIAN_BAR}), "
        f"pods above 0.2 at any step: {(peaks >= 0.2).sum()} of {len(peaks)}"
    )


if __name__ == "__main__":
    main()
