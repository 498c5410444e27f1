"""``failure-predictor demo``: the real daemon, scoring a simulated cluster.

Each cycle advances the simulation by one 60 s step, so incidents that take an
hour in a real cluster play out in a couple of minutes here. The terminal table
shows the simulator's ground truth next to the scores, so you can see the model
warn before a failure starts.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from typing import TextIO

from exporter.config import Settings
from exporter.models.bundle import ModelBundle
from exporter.models.normalize import SETTLED_STEPS
from exporter.service.api import make_server
from exporter.service.daemon import Daemon
from exporter.snapshot import RISK_NAMES, Snapshot
from exporter.sources.simulate import SimulatedCluster, SimulateSource

DEMO_INCIDENT_RATE = (
    10.0  # scenarios per target-day: four times the training default, so something is happening
)


def demo_settings(bundle: ModelBundle, args: argparse.Namespace) -> Settings:
    step = bundle.manifest.step_seconds
    return Settings.model_validate(
        {
            "interval": args.interval,
            "step": step,
            "lookback": step * bundle.manifest.window_steps,
            "horizon": bundle.manifest.horizon_seconds,
            "stale_after": max(60.0, 5 * args.interval),
            "listen": {"address": args.address, "port": args.port},
        }
    )


def listen(address: str, port: int) -> socket.socket:
    """The demo's listening socket, bound before anything prints, so a busy port fails first.

    Handing this socket to uvicorn leaves no window for another process to take the port. It is
    made with ``IPPROTO_TCP`` named, because asyncio sets TCP_NODELAY only on sockets that say so
    (``socket.create_server`` leaves proto 0): without it, every answer on a keep-alive connection
    after the first waited ~40 ms for the client's delayed ACK (Nagle's algorithm)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((address, port))
        sock.listen()
    except OSError:
        sock.close()
        raise
    return sock


def print_table(snapshot: Snapshot, cluster: SimulatedCluster, out: TextIO, url: str, rows: int = 10) -> None:
    truth = cluster.scenarios()
    order = sorted(range(len(snapshot.targets)), key=lambda row: -snapshot.probability[row])[:rows]
    levels = snapshot.risk
    if out.isatty():
        out.write("\x1b[H\x1b[2J")
    out.write(f"riskiest of {len(snapshot.targets)} simulated targets (horizon {snapshot.horizon}):\n")
    out.write(f"{'namespace/pod':<34} {'P(fail)':>7} {'risk':<8} {'anomaly':>7}  {'top signal':<10} truth\n")
    for row in order:
        target = snapshot.targets[row]
        top = snapshot.top_signals(row, 1)
        out.write(
            f"{target['namespace'] + '/' + target['pod']:<34} {snapshot.probability[row]:>7.3f} "
            f"{RISK_NAMES[levels[row]]:<8} {anomaly_cell(snapshot, row):>7}  {(top[0][0] if top else '-'):<10} "
            f"{truth[row]}\n"
        )
    out.write(f"incidents so far: {len(cluster.incidents)}\n")
    if snapshot.bands is not None and (snapshot.bands.history[order] < SETTLED_STEPS).any():
        out.write(
            f"anomaly 'warm N': N samples of history so far; the score is shrunk until {SETTLED_STEPS} "
            "(the demo has no Prometheus history to warm up from)\n"
        )
    # Repeated under every table: clearing the screen wiped the one printed at start.
    out.write(f"serving {url}  (/metrics, /api/v1/targets, /docs; Ctrl-C to stop)\n\n")
    out.flush()


def anomaly_cell(snapshot: Snapshot, row: int) -> str:
    """The anomaly column: the score, or "warm N" while the target's history is short."""
    history = snapshot.bands.history[row] if snapshot.bands is not None else SETTLED_STEPS
    if history < SETTLED_STEPS and snapshot.anomaly[row] == 0.0:
        return f"warm {int(history)}"
    return f"{snapshot.anomaly[row]:.3f}"


def run_demo(bundle: ModelBundle, args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    try:
        listener = listen(args.address, args.port)
    except OSError as exc:
        print(
            f"error: cannot listen on {args.address}:{args.port}: {os.strerror(exc.errno) if exc.errno else exc} "
            "(another demo running? choose one with --port)",
            file=sys.stderr,
        )
        return 1
    settings = demo_settings(bundle, args)
    cluster = SimulatedCluster(
        targets=args.targets, seed=args.seed, step=settings.step, incident_rate=DEMO_INCIDENT_RATE
    )
    source = SimulateSource(cluster, window=bundle.manifest.window_steps)
    daemon = Daemon(settings, source, bundle)
    host = f"[{args.address}]" if ":" in args.address else args.address
    url = f"http://{host}:{args.port}/"
    out.write(f"failure-predictor demo: serving {url} (Ctrl-C to stop)\n")
    server = make_server(daemon, args.address, args.port)
    cycles = 0

    def on_cycle(snapshot: Snapshot) -> None:
        nonlocal cycles
        cycles += 1
        print_table(snapshot, cluster, out, url)
        if args.cycles and cycles >= args.cycles:
            server.should_exit = True

    daemon.on_cycle.append(on_cycle)
    server.run(sockets=[listener])
    return 0
