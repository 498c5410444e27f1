"""A fake Kubernetes workload that a real Prometheus can scrape in tests.

It publishes the raw series that the daemon's default signals are computed from,
shaped as cAdvisor (CPU, memory), kube-state-metrics (limits) and an
instrumented app (latency histogram, request counter) would publish them, for a
handful of pods. Every value is a pure function of the time since ``start()``,
so counters are monotonic and a run is reproducible from its seed.

Two pods misbehave so that tests have something to predict: the *leaky* pod's
working set climbs from ~40 % to ~98 % of its limit over ``leak_seconds``, and
the *erroring* pod's error ratio climbs from ~0.5 % to ~25 % over the same span;
then both restart and go wrong again, every ``leak_seconds``, for as long as a
test session lasts. (A pod pinned at 98 % or at 25 % errors with no trend is
either fine or already failed; neither is what a predictor is for.)
"""

from __future__ import annotations

import dataclasses
import math
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_wsgi_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from servers import Served

CONTAINER = "app"
CPU_LIMIT_CORES = 1.0
MEMORY_LIMIT_BYTES = 512 * 1024 * 1024
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0)
LATENCY_SIGMA = 0.5
Z_99 = 2.326
WOBBLE = 0.1


@dataclass(frozen=True)
class _Pod:
    """Everything that decides one pod's series; ``*_start``/``*_end`` ramp over the leak."""

    name: str
    cpu_cores: float
    memory_start: float
    memory_end: float
    error_start: float
    error_end: float
    requests_per_second: float
    latency_median: float
    period: float
    phase: float
    http: bool = True  # False: no request metrics at all, like a database or a queue


def _ramp(t: float, start: float, end: float, span: float) -> float:
    """Linear from ``start`` to ``end`` over each ``span``, then back to ``start``: the pod is
    killed at the top (OOM, failing health checks), restarts and goes wrong again."""
    return start + (end - start) * ((t % span) / span)


def _ramp_integral(t: float, start: float, end: float, span: float) -> float:
    """Integral of ``_ramp`` from 0 to t, which turns a ratio ramp into a counter."""
    cycles, into = divmod(t, span)
    return cycles * span * (start + end) / 2 + start * into + (end - start) * into * into / (2 * span)


def _wobbly_counter(t: float, rate: float, pod: _Pod) -> float:
    """A counter whose rate swings +-10 % around ``rate`` yet never decreases."""
    swing = WOBBLE * rate * pod.period / (2 * math.pi)
    return rate * t + swing * (1 + math.sin(2 * math.pi * t / pod.period + pod.phase))


def _lognormal_cdf(x: float, median: float) -> float:
    """Share of requests faster than ``x`` seconds."""
    return 0.5 * (1 + math.erf(math.log(x / median) / (LATENCY_SIGMA * math.sqrt(2))))


@dataclass(frozen=True)
class _Scrape:
    """What one scrape renders: the pods at that moment and the clock reading."""

    t: float
    pods: tuple[_Pod, ...]
    namespace: str
    span: float

    def ramp(self, start: float, end: float) -> float:
        return _ramp(self.t, start, end, self.span)

    def ramp_integral(self, start: float, end: float) -> float:
        return _ramp_integral(self.t, start, end, self.span)


def _cpu_families(scrape: _Scrape) -> Iterator[Metric]:
    usage = CounterMetricFamily(
        "container_cpu_usage_seconds_total",
        "Cumulative CPU time consumed, in core-seconds.",
        labels=["namespace", "pod", "container"],
    )
    for pod in scrape.pods:
        labels = [scrape.namespace, pod.name, CONTAINER]
        usage.add_metric(labels, _wobbly_counter(scrape.t, pod.cpu_cores, pod))
    yield usage


