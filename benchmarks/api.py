"""Requests per second and p50/p99 latency of POST /api/v1/predict, against the seeds' plain server.

    python benchmarks/api.py                      # starts `failure-predictor demo` on a free port
    python benchmarks/api.py --url http://host:9847 [--token T]   # an already running daemon

Raw-value observations (a full window of every signal, random walks) are sent
over keep-alive HTTP/1.1 connections: single predictions from one client (pure
latency) and from several concurrent clients (throughput; concurrent requests
are coalesced into one model call by the server), then batches of 100 and 1,000.

In the same run the same client loads the seeds' design, FastAPI + one XGBoost model
on seven scalars (``--reference``, default ../shared/bench/seed_api_reference.py,
started beside the daemon with uvicorn), and the ratios daemon / reference are
printed. The servers and this client share the machine's cores (and, here, with
other jobs), so only the ratios within one run mean anything.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT.parent / "shared" / "bench" / "seed_api_reference.py"
REFERENCE_BODY = json.dumps(
    {
        "cpu_usage": 85,
        "memory_usage": 90,
        "disk_usage": 45,
        "network_latency_ms": 120,
        "error_count": 5,
        "response_time_ms": 800,
        "active_connections": 150,
    }
).encode()


def observations(count: int, window: int, signals: list[str], seed: int = 0) -> list[dict[str, Any]]:
    """Plausible windows: utilisation-like random walks in [0, 1] ending now."""
    rng = np.random.default_rng(seed)
    walks = np.clip(0.4 + np.cumsum(rng.normal(0, 0.01, (count, window, len(signals))), axis=1), 0, 1)
    return [
        {"signals": {name: walks[i, :, s].round(5).tolist() for s, name in enumerate(signals)}}
        for i in range(count)
    ]


class Client:
    """One keep-alive connection; ``post`` returns the seconds the round trip took."""

    def __init__(self, url: str, token: str | None) -> None:
        parts = urlsplit(url)
        kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        self.connection = kind(parts.hostname, parts.port, timeout=120)
        self.headers = {"Content-Type": "application/json"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        self.connection.request(method, path, body=body, headers=self.headers)
        response = self.connection.getresponse()
        return response.status, response.read()

    def post(self, body: bytes, path: str = "/api/v1/predict") -> float:
        start = time.perf_counter()
        status, data = self.request("POST", path, body)
        elapsed = time.perf_counter() - start
        if status != 200:
            raise RuntimeError(f"HTTP {status}: {data[:300]!r}")
        return elapsed


def run(
    url: str,
    token: str | None,
    bodies: list[bytes],
    clients: int,
    seconds: float,
    path: str = "/api/v1/predict",
) -> dict[str, Any]:
    """Send ``bodies`` round-robin from ``clients`` threads for ``seconds``; latency and rate."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    stop = time.perf_counter() + seconds

    def work(index: int) -> None:
        client = Client(url, token)
        client.post(bodies[0], path)  # connect outside the measurement
        i = index
        while time.perf_counter() < stop:
            latencies[index].append(client.post(bodies[i % len(bodies)], path))
            i += clients

    threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    every = [x for per_client in latencies for x in per_client]
    return merged([{"latencies": every, "elapsed": elapsed}]) | {"latencies": every, "elapsed": elapsed}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def demo_server() -> Any:
    """`failure-predictor demo` (the shipped model, a simulated cluster) on a free port."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "exporter", "demo", "--port", str(port), "--interval", "60", "--cycles", "0"],
        stdout=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: Client(url, None).request("GET", "/readyz")[0] == 200, timeout=60)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@contextmanager
def reference_server(script: Path) -> Any:
    """The seeds' plain FastAPI + XGBoost server (``script``) under uvicorn on a free port."""
    port = free_port()
    app = [f"{script.stem}:app", "--app-dir", str(script.parent)]
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", *app, "--port", str(port), "--log-level", "warning"],
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: Client(url, None).request("POST", "/predict", REFERENCE_BODY)[0] == 200, timeout=60
        )
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def reference_bodies(count: int, seed: int = 0) -> list[bytes]:
    """The reference's seven scalars, random but plausible."""
    rng = np.random.default_rng(seed)
    names = list(json.loads(REFERENCE_BODY))
    scale = np.array([100, 100, 100, 500, 20, 2000, 500])
    return [
        json.dumps(dict(zip(names, row.round(3).tolist(), strict=True))).encode()
        for row in rng.random((count, 7)) * scale
    ]


