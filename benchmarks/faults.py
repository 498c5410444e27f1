"""Time-bound faults, measured on real processes: SIGTERM with a hung Prometheus, a dripping proxy.

    PYTHONPATH=$PWD:tests python benchmarks/faults.py --runs 3

1. SIGTERM to exit of the real ``failure-predictor run`` subprocess while its queries hang
   (a server that accepts connections and never answers), at the shipped query settings
   (timeout 10s, 2 retries, deadline 30s), idle and with a keep-alive scraper connection
   open; as a share of Kubernetes' default 30 s grace period.
2. The query stage of a cycle against a proxy dripping Prometheus's answer one byte every
   0.2 s (never idle long enough for a per-read timeout), as a multiple of
   ``prometheus.deadline``.

The functional checks are in tests/test_faults.py; this prints the figures docs/hardening.md quotes.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import tempfile
import time
from pathlib import Path

import requests
from servers import TEST_SPEED, DaemonServer, DripProxy, PrometheusServer, SilentServer, TextExporter

from exporter.config import Settings
from exporter.sources.prometheus import PrometheusSource

KUBERNETES_GRACE = 30.0


def sigterm_seconds(workdir: Path, keep_alive: bool) -> float:
    silent = SilentServer()
    daemon = DaemonServer(workdir, {**TEST_SPEED, "prometheus": {"url": silent.url}})
    try:
        daemon.start()
        while not silent.connections:
            time.sleep(0.05)
        time.sleep(0.5)
        scraper = requests.Session()
        if keep_alive:
            scraper.get(f"{daemon.url}/metrics", timeout=5)
        return daemon.seconds_to_exit(signal.SIGTERM, timeout=60)
    finally:
        daemon.stop()
        silent.close()


def drip_ratio(workdir: Path, deadline: float) -> float:
    exporter = TextExporter('bench_memory{namespace="b",pod="p"} 0.5\n').start()
    prometheus = PrometheusServer(workdir / "prometheus")
    prometheus.add_target("bench", exporter.address)
    with prometheus:
        prometheus.wait_for("bench_memory", timeout=30)
        drip = DripProxy(prometheus.url, interval=0.2)
        prometheus_settings = {"url": drip.url, "timeout": f"{deadline / 3:g}s", "deadline": f"{deadline:g}s"}
        settings = Settings.model_validate(
            {
                **TEST_SPEED,
                "prometheus": prometheus_settings,
                "signals": {"cpu": None, "latency": None, "errors": None, "memory": "bench_memory"},
            }
        )
        source = PrometheusSource(settings)
        try:
            started = time.monotonic()
            source.fetch()
            return (time.monotonic() - started) / deadline
        finally:
            source.close()
            drip.close()
            exporter.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--deadline", type=float, default=3.0, help="prometheus.deadline for the drip case")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        for keep_alive in (False, True):
            runs = [sigterm_seconds(root / f"sigterm-{keep_alive}-{i}", keep_alive) for i in range(args.runs)]
            label = "keep-alive scraper" if keep_alive else "idle"
            shares = ", ".join(f"{s / KUBERNETES_GRACE:.3f}" for s in runs)
            print(
                f"SIGTERM, hung Prometheus, {label}: {shares} of a 30 s grace period "
                f"(median {statistics.median(runs):.2f} s)"
            )
        ratio = drip_ratio(root, args.deadline)
        print(f"dripping proxy: query stage {ratio:.2f} x prometheus.deadline ({args.deadline:g} s)")


if __name__ == "__main__":
    main()
