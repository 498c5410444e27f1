"""A synthetic Kubernetes cluster with injected incidents: the embedded default source.

The simulator serves two jobs: training the shipped bootstrap model and running the
demo without a Prometheus. Both need failures that announce themselves (a memory leak
ramps for an hour before the OOM kill) next to healthy behaviour that looks alarming
but recovers (a load spike, a GC sawtooth), so that a classifier with a 30-minute
horizon learns the difference.

Everything is vectorised over targets. The only Python loop is over time, because a
target's scenario at one step depends on its scenario at the step before; the signal
values are then rendered for all targets and steps at once. Randomness comes from
separate streams drawn in fixed-size blocks per step, so the output depends only on
the seed and the number of steps, not on how they were requested.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from exporter.frame import Frame
from exporter.sources import Fetch

SIGNALS = ("cpu", "memory", "latency", "errors")

_DAY = 86_400.0
_HEALTHY = -1
_SCRAPE_MISS = 0.005
_NOISE_MEMORY = 600.0  # seconds: the AR(1) noise correlation time
_CHUNK = 1024  # steps rendered at once: bounds memory for long histories
# Uniform draws per target per step, one column per decision.
_U_START, _U_KIND, _U_DURATION, _U_A, _U_B, _U_FAIL_STEPS, _U_GAP, _U_MISS = range(8)


@dataclass(frozen=True)
class _Kind:
    name: str
    fails: bool
    minutes: tuple[float, float]


_KINDS = (
    _Kind("memory_leak", True, (20, 150)),
    _Kind("cpu_saturation", True, (15, 60)),
    _Kind("latency_degradation", True, (20, 60)),
    _Kind("error_burst", True, (10, 45)),
    _Kind("load_spike", False, (10, 30)),
    _Kind("memory_sawtooth", False, (30, 120)),
    _Kind("error_blip", False, (2, 6)),
    _Kind("cache_warmup", False, (20, 90)),
)
_LEAK, _SATURATION, _DEGRADATION, _BURST, _SPIKE, _SAWTOOTH, _BLIP, _WARMUP = range(8)
_FAILS = np.array([kind.fails for kind in _KINDS])
_FAILED_STEPS = (3, 10)
_BURST_PEAK = 0.049  # an error burst's ratio just before it counts as failed (> 0.05)
# Indexed by kind, with len(_KINDS) for failed and _HEALTHY (-1) reading "healthy".
_NAMES = np.array([kind.name for kind in _KINDS] + ["failed", "healthy"])

_DEPLOYMENTS = {
    "shop": ("checkout", "cart", "catalog", "frontend"),
    "payments": ("payments-api", "ledger", "fraud-check"),
    "search": ("search-api", "indexer", "query-cache"),
    "auth": ("auth-api", "session-store", "token-issuer"),
}
_POD_ALPHABET = np.array(list("bcdfghjklmnpqrstvwxz2456789"))


@dataclass(frozen=True)
class Incident:
    """A failure the simulator injected: the target is failed from `start` until `end`.

    ``start`` is the first failed sample, ``end`` the first healthy one after it.
    """

    target: int
    kind: str
    start: float
    end: float


@dataclass(frozen=True)
class _Baseline:
    """Per-target healthy levels: what makes one pod look unlike another."""

    cpu: np.ndarray
    memory: np.ndarray
    latency: np.ndarray
    errors: np.ndarray
    phase: np.ndarray
    amplitude: np.ndarray

    @classmethod
    def draw(cls, targets: int, rng: np.random.Generator) -> _Baseline:
        return cls(
            cpu=rng.uniform(0.05, 0.45, targets),
            memory=rng.uniform(0.15, 0.6, targets),
            latency=np.exp(rng.uniform(np.log(0.03), np.log(0.5), targets)),
            errors=np.exp(rng.uniform(np.log(0.0005), np.log(0.005), targets)),
            phase=rng.uniform(0.0, 2 * np.pi, targets),
            amplitude=rng.uniform(0.1, 0.5, targets),
        )


@dataclass(frozen=True)
class _Trace:
    """The scenario state of every target at every step of a chunk, ``[targets, steps]``."""

    kind: np.ndarray
    failed: np.ndarray
    elapsed: np.ndarray
    duration: np.ndarray
    a: np.ndarray
    b: np.ndarray
    gap: np.ndarray

    @classmethod
    def empty(cls, targets: int, steps: int) -> _Trace:
        shape = (targets, steps)
        return cls(
            kind=np.empty(shape, np.int64),
            failed=np.empty(shape, bool),
            elapsed=np.empty(shape, np.int64),
            duration=np.empty(shape, np.int64),
            a=np.empty(shape),
            b=np.empty(shape),
            gap=np.empty(shape, np.int64),
        )


class SimulatedCluster:
    """A cluster of `targets` pods whose signals advance one `step` at a time.

    Healthy targets start a scenario at random, `incident_rate` times per day on
    average; about half of the scenarios end in a failure (recorded in `incidents`),
    the others are look-alikes that recover on their own.
    """

    def __init__(
        self,
        targets: int = 40,
        seed: int = 0,
        step: float = 60.0,
        start: float = 1_767_225_600.0,
        incident_rate: float = 2.5,
    ) -> None:
        if targets < 1:
            raise ValueError(f"targets must be at least 1, got {targets}")
        if step <= 0:
            raise ValueError(f"step must be positive seconds, got {step}")
        if incident_rate < 0:
            raise ValueError(f"incident_rate must be >= 0 scenarios per day, got {incident_rate}")
        labels_rng, baseline_rng, self._events, self._noise = (
            np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)
        )
        self.labels = _labels(targets, labels_rng)
        self.incidents: list[Incident] = []
        self._step = step
        self._start = start
        self._count = 0
        self._p_start = incident_rate * step / _DAY
        self._phi = np.exp(-step / _NOISE_MEMORY)
        self._base = _Baseline.draw(targets, baseline_rng)
        self._z = self._noise.standard_normal((targets, len(SIGNALS)))
        self._kind = np.full(targets, _HEALTHY)
        self._failed = np.zeros(targets, bool)
        self._elapsed = np.zeros(targets, np.int64)
        self._duration = np.ones(targets, np.int64)
        self._a = np.zeros(targets)
        self._b = np.zeros(targets)
        self._gap = np.zeros(targets, np.int64)
        minutes = np.array([kind.minutes for kind in _KINDS])
        self._min_steps, self._max_steps = np.maximum(1, np.round(minutes * 60 / step)).astype(np.int64).T

    @property
    def now(self) -> float:
        """Timestamp of the newest generated sample (`start - step` before the first)."""
        return self._start + self._step * (self._count - 1)

    @property
    def step(self) -> float:
        """Seconds between samples."""
        return self._step

    def advance(self, steps: int = 1) -> np.ndarray:
        """Generate the next `steps` samples: ``[targets, steps, signals]``, NaN where missing."""
        return self._advance(steps)[0]

    def scenarios(self) -> tuple[str, ...]:
        """The ground-truth scenario of every target now, for demo tables and tests."""
        index = np.where(self._failed, len(_KINDS), self._kind)
        return tuple(_NAMES[index].tolist())

    def failed(self) -> np.ndarray:
        """Which targets are failed at the newest sample."""
        return self._failed.copy()

    def _advance(self, steps: int) -> tuple[np.ndarray, np.ndarray]:
        """Samples ``[targets, steps, signals]`` and the failed mask ``[targets, steps]``."""
        chunks = [self._advance_chunk(min(_CHUNK, steps - done)) for done in range(0, steps, _CHUNK)]
        if not chunks:
            return np.empty((len(self.labels), 0, len(SIGNALS))), np.empty((len(self.labels), 0), bool)
        return np.concatenate([c[0] for c in chunks], axis=1), np.concatenate([c[1] for c in chunks], axis=1)

    def _advance_chunk(self, steps: int) -> tuple[np.ndarray, np.ndarray]:
        targets = len(self.labels)
        uniforms = self._events.random((steps, targets, 8))
        innovations = self._noise.standard_normal((steps, targets, len(SIGNALS)))
        times = self._start + self._step * np.arange(self._count, self._count + steps)
        trace = _Trace.empty(targets, steps)
        noise = np.empty((targets, steps, len(SIGNALS)))
        scale = np.sqrt(1 - self._phi**2)
        for i in range(steps):
            self._tick(float(times[i]), uniforms[i])
            self._record(trace, i)
            self._z = self._phi * self._z + scale * innovations[i]
            noise[:, i] = self._z
        self._count += steps
        missed = uniforms[:, :, _U_MISS].T < _SCRAPE_MISS
        return _render(self._base, times, trace, noise, missed), trace.failed

    def _tick(self, t: float, u: np.ndarray) -> None:
        """Move every target's scenario one step on: end what is over, start new ones."""
        self._elapsed += 1
        ended = np.flatnonzero((self._kind != _HEALTHY) & (self._elapsed > self._duration))
        if ended.size:
            fails = ~self._failed[ended] & _FAILS[self._kind[ended]]
            self._recover(ended[~fails])
            self._fail(t, ended[fails], u)
        starting = np.flatnonzero((self._kind == _HEALTHY) & (u[:, _U_START] < self._p_start))
        if starting.size:
            self._begin(starting, u)

    def _recover(self, idx: np.ndarray) -> None:
        self._kind[idx] = _HEALTHY
        self._failed[idx] = False

    def _fail(self, t: float, idx: np.ndarray, u: np.ndarray) -> None:
        low, high = _FAILED_STEPS
        self._failed[idx] = True
        self._elapsed[idx] = 1
        self._duration[idx] = low + (u[idx, _U_FAIL_STEPS] * (high - low + 1)).astype(np.int64)
        self._gap[idx] = 1 + (u[idx, _U_GAP] < 0.5)
        self.incidents.extend(
            Incident(int(i), _KINDS[k].name, t, t + d * self._step)
            for i, k, d in zip(idx, self._kind[idx], self._duration[idx], strict=True)
        )

    def _begin(self, idx: np.ndarray, u: np.ndarray) -> None:
        kind = np.minimum((u[idx, _U_KIND] * len(_KINDS)).astype(np.int64), len(_KINDS) - 1)
        low, high = self._min_steps[kind], self._max_steps[kind]
        self._kind[idx] = kind
        self._elapsed[idx] = 1
        self._duration[idx] = low + (u[idx, _U_DURATION] * (high - low + 1)).astype(np.int64)
        self._a[idx] = u[idx, _U_A]
        self._b[idx] = u[idx, _U_B]

    def _record(self, trace: _Trace, i: int) -> None:
        trace.kind[:, i] = self._kind
        trace.failed[:, i] = self._failed
        trace.elapsed[:, i] = self._elapsed
        trace.duration[:, i] = self._duration
        trace.a[:, i] = self._a
        trace.b[:, i] = self._b
        trace.gap[:, i] = self._gap


