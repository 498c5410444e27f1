"""A synthetic Kubernetes cluster with injected incidents: the embedded default source.

The simulator serves two jobs: training the shipped bootstrap model and running the
demo without a Prometheus. Both need failures that announce themselves (a memory leak
ramps for an hour before the OOM kill) next to healthy behaviour that looks alarming
but recovers (a load spike, a GC sawtooth), so that a classifier with a 30-minute
horizon learns the difference.

By default (``realistic=True``) the cluster is randomised the way real clusters are
(domain randomisation, deterministic by seed): many pods export no HTTP metrics (no
latency, no errors), some have no CPU limit (cpu in cores) or no memory limit (memory
as a ratio to the request, above 1 for burstable pods), idle pods report NaN latency
between requests and use 0.005 of a core, scrapes go missing for minutes, healthy pods
restart in rollouts, noisy neighbours slow pods down, and some healthy pods run hot
enough to cross static thresholds (memory at 0.95 of its limit, CPU near its limit).
``realistic=False`` gives the clean cluster (four signals, limits, no idle pods), which
the scenario tests use to check each shape on its own.

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
_CPU, _MEMORY, _LATENCY, _ERRORS = range(len(SIGNALS))

_DAY = 86_400.0
_HEALTHY = -1
_SCRAPE_MISS = 0.005
_NOISE_MEMORY = 600.0  # seconds: the AR(1) noise correlation time
_CHUNK = 1024  # steps rendered at once: bounds memory for long histories
# Uniform draws per target per step, one column per decision.
(
    _U_START,
    _U_KIND,
    _U_DURATION,
    _U_A,
    _U_B,
    _U_FAIL_STEPS,
    _U_GAP,
    _U_MISS,
    _U_OUTAGE,
    _U_OUTAGE_STEPS,
    _U_IDLE,
) = range(11)
_UNIFORMS = 11
_OUTAGE_STEPS = (1, 6)  # a scrape outage (target or Prometheus busy) lasts this many steps


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
    _Kind("hang", True, (5, 20)),  # the app stops serving (and exporting) before the liveness kill
    _Kind("load_spike", False, (10, 30)),
    _Kind("memory_sawtooth", False, (30, 120)),
    _Kind("error_blip", False, (2, 6)),
    _Kind("cache_warmup", False, (20, 90)),
    _Kind("noisy_neighbour", False, (10, 40)),
    _Kind("rollout", False, (20, 60)),  # a healthy restart: a scrape gap, then a cold cache
)
(
    _LEAK,
    _SATURATION,
    _DEGRADATION,
    _BURST,
    _HANG,
    _SPIKE,
    _SAWTOOTH,
    _BLIP,
    _WARMUP,
    _NEIGHBOUR,
    _ROLLOUT,
) = range(len(_KINDS))
_CLEAN_KINDS = (_LEAK, _SATURATION, _DEGRADATION, _BURST, _SPIKE, _SAWTOOTH, _BLIP, _WARMUP)
_NEEDS_LATENCY = (_DEGRADATION,)
_NEEDS_ERRORS = (_BURST, _BLIP)
_NEEDS_HTTP = (_HANG,)
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
    """Per-target healthy levels and what the target exports: what makes one pod unlike another.

    ``cpu_limited``: cpu is a ratio to the limit (else cores); ``memory_ceiling``: where
    memory runs out (1.0 of the limit, or a multiple of the request for burstable pods);
    ``reports``: ``[targets, signals]`` which signals the target exports at all.
    """

    cpu: np.ndarray
    memory: np.ndarray
    latency: np.ndarray
    errors: np.ndarray
    phase: np.ndarray
    amplitude: np.ndarray
    cpu_limited: np.ndarray
    memory_ceiling: np.ndarray
    noise: np.ndarray
    jitter: np.ndarray  # [targets, signals] white noise on top (p99 and error ratios are spiky)
    idle: np.ndarray  # share of steps without requests (latency and errors NaN)
    outages: np.ndarray  # scrape outages started per step
    reports: np.ndarray
    kinds: np.ndarray  # [targets, kinds] scenarios the target can show

    @classmethod
    def draw(cls, targets: int, rng: np.random.Generator, realistic: bool, step: float) -> _Baseline:
        cpu = rng.uniform(0.05, 0.45, targets)
        memory = rng.uniform(0.15, 0.6, targets)
        amplitude = rng.uniform(0.1, 0.5, targets)
        u = rng.random((targets, 8))  # drawn in every mode, so both share the levels above
        if not realistic:
            reports = np.ones((targets, len(SIGNALS)), bool)
            kinds = np.zeros((targets, len(_KINDS)), bool)
            kinds[:, list(_CLEAN_KINDS)] = True
            return cls(
                cpu=cpu,
                memory=memory,
                latency=np.exp(rng.uniform(np.log(0.03), np.log(0.5), targets)),
                errors=np.exp(rng.uniform(np.log(0.0005), np.log(0.005), targets)),
                phase=rng.uniform(0.0, 2 * np.pi, targets),
                amplitude=amplitude,
                cpu_limited=np.ones(targets, bool),
                memory_ceiling=np.ones(targets),
                noise=np.ones(targets),
                jitter=np.zeros((targets, len(SIGNALS))),
                idle=np.zeros(targets),
                outages=np.zeros(targets),
                reports=reports,
                kinds=kinds,
            )
        cpu_limited = u[:, 0] < 0.7
        memory_limited = u[:, 1] < 0.75
        idle = u[:, 2] < 0.12
        hot_cpu = cpu_limited & ~idle & (u[:, 3] < 0.1)
        hot_memory = memory_limited & (u[:, 4] < 0.1)
        cpu = np.where(cpu_limited, cpu, np.exp(rng.uniform(np.log(0.02), np.log(2.0), targets)))
        cpu = np.where(hot_cpu, rng.uniform(0.7, 0.85, targets), cpu)
        cpu = np.where(idle, rng.uniform(0.003, 0.01, targets), cpu)
        amplitude = np.where(rng.random(targets) < 0.2, 0.0, amplitude)  # flat pods
        amplitude = np.where(hot_cpu, np.minimum(amplitude, 0.12), amplitude)
        burstable = rng.uniform(0.5, 1.8, targets)
        memory = np.where(memory_limited, memory, burstable)
        memory = np.where(hot_memory, rng.uniform(0.88, 0.95, targets), memory)
        ceiling = np.where(memory_limited, 1.0, burstable * rng.uniform(1.6, 2.5, targets))
        http = u[:, 5]
        reports = np.ones((targets, len(SIGNALS)), bool)
        reports[:, _LATENCY] = (http < 0.55) | ((http >= 0.65) & (http < 0.7))
        reports[:, _ERRORS] = http < 0.65
        kinds = np.ones((targets, len(_KINDS)), bool)
        for kind in _NEEDS_LATENCY:
            kinds[:, kind] = reports[:, _LATENCY]
        for kind in _NEEDS_ERRORS:
            kinds[:, kind] = reports[:, _ERRORS]
        for kind in _NEEDS_HTTP:
            kinds[:, kind] = reports[:, _LATENCY] | reports[:, _ERRORS]
        return cls(
            cpu=cpu,
            memory=memory,
            latency=np.exp(rng.uniform(np.log(0.01), np.log(1.0), targets)),
            errors=np.exp(rng.uniform(np.log(0.0002), np.log(0.008), targets)),
            phase=rng.uniform(0.0, 2 * np.pi, targets),
            amplitude=amplitude,
            cpu_limited=cpu_limited,
            memory_ceiling=ceiling,
            noise=np.exp(rng.uniform(np.log(0.5), np.log(2.5), targets)),
            jitter=rng.uniform(0.0, 1.0, (targets, len(SIGNALS))) * np.array([0.2, 0.0, 0.4, 0.6]),
            idle=np.where(idle, rng.uniform(0.3, 0.9, targets), 0.0),
            outages=rng.uniform(0.0, 6.0, targets) * step / _DAY,
            reports=reports,
            kinds=kinds,
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
    outage: np.ndarray

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
            outage=np.empty(shape, bool),
        )


class SimulatedCluster:
    """A cluster of `targets` pods whose signals advance one `step` at a time.

    Healthy targets start a scenario at random, `incident_rate` times per day on
    average, at any time of day; about half of the scenarios end in a failure (recorded
    in `incidents`), the others are look-alikes that recover on their own. A target only
    runs scenarios its signals can show (no latency degradation without latency), since
    a failure no signal announces teaches a model nothing but noise.
    """

    def __init__(
        self,
        targets: int = 40,
        seed: int = 0,
        step: float = 60.0,
        start: float = 1_767_225_600.0,
        incident_rate: float = 2.5,
        realistic: bool = True,
    ) -> None:
        if targets < 1:
            raise ValueError(f"targets must be at least 1, got {targets}")
        if step <= 0:
            raise ValueError(f"step must be positive seconds, got {step}")
        if incident_rate < 0:
            raise ValueError(f"incident_rate must be >= 0 scenarios per day, got {incident_rate}")
        labels_rng, baseline_rng, self._events, self._noise, self._spikes = (
            np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(5)
        )
        self.labels = _labels(targets, labels_rng)
        self.incidents: list[Incident] = []
        self._step = step
        self._start = start
        self._count = 0
        self._p_start = incident_rate * step / _DAY
        self._phi = np.exp(-step / _NOISE_MEMORY)
        self._base = _Baseline.draw(targets, baseline_rng, realistic, step)
        self._z = self._noise.standard_normal((targets, len(SIGNALS)))
        self._kind = np.full(targets, _HEALTHY)
        self._failed = np.zeros(targets, bool)
        self._elapsed = np.zeros(targets, np.int64)
        self._duration = np.ones(targets, np.int64)
        self._a = np.zeros(targets)
        self._b = np.zeros(targets)
        self._gap = np.zeros(targets, np.int64)
        self._outage = np.zeros(targets, np.int64)  # steps left of a scrape outage
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

    @property
    def reports(self) -> np.ndarray:
        """``[targets, signals]``: which signals each target exports at all."""
        return self._base.reports.copy()

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
        uniforms = self._events.random((steps, targets, _UNIFORMS))
        innovations = self._noise.standard_normal((steps, targets, len(SIGNALS)))
        white = self._spikes.standard_normal((steps, targets, len(SIGNALS))).transpose(1, 0, 2)
        white *= self._base.jitter[:, None, :]
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
        missed = (uniforms[:, :, _U_MISS].T < _SCRAPE_MISS) | trace.outage
        quiet = self._base.idle[:, None] > uniforms[:, :, _U_IDLE].T
        return _render(self._base, times, trace, noise, white, missed, quiet), trace.failed

    def _tick(self, t: float, u: np.ndarray) -> None:
        """Move every target's scenario one step on: end what is over, start new ones."""
        self._elapsed += 1
        self._outage = np.maximum(self._outage - 1, 0)
        low, high = _OUTAGE_STEPS
        outage = (self._outage == 0) & (u[:, _U_OUTAGE] < self._base.outages)
        self._outage[outage] = low + (u[outage, _U_OUTAGE_STEPS] * (high - low + 1)).astype(np.int64)
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
        """Start a scenario drawn uniformly among those each target can show."""
        allowed = self._base.kinds[idx]
        rank = np.minimum((u[idx, _U_KIND] * allowed.sum(axis=1)).astype(np.int64), allowed.sum(axis=1) - 1)
        kind = np.argmax(np.cumsum(allowed, axis=1) > rank[:, None], axis=1)
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
        trace.outage[:, i] = self._outage > 0


