"""Extra memory and time of the anomaly warm-up against a real Prometheus holding real history.

    python benchmarks/warmup_memory.py 10000 --hours 4 --warmup 24h

Backfills (once, cached under --cache) N simulated pods x 4 gauges with --hours of history at
60 s steps ending at benchmarks/cycle.py's END, starts Prometheus on it and runs the daemon's
warm-up (service/warmup.py, benchmarks/cycle.py's settings) with the clock at END. The RSS is
sampled every 50 ms while the replay runs; the figure that matters is its largest rise over the
RSS before (the normaliser being built is part of it). docs/performance.md has the results.
"""

from __future__ import annotations

import argparse
import gc
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "tests", ROOT / "benchmarks"):
    if str(path) not in sys.path:  # run as a script: the package, the test servers, cycle.py
        sys.path.insert(0, str(path))

import cycle  # noqa: E402
from servers import PrometheusServer  # noqa: E402

from exporter.config import BOOTSTRAP_MODEL, Settings  # noqa: E402
from exporter.models.bundle import load_bundle  # noqa: E402
from exporter.models.normalize import EMBED_STEPS, AnomalyNormaliser, null_forest  # noqa: E402
from exporter.service.warmup import WarmUp  # noqa: E402
from exporter.sources.prometheus import PrometheusSource  # noqa: E402


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", type=int)
    parser.add_argument("--hours", type=float, default=4.0, help="history backfilled before END")
    parser.add_argument("--warmup", default="24h", help="anomaly.warmup")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/failure-predictor-bench"))
    args = parser.parse_args()
    steps = round(args.hours * 3600 / cycle.STEP)
    workdir = cycle.backfilled(args.targets, args.cache, steps=steps, warmup=0, end=cycle.END)
    with PrometheusServer(workdir) as prometheus:
        raw = cycle.settings_for(prometheus.url, args.targets, (0, 1)).model_dump(mode="json")
        raw["anomaly"]["warmup"] = args.warmup
        settings = Settings.model_validate(raw)
        clock = lambda: float(cycle.END) + 1.0  # noqa: E731
        source = PrometheusSource(settings, clock=clock)
        bundle = load_bundle(BOOTSTRAP_MODEL)
        null_forest(EMBED_STEPS)  # built once per process, not part of the warm-up
        gc.collect()
        before = rss_mb()
        errors: list[str] = []
        warmup = WarmUp(settings, source.read_history, errors.append, clock)
        started = time.perf_counter()
        signals = tuple(settings.queries)
        warmup.begin(lambda: AnomalyNormaliser(signals, EMBED_STEPS, step=settings.step), bundle)
        highest = before
        while warmup.running:
            highest = max(highest, rss_mb())
            time.sleep(0.05)
        finished = warmup.take()
        if finished is None:
            raise SystemExit(f"the warm-up failed: {errors}")
        print(
            f"{args.targets} targets, {args.hours:g} h of history, warmup {args.warmup}: "
            f"{time.perf_counter() - started:.0f} s, {len(finished[0])} targets warmed; RSS before "
            f"{before:.0f} MB, highest during {highest:.0f} MB (+{highest - before:.0f} MB)"
        )


if __name__ == "__main__":
    main()
