"""How much of a scoring cycle is our own time, against a real Prometheus or the simulator.

    python benchmarks/cycle.py --prometheus --targets 1000 10000 50000
    python benchmarks/cycle.py --prometheus --targets 50000 --shards 4
    python benchmarks/cycle.py --targets 1000 10000          # simulated source, no Prometheus

``--prometheus`` backfills a real Prometheus (promtool, cached under --cache) with N
simulated pods x 4 gauges ``sim_<signal>{namespace,pod}`` at 60 s steps, then, in a fresh process per N
(so peak RSS is that N's own), runs the real Daemon cycle with the shipped bundle on a
clock that advances one step per cycle: the first cycle (full fetch of the 60-step
window), then, once the start-up warm-up of the anomaly statistics (a one-off history replay
in its own thread) is done, incremental ones. Printed, in one run: the per-stage times of the
daemon's own histogram (query, features, score, publish) and /metrics rendering, the
raw time of the same four full-window range queries sent one after another with plain
``requests`` (no gzip, body read, nothing decoded, as curl would), the ratio of the
incremental cycle to that raw time, and peak RSS. The machine is shared: figures are
noisy, the ratios within one run are what to compare.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "tests"):
    if str(path) not in sys.path:  # run as a script: make the package and the test servers importable
        sys.path.insert(0, str(path))


from exporter.config import BOOTSTRAP_MODEL, Settings  # noqa: E402
from exporter.features import frame_features  # noqa: E402
from exporter.models.bundle import load_bundle  # noqa: E402
from exporter.service.collector import STAGES  # noqa: E402
from exporter.service.daemon import Daemon  # noqa: E402
from exporter.sources.prometheus import PrometheusSource  # noqa: E402
from exporter.sources.simulate import SimulatedCluster, SimulateSource  # noqa: E402

STEP = 60
WINDOW = 60
EXTRA_STEPS = 6  # backfilled after the first window, for the incremental cycles
WARMUP_STEPS = 240  # simulated before the backfilled part, so incidents are under way
SIGNALS = ("cpu", "memory", "latency", "errors")
# Ends on a whole hour a day ago: inside any retention, and the same for every cached backfill.
END = (int(time.time()) // 86400 - 1) * 86400


def write_openmetrics(
    targets: int,
    path: Path,
    steps: int = WINDOW + EXTRA_STEPS,
    warmup: int = WARMUP_STEPS,
    end: int = END + EXTRA_STEPS * STEP,
) -> None:
    """N simulated pods (a few incidents, some signals absent, Kubernetes-like names) x 4 gauges
    over ``steps`` steps ending at ``end``, after ``warmup`` simulated steps (so incidents are
    under way); by default the first window and the incremental cycles' steps after it."""
    cluster = SimulatedCluster(targets=targets, seed=0, step=STEP)
    values = cluster.advance(warmup + steps)[:, -steps:]
    stamps = [str(end - (steps - 1 - i) * STEP) for i in range(steps)]
    with path.open("w") as out:
        for column, signal in enumerate(SIGNALS):
            out.write(f"# TYPE sim_{signal} gauge\n")
            for pod, target in enumerate(cluster.labels):
                labels = f'sim_{signal}{{namespace="{target["namespace"]}",pod="{target["pod"]}"}} '
                out.writelines(
                    f"{labels}{v:.6g} {t}\n"
                    for v, t in zip(values[pod, :, column].tolist(), stamps, strict=True)
                    if v == v
                )
        out.write("# EOF\n")


