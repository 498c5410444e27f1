"""The failure classifier's view: failure_probability vs anomaly_score on incident suites.

    python benchmarks/incidents.py

Replays simulated incident suites through the daemon's own scoring (window
features, the bundle, and the per-target anomaly normaliser, causally, one
step at a time for every target) and reports, for ``failure_probability`` at
the alert threshold (0.8) and for ``anomaly_score`` alone at its alert
threshold (0.75), side by side: failures warned in the horizon before they
start, false alarm episodes per target-day, and lead time.

Suites: the bootstrap model's own simulation (48 targets x 12 days, seed 0),
evaluated on its held-out last 20 %; and the backfill suite of
tests/test_training_prometheus.py (30 targets x 4 days, seed 5), which the
bootstrap model never saw, evaluated after a one-day warm-up.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from exporter.config import BOOTSTRAP_MODEL
from exporter.features import window_features
from exporter.models.bundle import ModelBundle, load_bundle
from exporter.models.normalize import EMBED_STEPS, AnomalyNormaliser
from exporter.sources.simulate import simulate_history
from exporter.training.evaluate import ALERT_THRESHOLD, event_metrics
from exporter.training.labels import failure_starts

ANOMALY_THRESHOLD = 0.75  # the AnomalousWorkloadBehaviour alert's
STEPS_PER_CHUNK = 500


def replay(
    bundle: ModelBundle, values: np.ndarray, timestamps: np.ndarray, signals
) -> tuple[np.ndarray, ...]:
    """``[targets, time]`` probability and anomaly score, as the daemon would publish them."""
    width = bundle.manifest.window_steps
    targets = values.shape[0]
    padded = np.concatenate([np.full((targets, width - 1, values.shape[2]), np.nan), values], axis=1)
    views = sliding_window_view(padded, width, axis=1)  # [targets, time, signals, width]
    step = float(timestamps[1] - timestamps[0]) if len(timestamps) > 1 else 60.0
    normaliser = AnomalyNormaliser(signals, min(EMBED_STEPS, width), step=step)
    rows = normaliser.retain([{"target": str(i)} for i in range(targets)])
    probability = np.zeros((targets, len(timestamps)))
    anomaly = np.zeros_like(probability)
    for begin in range(0, len(timestamps), STEPS_PER_CHUNK):
        steps = np.arange(begin, min(begin + STEPS_PER_CHUNK, len(timestamps)))
        # Rows in time order, every target at each step: the order the daemon sees them in.
        step_of, target_of = np.repeat(steps, targets), np.tile(np.arange(targets), len(steps))
        windows = views[target_of, step_of].transpose(0, 2, 1)
        scores = bundle.score(window_features(windows, timestamps[step_of], signals), explain=False)
        probability[target_of, step_of] = scores.probability
        times = timestamps[step_of]
        anomaly[target_of, step_of] = normaliser.score(rows[target_of], windows, scores.raw_anomaly, times)
    return probability, anomaly


def compare(
    bundle: ModelBundle, targets: int, days: float, seed: int, evaluate_from: float
) -> dict[str, dict]:
    history = simulate_history(targets=targets, steps=int(days * 1440), seed=seed)
    frame = history.frame
    probability, anomaly = replay(bundle, frame.values, frame.timestamps, frame.signals)
    horizon = bundle.manifest.horizon_seconds
    start = frame.timestamps[0] + evaluate_from * (frame.timestamps[-1] - frame.timestamps[0])
    rows = (frame.timestamps[None, :] >= start) & ~history.failed
    target, step = np.nonzero(rows)
    starts_target, starts_step = np.nonzero(failure_starts(history.failed))
    keep = frame.timestamps[starts_step] >= start + horizon
    failures = (starts_target[keep], frame.timestamps[starts_step][keep])
    return {
        name: event_metrics(
            target, frame.timestamps[step], score[target, step], *failures, horizon, threshold
        )
        for name, score, threshold in (
            ("failure_probability", probability, ALERT_THRESHOLD),
            ("anomaly_score", anomaly, ANOMALY_THRESHOLD),
        )
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=BOOTSTRAP_MODEL)
    args = parser.parse_args()
    bundle = load_bundle(args.model)
    suites = {
        "bootstrap simulation, held-out last 20 % (48 targets x 12 d, seed 0)": (48, 12, 0, 0.8),
        "backfill suite, after a 1-day warm-up (30 targets x 4 d, seed 5)": (30, 4, 5, 0.25),
    }
    for title, (targets, days, seed, evaluate_from) in suites.items():
        started = time.perf_counter()
        result = compare(bundle, targets, days, seed, evaluate_from)
        print(f"{title}  [{time.perf_counter() - started:.0f}s]")
        print(f"  {'':<22}{'failures warned':>16}{'false alarms/target-day':>25}{'median lead':>13}")
        for name, metrics in result.items():
            lead = metrics["lead_time_minutes"].get("p50", float("nan"))
            print(
                f"  {name:<22}{metrics['event_recall']:>10.1%} of {metrics['failures']:<3}"
                f"{metrics['false_alarms_per_target_day']:>25.2f}{lead:>10.0f} min"
            )


if __name__ == "__main__":
    main()