def _render(
    base: _Baseline, times: np.ndarray, trace: _Trace, noise: np.ndarray, missed: np.ndarray
) -> np.ndarray:
    """Signal values ``[targets, steps, signals]`` for a chunk whose scenarios are known."""
    cpu, memory, latency, errors = _healthy(base, times, noise)
    progress = np.minimum(trace.elapsed / trace.duration, 1.0)  # idle rows keep counting up
    running = [(trace.kind == k) & ~trace.failed for k in range(len(_KINDS))]
    cpu, memory = _resource_scenarios(cpu, memory, base, progress, trace, running)
    latency = latency * (1 + 6 * np.maximum(cpu - 0.7, 0) ** 2)  # CPU contention queues requests
    latency, errors = _request_scenarios(latency, errors, progress, trace, running)
    latency, errors = _failed_requests(latency, errors, trace)
    values = np.stack(
        [np.clip(cpu, 0, 1.5), np.clip(memory, 0, 1), np.maximum(latency, 1e-3), np.clip(errors, 0, 1)],
        axis=-1,
    )
    restarting = trace.failed & (trace.elapsed <= trace.gap)
    values[missed | restarting] = np.nan
    return values


def _healthy(base: _Baseline, times: np.ndarray, noise: np.ndarray) -> tuple[np.ndarray, ...]:
    """Baseline signals: diurnal load plus autocorrelated noise, ``[targets, steps]`` each."""
    angle = 2 * np.pi * (times % _DAY) / _DAY
    diurnal = base.amplitude[:, None] * np.sin(angle + base.phase[:, None])
    cpu = base.cpu[:, None] * (1 + diurnal) * np.exp(0.08 * noise[..., 0])
    memory = base.memory[:, None] * (1 + 0.05 * diurnal) + 0.01 * noise[..., 1]
    latency = base.latency[:, None] * (1 + 0.5 * diurnal) * np.exp(0.06 * noise[..., 2])
    errors = base.errors[:, None] * np.exp(0.3 * noise[..., 3])
    return cpu, memory, latency, errors


