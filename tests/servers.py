"""Real Prometheus and Alertmanager processes for tests, on 127.0.0.1 and free ports.

Each server owns a working directory (config, data, log) that survives ``stop()``,
so a test can stop a server and start it again on the same port and data to
simulate an outage. Every started process is also ended by an ``atexit`` hook and,
on Linux, by the kernel when the test process dies, so a crashed or killed test
run leaves no orphans behind.
"""

from __future__ import annotations

import atexit
import ctypes
import http.server
import json
import math
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self
from urllib.parse import urlsplit

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
LOG_TAIL_LINES = 30
PR_SET_PDEATHSIG = 1
JOB_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")

_running: set[subprocess.Popen[bytes]] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _binary(env: str, command: str, package: str) -> str:
    """Resolve a server binary, or skip the test (fail under CI, where a skip would hide a broken setup)."""
    path = os.environ.get(env) or shutil.which(command)
    if path:
        return path
    reason = f"{command} not found: install the Debian package {package!r} or set {env}"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def prometheus_bin() -> str:
    """The ``prometheus`` binary: ``$PROMETHEUS_BIN`` or the one on PATH."""
    return _binary("PROMETHEUS_BIN", "prometheus", "prometheus")


def promtool_bin() -> str:
    """The ``promtool`` binary: ``$PROMTOOL_BIN`` or the one on PATH."""
    return _binary("PROMTOOL_BIN", "promtool", "prometheus")


def alertmanager_bin() -> str:
    """The Alertmanager binary: ``$ALERTMANAGER_BIN`` or Debian's ``prometheus-alertmanager``."""
    return _binary("ALERTMANAGER_BIN", "prometheus-alertmanager", "prometheus-alertmanager")


# Looked up before any fork: the child between fork and exec should only make the call.
_prctl = ctypes.CDLL(None).prctl if sys.platform.startswith("linux") else None


def _die_with_parent() -> None:
    """Have Linux SIGTERM the child when pytest dies, even by SIGKILL, where atexit cannot run.

    The kernel ties this to the thread that started the child: start servers from
    the main thread (fixtures do), not from a short-lived worker thread.
    """
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@atexit.register
def _stop_all() -> None:
    for process in list(_running):
        process.kill()
        process.wait()


def _write_json(path: Path, content: Any) -> None:
    """Write atomically, so a server polling the file never reads half of it (JSON is valid YAML)."""
    staging = path.with_name(path.name + ".tmp")
    staging.write_text(json.dumps(content, indent=2))
    os.replace(staging, path)


class Served:
    """Anything with ``start() -> self`` and ``stop()`` works as ``with Thing(...) as running:``."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


# The daemon at test speed: 1 s steps over a 60-step window, so incidents unfold in seconds.
TEST_SPEED: dict[str, str] = {
    "interval": "1s",
    "step": "1s",
    "lookback": "60s",
    "rate_window": "10s",
    "horizon": "30s",
    "stale_after": "5s",
}


class _ServerProcess(Served):
    """Start, stop and readiness for one server process writing to ``<workdir>/<name>.log``.

    Subclasses provide ``name`` and ``_argv()``; the server must answer ``GET /-/ready``.
    """

    name = "server"
    ready_path = "/-/ready"

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log_path = self.workdir / f"{self.name}.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def _argv(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float = READY_TIMEOUT) -> Self:
        """Start on the same port and data as any earlier run, and return once it is ready."""
        if self._process is not None:
            raise RuntimeError(f"{self.name} is already running on {self.address}")
        self._log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            self._argv(), stdout=self._log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
        )
        _running.add(self._process)
        self.wait_ready(timeout)
        return self

    def stop(self) -> None:
        """Terminate gracefully (killing after a timeout) and keep the workdir; safe to call twice."""
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        _running.discard(self._process)
        self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def seconds_to_exit(self, signum: int = signal.SIGTERM, timeout: float = 30.0) -> float:
        """Send ``signum`` and time the exit; after ``timeout`` kill it and return infinity."""
        if self._process is None:
            raise RuntimeError(f"{self.name} is not running")
        started = time.monotonic()
        self._process.send_signal(signum)
        try:
            self._process.wait(timeout)
            elapsed = time.monotonic() - started
        except subprocess.TimeoutExpired:
            elapsed = math.inf
            self._process.kill()
        self.stop()
        return elapsed

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Poll the ready path; fail early if the process exits, and show its log either way."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                raise RuntimeError(f"{self.name} exited before it was ready\n{self.log_tail()}")
            try:
                if requests.get(f"{self.url}{self.ready_path}", timeout=1).ok:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} on {self.address} not ready after {timeout} s\n{self.log_tail()}")

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines the server wrote, for error messages."""
        if not self.log_path.exists():
            return f"({self.log_path} does not exist)"
        text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return f"--- last {len(text)} lines of {self.log_path} ---\n" + "\n".join(text)