def _render(
    base: _Baseline,
    times: np.ndarray,
    trace: _Trace,
    noise: np.ndarray,
    white: np.ndarray,
    missed: np.ndarray,
    quiet: np.ndarray,
) -> np.ndarray:
    """Signal values ``[targets, steps, signals]`` for a chunk whose scenarios are known.

    ``missed``: steps without any scrape; ``quiet``: steps without requests, where the
    HTTP signals are 0/0 = NaN.
    """
    cpu, memory, latency, errors = _healthy(base, times, noise, white)
    progress = np.minimum(trace.elapsed / trace.duration, 1.0)  # idle rows keep counting up
    running = [(trace.kind == k) & ~trace.failed for k in range(len(_KINDS))]
    cpu, memory = _resource_scenarios(cpu, memory, base, progress, trace, running)
    limited = base.cpu_limited[:, None]
    contention = np.where(limited, np.maximum(cpu - 0.7, 0), 0.0)
    latency = latency * (1 + 6 * contention**2)  # CPU contention queues requests
    latency, errors = _request_scenarios(latency, errors, progress, trace, running)
    latency, errors = _failed_requests(latency, errors, trace)
    values = np.stack(
        [
            np.where(limited, np.clip(cpu, 0, 1.5), np.maximum(cpu, 0)),
            np.clip(memory, 0, base.memory_ceiling[:, None]),
            np.maximum(latency, 1e-3),
            np.clip(errors, 0, 1),
        ],
        axis=-1,
    )
    restarting = trace.failed & (trace.elapsed <= trace.gap)
    rolling = running[_ROLLOUT] & (trace.elapsed <= 1 + np.floor(3 * trace.a))
    values[missed | restarting | rolling] = np.nan
    unserved = quiet | running[_HANG]  # a hung app answers no requests and no scrapes of its own
    values[..., _LATENCY][unserved] = np.nan
    values[..., _ERRORS][unserved] = np.nan
    values[~base.reports[:, None, :].repeat(values.shape[1], axis=1)] = np.nan
    return values


