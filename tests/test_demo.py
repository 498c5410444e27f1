"""`failure-predictor demo`: the real daemon on the simulated cluster, as a user runs it."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time

import requests
from prometheus_client.parser import text_string_to_metric_families
from servers import free_port


def test_demo_serves_metrics_and_prints_differing_probabilities() -> None:
    port = free_port()
    demo = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "exporter",
            "demo",
            "--cycles",
            "30",
            "--interval",
            "0.2",
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        metrics = ""
        deadline = time.monotonic() + 30
        while "failure_probability{" not in metrics and time.monotonic() < deadline:
            try:
                metrics = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
            except requests.ConnectionError:
                time.sleep(0.2)
        output, _ = demo.communicate(timeout=60)
    finally:
        demo.kill()

    assert demo.returncode == 0, output
    exported = [
        sample.labels
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.name == "failure_probability"
    ]
    assert len(exported) == 40
    assert all(labels["namespace"] and labels["pod"] and labels["horizon"] == "30m" for labels in exported)
    last_table = output.rsplit("riskiest of", 1)[1]
    assert f"serving http://127.0.0.1:{port}/ " in last_table, "the URL survives the screen being cleared"
    probabilities = [float(p) for p in re.findall(r"^\S+/\S+\s+([01]\.\d{3}) ", last_table, re.MULTILINE)]
    assert len(probabilities) == 10
    assert probabilities == sorted(probabilities, reverse=True)
    assert probabilities[0] > 0.5, last_table
    assert probabilities[0] - probabilities[-1] > 0.3, last_table
    first_table = output.split("riskiest of", 2)[1]
    assert re.search(r"\swarm 1\s", first_table), first_table  # a target's first cycle says it warms up
    assert "samples of history so far" in first_table  # ... and what that means


def test_busy_port_is_one_clear_error_before_any_table() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        demo = subprocess.run(
            [sys.executable, "-m", "exporter", "demo", "--cycles", "1", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert demo.returncode == 1
    assert "riskiest" not in demo.stdout
    assert demo.stderr.splitlines() == [
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use "
        "(another demo running? choose one with --port)"
    ]


def test_connections_to_the_demo_socket_send_without_waiting_for_acks() -> None:
    """asyncio turns Nagle off (TCP_NODELAY) only on sockets made with IPPROTO_TCP; without it,
    every answer on a keep-alive connection after the first waited ~40 ms for a delayed ACK."""
    import asyncio

    from exporter.demo import listen

    async def accepted_nodelay() -> int:
        seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            sock = writer.get_extra_info("socket")
            seen.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(on_connect, sock=listen("127.0.0.1", free_port()))
        port = server.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            return await asyncio.wait_for(seen, timeout=10)
        finally:
            writer.close()
            server.close()

    assert asyncio.run(accepted_nodelay()) != 0