def _resource_scenarios(
    cpu: np.ndarray,
    memory: np.ndarray,
    base: _Baseline,
    p: np.ndarray,
    trace: _Trace,
    running: list[np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """CPU and memory shapes; `p` is each scenario's progress in (0, 1]."""
    a, b = trace.a, trace.b
    leak = memory + (1 - memory) * p ** (1 + 1.5 * a**2)  # reaches the limit exactly at p = 1
    memory = np.where(running[_LEAK], leak, memory)
    saturation = cpu + (1.05 + 0.35 * b - cpu) * p ** (1 + a)
    cpu = np.where(running[_SATURATION], saturation, cpu)
    spike = np.minimum(cpu * (1 + (0.5 + a) * np.sin(np.pi * p)), 0.92)
    cpu = np.where(running[_SPIKE], spike, cpu)
    teeth = 2 + np.floor(3 * a)
    height = (0.2 + 0.6 * b) * np.maximum(0.8 - base.memory[:, None], 0)
    memory = np.where(running[_SAWTOOTH], memory + height * ((p * teeth) % 1), memory)
    cold = (0.3 + 0.4 * b) * base.memory[:, None] * np.exp(-6 * p)
    memory = np.where(running[_WARMUP], memory - cold, memory)
    return cpu, memory


def _request_scenarios(
    latency: np.ndarray, errors: np.ndarray, p: np.ndarray, trace: _Trace, running: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Latency and error-ratio shapes; timeouts make errors creep in late in a degradation."""
    a, b = trace.a, trace.b
    latency = np.where(running[_SPIKE], latency * (1 + (0.5 + a) * np.sin(np.pi * p)), latency)
    latency = np.where(running[_DEGRADATION], latency * _degradation(b) ** p, latency)
    timeouts = 0.04 * np.maximum((p - 0.7) / 0.3, 0) ** 2
    errors = np.where(running[_DEGRADATION], errors + timeouts, errors)
    # The ramp ends just under the 5 % failure threshold: crossing it *is* the failure,
    # which starts at p = 1, so no rule on the error ratio can see the failure early.
    burst = errors + (_BURST_PEAK - errors) * p ** (1 + 2 * a)
    errors = np.where(running[_BURST], burst, errors)
    return latency, np.where(running[_BLIP], np.maximum(errors, 0.01 + 0.02 * b), errors)


def _failed_requests(latency: np.ndarray, errors: np.ndarray, trace: _Trace) -> tuple[np.ndarray, np.ndarray]:
    """After the restart, a broken dependency keeps failing requests: the restart didn't fix it."""
    degraded = trace.failed & (trace.kind == _DEGRADATION)
    latency = np.where(degraded, latency * _degradation(trace.b), latency)
    erroring = trace.failed & ((trace.kind == _DEGRADATION) | (trace.kind == _BURST))
    return latency, np.where(erroring, _failure_errors(trace.b), errors)


def _degradation(b: np.ndarray) -> np.ndarray:
    """How many times its baseline a degrading target's p99 reaches at failure."""
    return 8 + 32 * b


def _failure_errors(b: np.ndarray) -> np.ndarray:
    """Error ratio of a failing service: always above the 5 % failure threshold."""
    return 0.06 + 0.14 * b


def _labels(targets: int, rng: np.random.Generator) -> tuple[dict[str, str], ...]:
    """Pod label sets spread over a few deployments, named the way Kubernetes names pods."""
    deployments = [(ns, name) for ns, names in _DEPLOYMENTS.items() for name in names]
    hashes = ["".join(rng.choice(_POD_ALPHABET, 4)) for _ in deployments]
    labels: list[dict[str, str]] = []
    pods: set[str] = set()
    while len(labels) < targets:
        which = len(labels) % len(deployments)
        namespace, name = deployments[which]
        pod = f"{name}-{hashes[which]}-{''.join(rng.choice(_POD_ALPHABET, 5))}"
        if pod not in pods:
            pods.add(pod)
            labels.append({"namespace": namespace, "pod": pod})
    return tuple(labels)


@dataclass(frozen=True)
class History:
    """A simulated history with its ground truth, for training and evaluation."""

    frame: Frame
    incidents: tuple[Incident, ...]
    failed: np.ndarray


def simulate_history(
    targets: int, steps: int, seed: int = 0, step: float = 60.0, incident_rate: float = 2.5
) -> History:
    """Generate `steps` samples of a fresh cluster in one go, with every incident in it."""
    cluster = SimulatedCluster(targets=targets, seed=seed, step=step, incident_rate=incident_rate)
    values, failed = cluster._advance(steps)
    timestamps = cluster.now - step * np.arange(steps)[::-1]
    frame = Frame(values=values, targets=cluster.labels, timestamps=timestamps, signals=SIGNALS)
    return History(frame=frame, incidents=tuple(cluster.incidents), failed=failed)


class SimulateSource:
    """A Source over a SimulatedCluster: every fetch() advances the cluster by
    `steps_per_fetch` and returns the last `window` steps as a Frame.

    The window is a fixed-size buffer shifted by the new steps; each fetch builds a
    new read-only array, so a Frame handed out earlier never changes under its reader.
    """

    signals = SIGNALS

    def __init__(self, cluster: SimulatedCluster, window: int, steps_per_fetch: int = 1) -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1 step, got {window}")
        if steps_per_fetch < 1:
            raise ValueError(f"steps_per_fetch must be at least 1, got {steps_per_fetch}")
        self._cluster = cluster
        self._window = window
        self._steps_per_fetch = steps_per_fetch
        self._values = self._freeze(cluster.advance(window))

    def fetch(self) -> Fetch:
        """Advance the cluster and return the window ending at its newest sample."""
        new = self._cluster.advance(self._steps_per_fetch)
        kept = self._values[:, self._steps_per_fetch :]
        self._values = self._freeze(np.concatenate([kept, new], axis=1)[:, -self._window :])
        step = self._cluster.step
        timestamps = self._cluster.now - step * np.arange(self._window)[::-1]
        return Fetch(
            Frame(values=self._values, targets=self._cluster.labels, timestamps=timestamps, signals=SIGNALS)
        )

    @staticmethod
    def _freeze(values: np.ndarray) -> np.ndarray:
        values.flags.writeable = False
        return values