def _memory_families(scrape: _Scrape) -> Iterator[Metric]:
    working_set = GaugeMetricFamily(
        "container_memory_working_set_bytes",
        "Current working set of the container, in bytes.",
        labels=["namespace", "pod", "container"],
    )
    limits = GaugeMetricFamily(
        "kube_pod_container_resource_limits",
        "Resource limit of the container, in the given unit.",
        labels=["namespace", "pod", "container", "resource", "unit"],
    )
    for pod in scrape.pods:
        labels = [scrape.namespace, pod.name, CONTAINER]
        share = scrape.ramp(pod.memory_start, pod.memory_end)
        wobble = 0.005 * math.sin(2 * math.pi * scrape.t / pod.period + pod.phase)
        working_set.add_metric(labels, (share + wobble) * MEMORY_LIMIT_BYTES)
        limits.add_metric([*labels, "cpu", "core"], CPU_LIMIT_CORES)
        limits.add_metric([*labels, "memory", "byte"], MEMORY_LIMIT_BYTES)
    yield working_set
    yield limits


def _http_families(scrape: _Scrape) -> Iterator[Metric]:
    durations = HistogramMetricFamily(
        "http_request_duration_seconds",
        "Time taken to answer HTTP requests.",
        labels=["namespace", "pod"],
    )
    requests = CounterMetricFamily(
        "http_requests_total", "HTTP requests answered, by status code.", labels=["namespace", "pod", "code"]
    )
    for pod in (p for p in scrape.pods if p.http):
        ids = [scrape.namespace, pod.name]
        total = _wobbly_counter(scrape.t, pod.requests_per_second, pod)
        # Errors follow the nominal rate, so successes still grow at >= 65 % of it.
        errors = pod.requests_per_second * scrape.ramp_integral(pod.error_start, pod.error_end)
        requests.add_metric([*ids, "200"], total - errors)
        requests.add_metric([*ids, "500"], errors)
        buckets = [(str(le), total * _lognormal_cdf(le, pod.latency_median)) for le in LATENCY_BUCKETS]
        mean = pod.latency_median * math.exp(LATENCY_SIGMA**2 / 2)
        durations.add_metric(ids, [*buckets, ("+Inf", total)], total * mean)
    yield durations
    yield requests


def _owner_families(scrape: _Scrape, deployment: str) -> Iterator[Metric]:
    """kube-state-metrics' owner series: each pod owned by the Deployment's one ReplicaSet."""
    replicaset = f"{deployment}-5d8f7c6b9"
    pods = GaugeMetricFamily(
        "kube_pod_owner",
        "Information about the Pod's owner.",
        labels=["namespace", "pod", "uid", "owner_kind", "owner_name", "owner_is_controller"],
    )
    for pod in scrape.pods:
        pods.add_metric([scrape.namespace, pod.name, f"uid-{pod.name}", "ReplicaSet", replicaset, "true"], 1)
    replicasets = GaugeMetricFamily(
        "kube_replicaset_owner",
        "Information about the ReplicaSet's owner.",
        labels=["namespace", "replicaset", "owner_kind", "owner_name", "owner_is_controller"],
    )
    replicasets.add_metric([scrape.namespace, replicaset, "Deployment", deployment, "true"], 1)
    yield pods
    yield replicasets


def _make_pods(count: int, rng: random.Random) -> tuple[tuple[_Pod, ...], str, str]:
    """Draw healthy pods, then turn two of them (chosen by the seed) into the risky ones."""
    leaky, erroring = rng.sample(range(count), 2)
    pods = []
    for i in range(count):
        memory = rng.uniform(0.30, 0.50)
        error = rng.uniform(0.001, 0.005)
        p99 = rng.uniform(0.12, 0.28)
        memory_start, memory_end = (0.40, 0.98) if i == leaky else (memory, memory)
        error_start, error_end = (0.005, 0.25) if i == erroring else (error, error)
        pods.append(
            _Pod(
                name=f"app-{i:02d}",
                cpu_cores=rng.uniform(0.1, 0.4),
                memory_start=memory_start,
                memory_end=memory_end,
                error_start=error_start,
                error_end=error_end,
                requests_per_second=rng.uniform(5.0, 20.0),
                latency_median=p99 / math.exp(Z_99 * LATENCY_SIGMA),
                period=rng.uniform(20.0, 40.0),
                phase=rng.uniform(0.0, 2 * math.pi),
            )
        )
    return tuple(pods), pods[leaky].name, pods[erroring].name


