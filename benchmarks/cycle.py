"""How much of a scoring cycle is our own time, for N simulated targets.

    python benchmarks/cycle.py --targets 1000 10000

Runs the real Daemon cycle on the simulate source with the shipped bundle and
prints the median time of each stage (query = simulated fetch, features, score,
publish) plus rendering /metrics. No Prometheus is involved, so this is purely
our own cost; compare it with the Prometheus query time the same targets need
(TOOLING.md: ~0.6 s for 4 range queries at 10k targets).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from prometheus_client import generate_latest

from exporter.config import BOOTSTRAP_MODEL, Settings
from exporter.features import frame_features
from exporter.models.bundle import load_bundle
from exporter.service.daemon import Daemon
from exporter.sources.simulate import SimulatedCluster, SimulateSource


def measure(targets: int, repeats: int, bundle_path: Path) -> dict[str, float]:
    bundle = load_bundle(bundle_path)
    manifest = bundle.manifest
    settings = Settings(step=manifest.step_seconds, lookback=manifest.step_seconds * manifest.window_steps)
    source = SimulateSource(SimulatedCluster(targets=targets, seed=0), window=manifest.window_steps)
    daemon = Daemon(settings, source, bundle)
    timings: dict[str, list[float]] = {"fetch": [], "features": [], "score": [], "cycle": [], "render": []}
    for _ in range(repeats):
        start = time.perf_counter()
        fetch = source.fetch()
        fetched = time.perf_counter()
        features = frame_features(fetch.frame)
        featured = time.perf_counter()
        bundle.score(features)
        scored = time.perf_counter()
        daemon.run_cycle()
        cycled = time.perf_counter()
        generate_latest(daemon.registry)
        rendered = time.perf_counter()
        for name, value in zip(
            timings,
            (fetched - start, featured - fetched, scored - featured, cycled - scored, rendered - cycled),
            strict=True,
        ):
            timings[name].append(value)
    return {name: statistics.median(values) for name, values in timings.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--targets", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", type=Path, default=BOOTSTRAP_MODEL)
    args = parser.parse_args()
    print(
        f"{'targets':>8} {'fetch':>9} {'features':>9} {'score':>9} {'cycle':>9} {'/metrics':>9}  (median seconds)"
    )
    for targets in args.targets:
        t = measure(targets, args.repeats, args.model)
        print(
            f"{targets:>8} {t['fetch']:>9.4f} {t['features']:>9.4f} {t['score']:>9.4f} "
            f"{t['cycle']:>9.4f} {t['render']:>9.4f}"
        )


if __name__ == "__main__":
    main()