def _healthy(
    base: _Baseline, times: np.ndarray, noise: np.ndarray, white: np.ndarray
) -> tuple[np.ndarray, ...]:
    """Baseline signals: diurnal load, autocorrelated noise and white spikes, ``[targets, steps]``
    each. Spiky error ratios stay under the 5 % that counts as failed."""
    angle = 2 * np.pi * (times % _DAY) / _DAY
    diurnal = base.amplitude[:, None] * np.sin(angle + base.phase[:, None])
    loud = base.noise[:, None]
    cpu = base.cpu[:, None] * (1 + diurnal) * np.exp(0.08 * loud * noise[..., 0])
    memory = base.memory[:, None] * (1 + 0.05 * diurnal) + 0.01 * noise[..., 1]
    latency = base.latency[:, None] * (1 + 0.5 * diurnal) * np.exp(0.06 * loud * noise[..., 2])
    errors = base.errors[:, None] * np.exp(0.3 * noise[..., 3])
    spikes = np.exp(white)
    errors = np.minimum(errors * spikes[..., 3], np.maximum(errors, 0.03))
    return cpu * spikes[..., 0], memory, latency * spikes[..., 2], errors


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
    ceiling = base.memory_ceiling[:, None]
    limited = base.cpu_limited[:, None]
    leak = memory + (ceiling - memory) * p ** (1 + 1.5 * a**2)  # reaches the ceiling exactly at p = 1
    # Half the leaks end thrashing: pinned just under the limit for their last 15 %, the
    # garbage collector burning CPU, until the OOM kill (what a flat 98 % looks like).
    thrashes = b < 0.5
    pinned = memory + (0.985 * ceiling - memory) * np.minimum(p / 0.85, 1.0) ** (1 + 1.5 * a**2)
    memory = np.where(running[_LEAK], np.where(thrashes, pinned, leak), memory)
    gc = running[_LEAK] & thrashes & (p > 0.85)
    cpu = np.where(gc, cpu * (1 + 3 * (p - 0.85)), cpu)
    # Without a limit the node runs out: a few times the pod's usual cores.
    top = np.where(limited, 1.05 + 0.35 * b, base.cpu[:, None] * (2.5 + 2.5 * b) + 0.2)
    saturation = cpu + (top - cpu) * p ** (1 + a)
    cpu = np.where(running[_SATURATION], saturation, cpu)
    spike = cpu * (1 + (0.5 + a) * np.sin(np.pi * p))
    cpu = np.where(running[_SPIKE], np.where(limited, np.minimum(spike, 0.92), spike), cpu)
    teeth = 2 + np.floor(3 * a)
    height = (0.2 + 0.6 * b) * np.maximum(0.8 * ceiling - base.memory[:, None], 0)
    memory = np.where(running[_SAWTOOTH], memory + height * ((p * teeth) % 1), memory)
    cold = (0.3 + 0.4 * b) * base.memory[:, None] * np.exp(-6 * p)
    memory = np.where(running[_WARMUP] | running[_ROLLOUT], memory - cold, memory)
    busy = 1 + (0.3 + 0.7 * a) * np.sin(np.pi * p)
    cpu = np.where(running[_NEIGHBOUR], np.where(limited, np.minimum(cpu * busy, 0.92), cpu * busy), cpu)
    cpu = np.where(running[_HANG], 0.1 * cpu, cpu)
    return cpu, memory


def _request_scenarios(
    latency: np.ndarray, errors: np.ndarray, p: np.ndarray, trace: _Trace, running: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Latency and error-ratio shapes; timeouts make errors creep in late in a degradation."""
    a, b = trace.a, trace.b
    latency = np.where(running[_SPIKE], latency * (1 + (0.5 + a) * np.sin(np.pi * p)), latency)
    # A noisy neighbour steals cycles: p99 triples or more, then recovers on its own.
    latency = np.where(running[_NEIGHBOUR], latency * (1 + (1 + 4 * b) * np.sin(np.pi * p)), latency)
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
    targets: int,
    steps: int,
    seed: int = 0,
    step: float = 60.0,
    incident_rate: float = 2.5,
    realistic: bool = True,
) -> History:
    """Generate `steps` samples of a fresh cluster in one go, with every incident in it."""
    cluster = SimulatedCluster(
        targets=targets, seed=seed, step=step, incident_rate=incident_rate, realistic=realistic
    )
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