class Workload(Served):
    """Serves the fake pods' series on ``http://127.0.0.1:PORT/metrics`` from a daemon thread.

    Pods are named ``app-NN``; which of them is leaky or erroring depends on the seed,
    so tests must use ``leaky_pod``, ``erroring_pod`` and ``healthy_pods``.
    """

    def __init__(
        self,
        pods: int = 20,
        leak_seconds: float = 90.0,
        seed: int = 0,
        namespace: str = "demo",
        without_http: int = 0,
        deployment: str | None = None,
    ) -> None:
        """``deployment``: also export kube-state-metrics' owner series, every pod owned by one
        ReplicaSet of a Deployment of that name (kube_pod_owner, kube_replicaset_owner)."""
        if pods < 3:
            raise ValueError(f"Workload needs pods >= 3 (a leaky, an erroring and a healthy one), got {pods}")
        if leak_seconds <= 0:
            raise ValueError(f"Workload leak_seconds must be > 0, got {leak_seconds}")
        self.namespace = namespace
        self.leak_seconds = leak_seconds
        self.deployment = deployment
        self._pods, self.leaky_pod, self.erroring_pod = _make_pods(pods, random.Random(seed))
        if without_http > len(self.healthy_pods):
            raise ValueError(
                f"Workload without_http={without_http}: only {len(self.healthy_pods)} healthy pods"
            )
        quiet = set(self.healthy_pods[len(self.healthy_pods) - without_http :])
        self._pods = tuple(dataclasses.replace(p, http=p.name not in quiet) for p in self._pods)
        self._lock = threading.Lock()
        self._started: float | None = None
        self._server: tuple[WSGIServer, threading.Thread] | None = None

    @property
    def address(self) -> str:
        """``host:port`` as a Prometheus target."""
        return f"127.0.0.1:{self._require_server()[0].server_port}"

    @property
    def url(self) -> str:
        """Base URL; the exporter answers on any path, ``/metrics`` included."""
        return f"http://{self.address}"

    @property
    def pods(self) -> list[str]:
        """Pods exported right now."""
        return [pod.name for pod in self._pods]

    @property
    def pods_without_http(self) -> list[str]:
        """Healthy pods that export no request metrics (no latency histogram, no request counter)."""
        return [pod.name for pod in self._pods if not pod.http]

    @property
    def healthy_pods(self) -> list[str]:
        """Pods exported right now that neither leak nor error."""
        return [name for name in self.pods if name not in (self.leaky_pod, self.erroring_pod)]

    def elapsed(self) -> float:
        """Seconds since ``start()``: the clock every series is a function of."""
        if self._started is None:
            raise RuntimeError("Workload is not started")
        return time.monotonic() - self._started

    def collect(self) -> Iterator[Metric]:
        """Every exported pod's series at this moment, for the registry to serve.

        It reads the pod tuple once, so a pod removed meanwhile is simply not
        yielded and Prometheus marks its series stale.
        """
        scrape = _Scrape(t=self.elapsed(), pods=self._pods, namespace=self.namespace, span=self.leak_seconds)
        yield from _cpu_families(scrape)
        yield from _memory_families(scrape)
        yield from _http_families(scrape)
        if self.deployment is not None:
            yield from _owner_families(scrape, self.deployment)

    def remove_pod(self, pod: str) -> None:
        """Stop exporting ``pod`` from the next scrape on, as if it had been deleted."""
        with self._lock:
            if pod not in self.pods:
                raise KeyError(f"Workload has no pod {pod!r}; it exports {self.pods}")
            # Replaced whole, never mutated, so a concurrent scrape sees before or after.
            self._pods = tuple(p for p in self._pods if p.name != pod)

    def start(self) -> Workload:
        """Bind a free port on 127.0.0.1 and serve from a daemon thread."""
        if self._server is not None:
            raise RuntimeError(f"Workload is already serving on {self.address}")
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)
        self._started = time.monotonic()
        self._server = start_wsgi_server(0, addr="127.0.0.1", registry=registry)
        return self

    def stop(self) -> None:
        """Stop serving; safe to call more than once."""
        if self._server is None:
            return
        httpd, thread = self._server
        httpd.shutdown()
        httpd.server_close()
        thread.join()
        self._server = None

    def _require_server(self) -> tuple[WSGIServer, threading.Thread]:
        if self._server is None:
            raise RuntimeError("Workload is not started")
        return self._server