def wait_until(ready: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if ready():
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the server did not become ready")


def interleaved(
    ours: tuple[str, list[bytes], str], theirs: tuple[str, list[bytes], str], clients: int, seconds: float
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Both servers loaded in alternating one-second slices, so a shared, noisy machine's load
    drifts over both alike; each is loaded for ``seconds`` in all."""
    slices: list[list[dict[str, Any]]] = [[], []]
    for _ in range(max(1, round(seconds))):
        for side, (url, bodies, path) in enumerate((ours, theirs)):
            slices[side].append(run(url, None if side else TOKEN[0], bodies, clients, 1.0, path))
    return merged(slices[0]), merged(slices[1])


def merged(parts: list[dict[str, Any]]) -> dict[str, Any]:
    every = sorted(x for part in parts for x in part["latencies"])
    return {
        "requests": len(every),
        "rps": len(every) / sum(part["elapsed"] for part in parts),
        "p50": statistics.median(every),
        "p99": every[min(len(every) - 1, int(0.99 * len(every)))],
    }


TOKEN: list[str | None] = [None]


def measure(
    url: str, reference: str, seconds: float, clients: int
) -> list[tuple[str, dict[str, Any], dict[str, Any] | None]]:
    status, data = Client(url, TOKEN[0]).request("GET", "/api/v1/model")
    if status != 200:
        raise RuntimeError(f"GET /api/v1/model: HTTP {status}: {data[:300]!r}")
    model = json.loads(data)
    pool = observations(2000, model["window_steps"], model["signals"])
    singles = [json.dumps(item).encode() for item in pool]
    batch_100 = [json.dumps(pool[i : i + 100]).encode() for i in range(0, 2000, 100)]
    batch_1000 = [json.dumps(pool[:1000]).encode(), json.dumps(pool[1000:]).encode()]
    ours, theirs = (url, singles, "/api/v1/predict"), (reference, reference_bodies(2000), "/predict")
    one = interleaved(ours, theirs, 1, seconds)
    many = interleaved(ours, theirs, clients, seconds)
    return [
        ("single, 1 client", *one),
        (f"single, {clients} clients", *many),
        ("batch of 100, 1 client", {**run(url, TOKEN[0], batch_100, 1, seconds), "items": 100}, None),
        ("batch of 1,000, 1 client", {**run(url, TOKEN[0], batch_1000, 1, seconds), "items": 1000}, None),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="a running daemon (default: start the demo)")
    parser.add_argument(
        "--token", default=os.environ.get("FAILURE_PREDICTOR_API__TOKEN"), help="bearer token"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="per measurement (default 10)")
    parser.add_argument(
        "--clients", type=int, default=16, help="concurrent clients for throughput (default 16)"
    )
    parser.add_argument("--reference", type=Path, default=REFERENCE, help="the seeds' server script")
    args = parser.parse_args()
    TOKEN[0] = args.token
    with (
        demo_server() if args.url is None else _given(args.url) as url,
        reference_server(args.reference) as reference,
    ):
        results = measure(url, reference, args.seconds, args.clients)
    print(
        f"{'POST /api/v1/predict':<26} {'requests/s':>10} {'items/s':>9} {'p50':>9} {'p99':>9}   seeds' server"
    )
    for name, result, seed in results:
        items = result["rps"] * result.get("items", 1)
        line = (
            f"{name:<26} {result['rps']:>10,.0f} {items:>9,.0f} "
            f"{result['p50'] * 1000:>7.1f}ms {result['p99'] * 1000:>7.1f}ms"
        )
        if seed is not None:
            line += (
                f"   {seed['rps']:,.0f}/s, p50 {seed['p50'] * 1000:.1f}ms, p99 {seed['p99'] * 1000:.1f}ms: "
                f"ratio {result['rps'] / seed['rps']:.2f}x"
            )
        print(line)


@contextmanager
def _given(url: str) -> Any:
    yield url.rstrip("/")


if __name__ == "__main__":
    main()