def backfilled(
    targets: int,
    cache: Path,
    steps: int = WINDOW + EXTRA_STEPS,
    warmup: int = WARMUP_STEPS,
    end: int = END + EXTRA_STEPS * STEP,
) -> Path:
    """A Prometheus work dir whose data/ holds ``write_openmetrics``' backfill for these
    arguments (built once under ``cache``, then reused)."""
    from servers import promtool_bin

    workdir = cache / f"prometheus-sim-{targets}-{steps}-{warmup}-{end}"
    if (workdir / "data" / ".complete").exists():
        return workdir
    workdir.mkdir(parents=True, exist_ok=True)
    openmetrics = workdir / "history.om"
    print(f"# backfilling {targets} pods x {steps} steps ...", file=sys.stderr, flush=True)
    write_openmetrics(targets, openmetrics, steps=steps, warmup=warmup, end=end)
    subprocess.run(
        [
            promtool_bin(),
            "tsdb",
            "create-blocks-from",
            "openmetrics",
            str(openmetrics),
            str(workdir / "data"),
        ],
        check=True,
        capture_output=True,
    )
    openmetrics.unlink()
    (workdir / "data" / ".complete").touch()
    return workdir


def settings_for(url: str, targets: int, shard: tuple[int, int], by: str | None = None) -> Settings:
    return Settings.model_validate(
        {
            "prometheus": {"url": url, "timeout": "300s", "deadline": "600s"},
            "step": f"{STEP}s",
            "lookback": f"{STEP * WINDOW}s",
            "signals": {signal: f"sim_{signal}{{{{selector}}}}" for signal in SIGNALS},
            "max_targets": targets,
            "shard": {"index": shard[0], "count": shard[1], "by": by},
        }
    )


def raw_full_window(settings: Settings, end: float) -> float:
    """The four full-window range queries, one after another, as curl would send them."""
    session = requests.Session()
    session.headers["Accept-Encoding"] = "identity"
    started = time.perf_counter()
    for query in settings.queries.values():
        params = {"query": query, "start": end - STEP * (WINDOW - 1), "end": end, "step": STEP}
        response = session.post(f"{settings.prometheus.url}/api/v1/query_range", data=params, timeout=300)
        response.raise_for_status()
        _ = response.content
    return time.perf_counter() - started


def peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM). Not getrusage's ru_maxrss: Linux keeps that across
    fork and exec, so a child forked from a large parent (one that just backfilled) reports
    the parent's size."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def stage_sums(daemon: Daemon) -> dict[str, float]:
    histogram = daemon.metrics.cycle_duration
    return {stage: histogram.labels(stage)._sum.get() for stage in STAGES}


def timed_cycle(daemon: Daemon) -> dict[str, float]:
    before = stage_sums(daemon)
    started = time.perf_counter()
    daemon.run_cycle()
    cycled = time.perf_counter()
    daemon.exposition.render()[0]
    rendered = time.perf_counter()
    after = stage_sums(daemon)
    times = {stage: after[stage] - before[stage] for stage in STAGES}
    return times | {"render": rendered - cycled, "cycle": rendered - started}


def wait_for_warmup(daemon: Daemon) -> float:
    """Seconds until the start-up warm-up (the anomaly statistics' history replay, a one-off
    in its own thread) is done, so the incremental cycles are timed as they run afterwards."""
    warmup = daemon._warmup  # the benchmark's only look inside: there is no public handle
    if warmup is None:
        return 0.0
    started = time.perf_counter()
    warmup.wait()
    return time.perf_counter() - started


def measure_prometheus(
    targets: int, shard: tuple[int, int], cache: Path, model: Path, by: str | None = None
) -> dict:
    """One N in this process: the first (full) cycle, incremental cycles, the raw query, peak RSS."""
    from servers import PrometheusServer

    with PrometheusServer(backfilled(targets, cache)) as prometheus:
        settings = settings_for(prometheus.url, targets, shard, by)
        clock = [float(END) + 1.0]
        source = PrometheusSource(settings, clock=lambda: clock[0])
        daemon = Daemon(settings, source, load_bundle(model), clock=lambda: clock[0])
        raw = raw_full_window(settings, END)  # also warms Prometheus' caches for the daemon
        raw = min(raw, raw_full_window(settings, END))
        first = timed_cycle(daemon)
        scored = len(daemon.state.snapshot.targets)
        warmup = wait_for_warmup(daemon)
        incremental = []
        for _ in range(EXTRA_STEPS - 1):
            clock[0] += STEP
            incremental.append(timed_cycle(daemon))
        source.close()
    steady = {key: statistics.median(c[key] for c in incremental) for key in incremental[0]}
    return {
        "targets": targets,
        "shard": f"{shard[0]}/{shard[1]}",
        "scored": scored,
        "raw": raw,
        "first": first,
        "warmup": warmup,
        "incremental": steady,
        "peak_rss_mb": peak_rss_mb(),
    }