class PrometheusQueryError(RuntimeError):
    """Prometheus rejected a query; the message carries Prometheus's own explanation."""


class PrometheusServer(_ServerProcess):
    """A real Prometheus scraping every 1 s the targets that tests add at runtime.

    Targets live in one ``file_sd`` JSON file per job under ``<workdir>/targets``,
    re-read every second; Prometheus still batches discovery changes, so a new
    target (and the very first scrape after start) takes up to ~5 s to be scraped.
    A target's ``job`` label comes from the file, so a job needs no config reload.
    """

    name = "prometheus"

    def __init__(
        self,
        workdir: Path,
        rule_files: Sequence[Path | str] = (),
        alertmanager_url: str | None = None,
    ) -> None:
        super().__init__(workdir)
        self.binary = prometheus_bin()
        self.config_path = self.workdir / "prometheus.yml"
        self.data_path = self.workdir / "data"
        self.targets_path = self.workdir / "targets"
        self.targets_path.mkdir(exist_ok=True)
        self._targets: dict[str, dict[str, dict[str, str]]] = {}
        _write_json(self.config_path, _prometheus_config(self.targets_path, rule_files, alertmanager_url))

    def _argv(self) -> list[str]:
        return [
            self.binary,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.data_path}",
            "--storage.tsdb.retention.time=3650d",
            f"--web.listen-address={self.address}",
            "--web.enable-lifecycle",
        ]

    def add_target(self, job: str, address: str, labels: Mapping[str, str] | None = None) -> None:
        """Scrape ``address`` as ``job`` with extra target ``labels`` (replacing earlier ones)."""
        if not JOB_NAME.match(job):
            raise ValueError(f"job {job!r} must match {JOB_NAME.pattern}: it names a file")
        self._targets.setdefault(job, {})[address] = dict(labels or {})
        self._write_targets(job)

    def remove_target(self, job: str, address: str) -> None:
        """Stop scraping ``address`` in ``job``; Prometheus marks its series stale."""
        if address not in self._targets.get(job, {}):
            raise KeyError(f"job {job!r} has no target {address!r}; targets: {self._targets}")
        del self._targets[job][address]
        self._write_targets(job)

    def _write_targets(self, job: str) -> None:
        groups = [
            {"targets": [address], "labels": {**labels, "job": job}}
            for address, labels in self._targets[job].items()
        ]
        _write_json(self.targets_path / f"{job}.json", groups)

    def query(self, promql: str, at: float | None = None) -> list:
        """Instant query at ``at`` (Unix seconds, default now); the ``result`` list of the answer."""
        params = {"query": promql} if at is None else {"query": promql, "time": at}
        response = requests.get(f"{self.url}/api/v1/query", params=params, timeout=10)
        try:
            body = response.json()
        except ValueError:
            body = {}
        if body.get("status") != "success":
            detail = f"{body.get('errorType')}: {body.get('error')}" if body else response.text
            raise PrometheusQueryError(f"{promql!r} failed with HTTP {response.status_code}: {detail}")
        return body["data"]["result"]

    def wait_for(
        self,
        promql: str,
        predicate: Callable[[list], bool] = bool,
        timeout: float = 20.0,
        interval: float = 0.25,
    ) -> list:
        """Re-run ``promql`` until ``predicate(result)`` holds (by default: non-empty); return that result."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(promql)
            if predicate(result):
                return result
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{promql!r} did not satisfy {getattr(predicate, '__name__', predicate)} "
                    f"within {timeout} s; last result: {result}\n{self.log_tail(10)}"
                )
            time.sleep(interval)


def _prometheus_config(
    targets_path: Path, rule_files: Sequence[Path | str], alertmanager_url: str | None
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": [
            {
                "job_name": "file_sd",
                # The daemon re-exports namespace/pod labels that must not become exported_*.
                "honor_labels": True,
                "file_sd_configs": [{"files": [str(targets_path / "*.json")], "refresh_interval": "1s"}],
            }
        ],
    }
    if alertmanager_url is not None:
        parts = urlsplit(alertmanager_url)
        config["alerting"] = {
            "alertmanagers": [
                {
                    "scheme": parts.scheme or "http",
                    "path_prefix": parts.path or "/",
                    "static_configs": [{"targets": [parts.netloc]}],
                }
            ]
        }
    return config


class AlertmanagerServer(_ServerProcess):
    """A real Alertmanager without clustering; by default it routes every alert to a no-op receiver.

    Pass ``config`` (the Alertmanager YAML as a dict) to route to a webhook instead.
    """

    name = "alertmanager"

    def __init__(self, workdir: Path, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(workdir)
        self.binary = alertmanager_bin()
        self.config_path = self.workdir / "alertmanager.yml"
        self.data_path = self.workdir / "data"
        default = {
            "route": {
                "receiver": "null",
                "group_wait": "1s",
                "group_interval": "1s",
                "repeat_interval": "1h",
            },
            "receivers": [{"name": "null"}],
        }
        _write_json(self.config_path, config if config is not None else default)

    def _argv(self) -> list[str]:
        return [
            self.binary,
            f"--config.file={self.config_path}",
            f"--storage.path={self.data_path}",
            f"--web.listen-address={self.address}",
            # Empty turns clustering off; otherwise it binds 0.0.0.0:9094 and gossips.
            "--cluster.listen-address=",
        ]


class DaemonServer(_ServerProcess):
    """The real ``failure-predictor run`` in a subprocess, configured from a dict.

    The listen address and port are filled in; everything else comes from
    ``config`` (the YAML config as a dict), so each test states what it relies on.
    """

    name = "failure-predictor"
    ready_path = "/healthz"

    def __init__(self, workdir: Path, config: Mapping[str, Any]) -> None:
        super().__init__(workdir)
        self.config_path = self.workdir / "config.yaml"
        listen = {"listen": {"address": "127.0.0.1", "port": self.port}}
        _write_json(self.config_path, {**config, **listen})

    def _argv(self) -> list[str]:
        return [sys.executable, "-m", "exporter", "run", "--config", str(self.config_path)]

    def get(self, path: str) -> requests.Response:
        return requests.get(f"{self.url}{path}", timeout=10)

    def scores(self) -> dict[str, float]:
        """failure_probability per pod from the JSON API (empty until a cycle succeeded)."""
        body = self.get("/api/v1/targets").json()
        return {row["labels"]["pod"]: row["failure_probability"] for row in body["targets"]}

    def metric_value(self, name: str, **labels: str) -> float | None:
        """One sample from /metrics, parsed with prometheus_client's own parser."""
        for family in text_string_to_metric_families(self.get("/metrics").text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return sample.value
        return None


class AuthProxy:
    """A real HTTP proxy in front of a real Prometheus, as users run oauth/basic-auth proxies.

    It records every request (path and headers) and answers 401 unless the
    request carries ``required_headers`` exactly, so tests can see what the
    daemon sends and how many queries it makes.
    """

    def __init__(
        self,
        upstream: str,
        required_headers: Mapping[str, str] | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.upstream = upstream
        self.required = dict(required_headers or {})
        self.requests: list[tuple[str, dict[str, str]]] = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self._forward("POST")

            def do_GET(self) -> None:
                self._forward("GET")

            def _forward(self, method: str) -> None:
                headers = dict(self.headers.items())
                proxy.requests.append((self.path.split("?")[0], headers))
                if any(headers.get(k) != v for k, v in proxy.required.items()):
                    self._reply(401, b"unauthorized\n", "text/plain")
                    return
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                answer = requests.request(
                    method,
                    proxy.upstream + self.path,
                    data=body,
                    headers={"Content-Type": self.headers.get("Content-Type", "")},
                    timeout=10,
                )
                self._reply(answer.status_code, answer.content, answer.headers.get("Content-Type", ""))

            def _reply(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:  # TLS in front of the real Prometheus, as an ingress or sidecar proxy
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        scheme = "http" if tls is None else "https"
        self.url = f"{scheme}://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def paths(self) -> list[str]:
        return [path for path, _ in self.requests]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class SilentServer:
    """Accepts TCP connections and never answers: a Prometheus that hangs."""

    def __init__(self) -> None:
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        self.connections: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:
                return
            self.connections.append(connection)

    def close(self) -> None:
        for connection in self.connections:
            connection.close()
        self._socket.close()


class TextExporter(Served):
    """Serves ``text`` (Prometheus text exposition) at ``/metrics``; tests change it at will.

    For faults the fake workload cannot produce: absurd values, clashing label sets,
    series that appear and vanish on cue.
    """

    def __init__(self, text: str = "") -> None:
        self.text = text
        exporter = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = exporter.text.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> Self:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class DripProxy:
    """A real proxy that relays Prometheus's whole answer (status line, headers, body) one
    byte every ``interval`` seconds: never idle long enough to trip a per-read timeout."""

    def __init__(self, upstream: str, interval: float = 0.2) -> None:
        self.upstream = upstream
        self.interval = interval
        self.dripping = 0
        self._closed = threading.Event()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                answer = requests.post(
                    proxy.upstream + self.path,
                    data=body,
                    headers={"Content-Type": self.headers.get("Content-Type", "")},
                    timeout=10,
                )
                head = f"HTTP/1.1 {answer.status_code} OK\r\nContent-Type: application/json\r\n"
                head += f"Content-Length: {len(answer.content)}\r\n\r\n"
                proxy.dripping += 1
                for byte in head.encode() + answer.content:
                    if proxy._closed.wait(proxy.interval):
                        return
                    try:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                    except OSError:  # the client gave up
                        return

            def log_message(self, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._closed.set()
        self._server.shutdown()
        self._server.server_close()
