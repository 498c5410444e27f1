"""The failure classifier's view: failure_probability vs anomaly_score on incident suites.

    python benchmarks/incidents.py [--model DIR]

Replays simulated incident suites through the daemon's own scoring (window
features, the bundle, and the per-target anomaly normaliser, causally, one
step at a time for every target) and reports what the pager sees: failures
warned in the horizon before they start, false alarm episodes per target-day,
and lead time, for

- ``failure_probability`` at the HighFailureProbability and ElevatedFailureProbability
  thresholds of rules/failure-predictor.rules.yml, with their ``for:`` (an alert fires
  only once the probability stayed above the threshold that long; lead time runs from
  the firing);
- ``failure_probability`` at the threshold that gives at most 1 false alarm per
  target-day on that suite itself (no ``for:``): what the suite would need, a
  comparison, never the way thresholds are chosen;
- ``anomaly_score`` alone at its alert threshold (0.75);
- recall per failure kind at the HighFailureProbability threshold;
- the held-out simulation again with latency and errors removed from every pod (memory
  leaks) and with only cpu left (cpu saturation): missing signals must not hide a failure
  the remaining ones show.

Suites (the realistic simulator: pods without HTTP metrics or limits, idle pods, scrape
gaps, noisy neighbours, ...): the model's own simulation (targets, days and seed from its
manifest; the bootstrap's is 96 targets x 12 days, seed 0), evaluated on its held-out last
20 %; and the backfill suite of
tests/test_training_prometheus.py (30 targets x 4 days, seed 5), which the bootstrap
model never saw, evaluated after a one-day warm-up.
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import numpy as np
import yaml
from numpy.lib.stride_tricks import sliding_window_view

from exporter.config import BOOTSTRAP_MODEL, parse_duration
from exporter.features import window_features
from exporter.models.bundle import ModelBundle, load_bundle
from exporter.models.normalize import EMBED_STEPS, AnomalyNormaliser
from exporter.sources.simulate import simulate_history
from exporter.training.evaluate import event_metrics, threshold_for_false_alarms

RULES = Path(__file__).resolve().parent.parent / "rules" / "failure-predictor.rules.yml"
ANOMALY_THRESHOLD = 0.75  # the AnomalousWorkloadBehaviour alert's
KINDS = {("cpu", "memory"): ("memory_leak",), ("cpu",): ("cpu_saturation",)}
STEPS_PER_CHUNK = 500


def alert(name: str) -> tuple[float, int]:
    """(threshold, for: in minutes) of a shipped ``... failure_probability ... > X`` alert."""
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == name:
                # "max without (instance) (failure_probability{...}) > X": the last comparison
                threshold = float(re.search(r"> ([0-9.]+)\s*$", rule["expr"]).group(1))
                return threshold, int(parse_duration(rule["for"]) // 60)
    raise KeyError(name)


def firing(probability: np.ndarray, threshold: float, for_steps: int) -> np.ndarray:
    """``[targets, time]`` 1.0 where the alert fires: above the threshold for ``for_steps``
    consecutive steps (Prometheus evaluates ``for:`` the same way, one step per minute)."""
    above = probability > threshold
    run = np.zeros(above.shape, np.int64)
    for t in range(above.shape[1]):
        run[:, t] = np.where(above[:, t], (run[:, t - 1] if t else 0) + 1, 0)
    return (run > for_steps).astype(float)


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
        scores = bundle.score(window_features(windows, signals), explain=False)
        probability[target_of, step_of] = scores.probability
        times = timestamps[step_of]
        anomaly[target_of, step_of] = normaliser.score(rows[target_of], windows, scores.raw_anomaly, times)
    return probability, anomaly


def compare(
    bundle: ModelBundle,
    targets: int,
    days: float,
    seed: int,
    evaluate_from: float,
    keep: tuple[str, ...] | None = None,
    kinds: tuple[str, ...] | None = None,
) -> dict[str, dict]:
    """Event metrics from ``evaluate_from`` (a share of the history) on; with ``keep``, every
    other signal is removed from every target (never reported), and only failures of
    ``kinds`` count, to see what the model makes of the signals that are left."""
    history = simulate_history(targets=targets, steps=int(days * 1440), seed=seed)
    frame = history.frame
    values, timestamps, failed = frame.values, frame.timestamps, history.failed
    start = timestamps[0] + evaluate_from * (timestamps[-1] - timestamps[0])
    if keep is not None:  # only the evaluated part (and one window before it) is replayed
        first = max(int(np.searchsorted(timestamps, start)) - bundle.manifest.window_steps, 0)
        values, timestamps, failed = values[:, first:].copy(), timestamps[first:], failed[:, first:]
        values[..., [s not in keep for s in frame.signals]] = np.nan
    probability, anomaly = replay(bundle, values, timestamps, frame.signals)
    horizon = bundle.manifest.horizon_seconds
    rows = (timestamps[None, :] >= start) & ~failed
    target, step = np.nonzero(rows)
    kept = [i for i in history.incidents if i.start >= start + horizon and (kinds is None or i.kind in kinds)]
    failures = (np.array([i.target for i in kept], int), np.array([i.start for i in kept]))
    time = timestamps[step]

    def events(score: np.ndarray, threshold: float, failures=failures) -> dict:
        return event_metrics(target, time, score[target, step], *failures, horizon, threshold)

    high, high_for = alert("HighFailureProbability")
    elevated, elevated_for = alert("ElevatedFailureProbability")
    needed = threshold_for_false_alarms(target, time, probability[target, step], failures, horizon)
    result = {
        f"HighFailureProbability (> {high}, for {high_for}m)": events(
            firing(probability, high, high_for), 0.5
        ),
        f"ElevatedFailureProbability (> {elevated}, for {elevated_for}m)": events(
            firing(probability, elevated, elevated_for), 0.5
        ),
        f"probability >= {needed:.2f} (1 false alarm/target-day here)": events(probability, needed),
        f"anomaly_score >= {ANOMALY_THRESHOLD}": events(anomaly, ANOMALY_THRESHOLD),
    }
    fired = firing(probability, high, high_for)
    for kind in sorted({i.kind for i in kept}):
        of_kind = np.array([i.kind == kind for i in kept])
        result[f"  {kind} (High alert)"] = events(fired, 0.5, (failures[0][of_kind], failures[1][of_kind]))
    return result


def own_simulation(bundle: ModelBundle) -> tuple[int, float, int, float]:
    """(targets, days, seed, evaluate_from) of the simulation the model was trained on, whose
    last 20 % it never saw; a model trained on other data is measured on the bootstrap's."""
    training = bundle.manifest.training
    if training.get("source") != "simulate":
        return 96, 12.0, 0, 0.8
    return int(training["targets"]), float(training["days"]), int(training["seed"]), 0.8


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=BOOTSTRAP_MODEL)
    args = parser.parse_args()
    bundle = load_bundle(args.model)
    own = own_simulation(bundle)
    targets, days, seed, _ = own
    suites = {
        f"bootstrap simulation, held-out last 20 % ({targets} targets x {days:g} d, seed {seed})": own,
        "backfill suite, after a 1-day warm-up (30 targets x 4 d, seed 5)": (30, 4, 5, 0.25),
    }
    masked = {
        "held-out last 20 %, latency and errors absent: memory leaks": ("cpu", "memory"),
        "held-out last 20 %, only cpu present: cpu saturation": ("cpu",),
    }
    runs = [(title, spec, None, None) for title, spec in suites.items()]
    runs += [(title, own, keep, KINDS[keep]) for title, keep in masked.items()]
    for title, (targets, days, seed, evaluate_from), keep, kinds in runs:
        started = time.perf_counter()
        result = compare(bundle, targets, days, seed, evaluate_from, keep, kinds)
        print(f"{title}  [{time.perf_counter() - started:.0f}s]")
        print(f"  {'':<52}{'failures warned':>16}{'false alarms/target-day':>25}{'median lead':>13}")
        for name, metrics in result.items():
            lead = metrics["lead_time_minutes"].get("p50", float("nan"))
            # Per kind, false alarms are not the kind's: only recall and lead mean something.
            alarms = "-" if name.startswith("  ") else f"{metrics['false_alarms_per_target_day']:.2f}"
            print(
                f"  {name:<52}{metrics['event_recall']:>10.1%} of {metrics['failures']:<3}"
                f"{alarms:>25}{lead:>10.0f} min"
            )


if __name__ == "__main__":
    main()