def print_prometheus(results: list[dict], header: bool = True) -> None:
    if header:
        print_header()
    for r in results:
        first, inc = r["first"], r["incremental"]
        stages = " ".join(f"{inc[s]:>8.3f}" for s in (*STAGES, "render"))
        print(
            f"{r['targets']:>8} {r['shard']:>5} {r['scored']:>7} {r['raw']:>7.3f} | {r['warmup']:>7.2f} "
            f"{first['cycle']:>7.3f} {first['cycle'] / r['raw']:>5.2f}x | {stages} "
            f"{inc['cycle']:>7.3f} {inc['cycle'] / r['raw']:>5.2f}x | {r['peak_rss_mb']:>6.0f} MB",
            flush=True,
        )


def print_header() -> None:
    print(
        f"{'targets':>8} {'shard':>5} {'scored':>7} {'raw 4q':>7} | {'warm-up':>7} {'first':>7} {'ratio':>6} | "
        + " ".join(f"{s:>8}" for s in (*STAGES, "/metrics"))
        + f" {'cycle':>7} {'ratio':>6} | {'peak RSS':>9}"
    )
    print(f"{'':>31}| {'full cycle':^22} | {'incremental cycle (median), seconds':^60} |", flush=True)


def measure_simulated(targets: int, repeats: int, bundle_path: Path) -> dict[str, float]:
    """The simulate source: our own cost only, no Prometheus involved."""
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
        bundle.score(features, explain_from=0.2)
        scored = time.perf_counter()
        daemon.run_cycle()
        cycled = time.perf_counter()
        daemon.exposition.render()[0]
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
    parser.add_argument("--prometheus", action="store_true", help="against a real, backfilled Prometheus")
    parser.add_argument("--shards", type=int, default=1, help="measure shard 0 of this many")
    parser.add_argument("--shard-by", help="shard.by: assign targets by this label (e.g. pod), not by hash")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/failure-predictor-bench"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", type=Path, default=BOOTSTRAP_MODEL)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # child: one N, JSON out
    args = parser.parse_args()
    if args.prometheus and args.one:
        print(
            json.dumps(
                measure_prometheus(args.targets[0], (0, args.shards), args.cache, args.model, args.shard_by)
            )
        )
        return
    if args.prometheus:
        results = []
        for targets in args.targets:
            backfilled(targets, args.cache)  # here, so the child's peak RSS is the daemon's alone
            child = [sys.executable, __file__, "--prometheus", "--one", "--targets", str(targets)]
            child += ["--shards", str(args.shards), "--cache", str(args.cache), "--model", str(args.model)]
            child += ["--shard-by", args.shard_by] if args.shard_by else []
            done = subprocess.run(child, check=True, stdout=subprocess.PIPE, text=True)
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print_prometheus(results[-1:], header=len(results) == 1)
        return
    print(
        f"{'targets':>8} {'fetch':>9} {'features':>9} {'score':>9} {'cycle':>9} {'/metrics':>9}  (median seconds)"
    )
    for targets in args.targets:
        t = measure_simulated(targets, args.repeats, args.model)
        print(
            f"{targets:>8} {t['fetch']:>9.4f} {t['features']:>9.4f} {t['score']:>9.4f} "
            f"{t['cycle']:>9.4f} {t['render']:>9.4f}"
        )


if __name__ == "__main__":
    main()
