"""Per-target online normalisation: what makes ``anomaly_score`` mean the same on every target.

A forest's raw score has no meaning across targets: a pod whose CPU is always noisy and one
whose latency never moves do not share a scale, and values far outside the training range
(10,000 taxi rides where the model saw ratios of a limit) saturate it. So each target is
measured against its own past only, from three kinds of evidence per step:

1. **value**: how far each signal's newest sample lies from what was expected of it, in
   predictive standard deviations. Expected is the signal's running mean, or, once a target's
   history shows a daily (optionally weekly) rhythm, that time of day's profile plus the running
   mean of the residual from it;
2. **shape**: a null Isolation Forest's raw score of the newest ``EMBED_STEPS`` samples, each
   standardised by the same expectation and deviation. The forest is fitted on independent
   standard-normal windows, so it measures how unlike a stationary series of that level and
   spread the recent stretch is (a spike, a shift, a flat line, a changed rhythm), whatever the
   unit. It needs no history of its own and serves every target;
3. **context**: the model bundle's Isolation Forest raw score over the window features of all
   signals together (the multi-signal view), as the bundle scores it.

The raw scores of 2 and 3 are themselves standardised against the target's running mean and
deviation of those raw scores, so a forest that reads every window of a target as "odd" reads
the usual oddness as 0. The evidence is z = mean(max over signals of 1, max over signals of 2,
3), reported as z / (1 + z) in [0, 1). Finally, only the first step of a burst is reported:
a step whose z is not above every z of the target's previous ``BURST_STEPS`` steps reads 0, so
one incident raises one alarm, not one per step.

**Single-signal targets** (at most ``CALIBRATED_SIGNALS`` signals with statistics: a pod that
only reports cpu, one series of a recording) have no multi-signal view to weigh one signal's
oddness against, and single series differ in how odd they usually are. So there the evidence is
read against the target's own running mean and deviation of its evidence, t-corrected, counting
only how far it lies above the usual; those statistics start from a stationary series' evidence
(``EVIDENCE_PRIOR``: each part about |N(0, 1)|), worth as many samples as the prior says, so a
young target is judged mostly against that and a long-watched one against itself; and they lag
the burst memory (a step's evidence joins them when it leaves it), so a rise over the recent
stretch is judged rather than absorbed while it lasts. The result is scaled by
``CALIBRATED_GAIN`` and reported as z / (1 + z); a step is a new burst there only if it beats the
previous ``BURST_STEPS`` steps' largest by more than ``BURST_MARGIN``. Targets with more signals
are scored as above, uncalibrated.

**Short histories.** A mean and deviation from n samples are uncertain; the score accounts for
it instead of waiting: a deviation is read as a Student t with n - 1 degrees of freedom against
the predictive spread s * sqrt((n + 1) / (n - 1)) and turned into the normal z of the same tail
probability. After ``MIN_STEPS`` samples a target scores, cautiously (a 10-sigma move on 5
samples reads as about 2.4 sigma); by a few dozen samples the correction has faded. The band
exported as ``signal_expected`` widens the same way.

**Seasons.** Per period (daily; weekly when asked) each signal keeps ``SEASON_BINS`` bin means
of the previous visits to that time of the period (a visit's samples join its bin when the next
visit begins, so the profile never contains the stretch being judged) and running statistics of
the residual from them. The profile is used for a signal once the target has been watched for
``SEASON_MIN_PERIODS`` periods and the residual's variance is below ``SEASON_GAIN`` of the plain
variance; otherwise the plain mean is. A pure function of the samples: deterministic.

Running means and variances are exact over a target's first ``MEMORY_STEPS`` samples and
exponentially weighted with that memory afterwards (Welford's update with a capped count):
constant state per target, no history kept. Everything at step t depends on samples up to t.

**Inheritance.** With a ``workload_of`` function, a target seen for the first time starts from
the statistics of a live or recently vanished target of the same workload (a rolled-out pod
from its predecessor), its burst memory fresh. Vanished targets are kept for this, one per
workload and at most as many as are watched, so state stays bounded. A target's workload is
the one ``workload_of`` gave while it was watched: the function may be replaced between cycles
(new owner information; ``refresh_workloads``), and a vanished pod is no longer in it. A target
that found nothing to start from and is still young takes its workload's statistics when a new
function names one (its owner was not exported yet when it was first seen).

Contract: ``AnomalyNormaliser.evaluate`` takes rows in time order per target; the daemon passes
one row per target per cycle, a backtest or a warm-up replay every row of a recording at once.
All run the same code.
"""

from __future__ import annotations

import functools
import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from exporter.kernels import standardised_windows, t_as_normal, t_quantiles
from exporter.models.forest import ArrayForest

EMBED_STEPS = 60  # samples per shape window (the daemon's default window: an hour at 60 s steps)
MEMORY_STEPS = 10_000  # running statistics: exact up to this many samples, exponential afterwards
MIN_STEPS = 3  # samples a target needs before its score says anything (then t-corrected)
SETTLED_STEPS = 60  # samples after which the short-history correction has mostly faded
BURST_STEPS = 100  # a step must beat the previous this-many steps' evidence to be reported
SHAPE_BLOCK = 2048  # rows whose windows are standardised and scored together (bounds a cycle's memory)
Z_CLIP = 50.0  # standardised samples beyond this are "far", however far
BAND_Z = 3.0  # signal_expected: the band a normal sample leaves with probability 0.27 %
BAND_TAIL = math.erfc(BAND_Z / math.sqrt(2.0)) / 2.0  # a normal sample's chance to pass its upper bound
NULL_ROWS = 10_000  # standard-normal windows the null forest is fitted on
SEASONS = ("daily",)  # the profiles a normaliser keeps unless told otherwise
SEASON_BINS = {"daily": 48, "weekly": 168}  # bins per period: 30 min of a day, 1 h of a week
PERIOD_SECONDS = {"daily": 86_400.0, "weekly": 604_800.0}
SEASON_MIN_PERIODS = 2.0  # periods watched before a profile may be used
SEASON_GAIN = 0.5  # a profile is used when the residual keeps less than this share of the variance
SEASON_MEMORY = 8  # visits per bin: exact up to this many, exponential afterwards (at most 255)
SEED = 0
CALIBRATED_SIGNALS = 1  # targets with at most this many signals read their evidence against their own
# (count, mean, variance) a single-signal target's evidence statistics start from: a stationary
# series' evidence, each of its three parts about |N(0, 1)| (mean sqrt(2 / pi), variance 1 - 2 / pi)
# and the evidence their mean (taken as independent), worth this many samples
EVIDENCE_PRIOR = (3000.0, float(np.sqrt(2.0 / np.pi)), (1.0 - 2.0 / np.pi) / 3.0)
CALIBRATED_GAIN = 0.5  # calibrated z -> evidence: keeps the 0.75 alert's false alarms on cpu-only pods
BURST_MARGIN = 0.02  # calibrated: a new burst beats the previous BURST_STEPS steps' largest by this share

TargetKey = tuple[tuple[str, str], ...]
WorkloadOf = Callable[[Mapping[str, str]], object]


# fit_null_forest(EMBED_STEPS), shipped (`make null-forest`; a test checks it is that fit)
NULL_FOREST = Path(__file__).with_name(f"null_forest_{EMBED_STEPS}.npz")


@functools.cache
def null_forest(steps: int = EMBED_STEPS) -> ArrayForest:
    """The null forest for windows of ``steps`` samples: the shipped file for the default
    window, so serving imports neither pyod nor scikit-learn (~75 MB); fitted here for a
    shorter window (a lookback under ``EMBED_STEPS`` steps)."""
    if steps == EMBED_STEPS:
        return ArrayForest.load(NULL_FOREST)
    return fit_null_forest(steps)


def fit_null_forest(steps: int = EMBED_STEPS) -> ArrayForest:
    """Isolation Forest fitted on independent standard-normal windows of ``steps`` samples, as
    arrays: every cycle scores all targets x signals in one pass (models/forest.py)."""
    from pyod.models.iforest import IForest

    rng = np.random.default_rng(SEED)
    fitted = IForest(n_estimators=100, max_samples=256, random_state=SEED).fit(
        rng.standard_normal((NULL_ROWS, steps))
    )
    return ArrayForest.from_sklearn(fitted.detector_)


def forest_score(forest: ArrayForest, windows: np.ndarray) -> np.ndarray:
    """The one place a forest is evaluated: raw outlier score of each row of ``windows``."""
    return forest.decision_function(windows)


def target_key(labels: Mapping[str, str]) -> TargetKey:
    return tuple(sorted(labels.items()))


def workload_by(label: str, pattern: str) -> WorkloadOf | None:
    """A ``workload_of`` for AnomalyNormaliser: the target's labels with ``label`` replaced by
    ``pattern``'s first group (pod "cart-7d9f8b6c4-x2k4q" -> "cart"); None where it does not
    match (a StatefulSet's "db-0" keeps its name across restarts anyway). No label: None."""
    if not label:
        return None
    compiled = re.compile(pattern)

    def of(target: Mapping[str, str]) -> object:
        match = compiled.match(target.get(label, ""))
        if match is None:
            return None
        return tuple(sorted((k, match.group(1) if k == label else v) for k, v in target.items()))

    return of


def owned_by(
    label: str, owner_of: Callable[[Mapping[str, str]], str | None], fallback: WorkloadOf | None
) -> WorkloadOf:
    """A ``workload_of`` naming the workload by its owner (``owner_of``: "Deployment/cart" or None,
    sources/owners.py): the target's labels with ``label`` replaced by the owner. A target without
    a known owner gets ``fallback``'s workload (``auto``), or none. An owner holds a "/", which a
    pod name never does, so an owner's workload never meets a pattern's."""

    def of(target: Mapping[str, str]) -> object:
        owner = owner_of(target)
        if owner is None:
            return None if fallback is None else fallback(target)
        return tuple(sorted((k, owner if k == label else v) for k, v in target.items()))

    return of


def normal_z(t: np.ndarray, count: np.ndarray) -> np.ndarray:
    """|t| read against a Student t with count - 1 degrees of freedom, as the normal z of the
    same tail probability: the uncertainty of a mean and deviation from few samples."""
    t, df = np.broadcast_arrays(np.asarray(t, dtype=float), np.maximum(count - 1.0, 1.0))
    return t_as_normal(t.ravel(), df.ravel()).reshape(t.shape)


def band_width(count: np.ndarray) -> np.ndarray:
    """Half-width of the expected band in predictive deviations: BAND_Z's tail under t(count - 1)."""
    df = np.maximum(count - 1.0, 1.0)
    # Counts repeat (targets watched alike): the inverse t once per distinct count, a tenth of the time.
    distinct, inverse = np.unique(df, return_inverse=True)
    return t_quantiles(distinct, BAND_TAIL)[inverse].reshape(df.shape)


def predictive_factor(count: np.ndarray) -> np.ndarray:
    """sqrt((n + 1) / (n - 1)): the spread of a new sample around a mean and deviation from n."""
    n = np.maximum(count, 2.0)
    return np.sqrt((n + 1.0) / (n - 1.0))


class RunningStats:
    """Running mean and variance per (state row, column), updated with a capped Welford step.
    A fresh row starts empty, or from ``prior``: (count, mean, variance) as if that many
    samples of that mean and variance had been seen."""

    def __init__(
        self, columns: int, memory: int = MEMORY_STEPS, prior: tuple[float, float, float] = (0.0, 0.0, 0.0)
    ) -> None:
        self.memory = memory
        self.prior = dict(zip(("count", "mean", "var"), prior, strict=True))
        self.count = np.zeros((0, columns))
        self.mean = np.zeros((0, columns))
        self.var = np.zeros((0, columns))

    def take(self, rows: np.ndarray) -> None:
        """Keep the given state rows, in that order (repeats copy); -1 starts a fresh row."""
        for name, fill in self.prior.items():
            setattr(self, name, _take(getattr(self, name), rows, fill))

    def location(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(count, mean, predictive deviation) per row; mean and deviation are NaN until
        MIN_STEPS samples. The deviation is floored at 1e-3 of the mean's size, so a series
        that never moved reads any move as far."""
        count, mean = self.count[rows], self.mean[rows]
        scale = np.maximum(np.sqrt(self.var[rows]), 1e-3 * np.abs(mean) + 1e-9) * predictive_factor(count)
        warm = count >= MIN_STEPS
        return count, np.where(warm, mean, np.nan), np.where(warm, scale, np.nan)

    def z(self, rows: np.ndarray, x: np.ndarray) -> np.ndarray:
        """|z| of ``x[rows, columns]`` against the statistics so far, t-corrected (NaN while young)."""
        count, mean, scale = self.location(rows)
        return normal_z((x - mean) / scale, count)

    def update(self, rows: np.ndarray, x: np.ndarray) -> None:
        """Add one sample per row (rows distinct); NaN samples leave their statistics unchanged."""
        present = np.isfinite(x)
        count = np.minimum(self.count[rows] + present, self.memory)
        mean, var = self.mean[rows], self.var[rows]
        delta = np.where(present, x - mean, 0.0)
        weight = np.divide(1.0, count, out=np.zeros_like(count), where=present)
        new_mean = mean + delta * weight
        self.var[rows] = var + (delta * np.where(present, x - new_mean, 0.0) - var) * weight
        self.mean[rows] = new_mean
        self.count[rows] = count


class SeasonalProfile:
    """Bin means of one period per (state row, signal), from completed visits only, and the
    running statistics of the residual from them. Time only moves forward, so only the current
    bin has an open visit: its sum and count are kept per (row, signal) until the next begins."""

    def __init__(self, signals: int, period: float, bins: int) -> None:
        self.period, self.bins = period, bins
        self.width = period / bins
        self.done = np.zeros((0, signals, bins))  # mean of completed visits
        self.visits = np.zeros((0, signals, bins), dtype=np.uint8)  # a count: 1/8 of the state
        self.open = np.zeros((0, 3, signals))  # the open visit: absolute bin number, sum, count
        self.residual = RunningStats(signals)

    def take(self, rows: np.ndarray) -> None:
        for name in ("done", "visits", "open"):
            setattr(self, name, _take(getattr(self, name), rows, 0.0))
        self.residual.take(rows)

    def enter(self, rows: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each row's current bin and its level ``[rows, signals]`` (NaN: never visited before),
        after folding an open visit that has ended into its bin."""
        visit = np.floor(times / self.width)[:, None]
        open_id, open_sum, open_n = self.open[rows].transpose(1, 0, 2)
        ended = (open_id != visit) & (open_n > 0)
        if ended.any():
            r, s = np.nonzero(ended)
            b = (open_id[r, s] % self.bins).astype(np.int64)
            rr = rows[r]
            visits = np.minimum(self.visits[rr, s, b] + 1, SEASON_MEMORY)
            self.done[rr, s, b] += (open_sum[r, s] / open_n[r, s] - self.done[rr, s, b]) / visits
            self.visits[rr, s, b] = visits
        fresh = open_id != visit
        self.open[rows] = np.stack(
            [
                np.broadcast_to(visit, open_id.shape),
                np.where(fresh, 0.0, open_sum),
                np.where(fresh, 0.0, open_n),
            ],
            axis=1,
        )
        b = (visit[:, 0] % self.bins).astype(np.int64)
        done, seen = self.done[rows, :, b], self.visits[rows, :, b] > 0
        return b, np.where(seen, done, np.nan)

    def add(self, rows: np.ndarray, x: np.ndarray, level: np.ndarray) -> None:
        """Add the newest sample to its open visit and its residual from ``level`` to the statistics."""
        with np.errstate(over="ignore", invalid="ignore"):
            total = self.open[rows, 1] + x
        present = np.isfinite(total)  # an absurd sample that would overflow the visit's sum is left out
        self.open[rows, 1] = np.where(present, total, self.open[rows, 1])
        self.open[rows, 2] += present
        self.residual.update(rows, x - level)


@dataclass(frozen=True)
class Evaluation:
    """What the normaliser made of each input row."""

    score: np.ndarray  # [rows] anomaly_score in [0, 1)
    expected: (
        np.ndarray
    )  # [rows, signals, 3] lower, mean, upper expected for the newest sample (NaN: none yet)
    history: np.ndarray  # [rows] samples behind the statistics (of the target's best-known signal)


class AnomalyNormaliser:
    """Per-target state keyed by label set: running statistics of each signal and of each raw
    score and of the evidence, seasonal profiles, and the last BURST_STEPS evidence values. Targets not passed to
    ``retain`` are dropped (or kept as their workload's donor), so the state is bounded by the
    targets currently watched."""

    def __init__(
        self,
        signals: Sequence[str],
        embed_steps: int = EMBED_STEPS,
        step: float = 60.0,
        seasons: Sequence[str] | None = None,
        workload_of: WorkloadOf | None = None,
    ) -> None:
        self.signals = tuple(signals)
        self.embed_steps = embed_steps
        self.step = step
        self.workload_of = workload_of
        self._rows: dict[TargetKey, int] = {}
        self._labels: list[Mapping[str, str]] = []
        self._workloads: dict[object, int] = {}  # workload -> a state row of one of its targets
        self._row_workloads: list[object] = []  # the workload of each watched target's state row
        self._donors: dict[object, int] = {}  # workload -> state row of a vanished target
        self._values = RunningStats(len(self.signals))
        self._raw = RunningStats(len(self.signals) + 1)  # shape per signal, then the bundle forest
        self._evidence = RunningStats(1, prior=EVIDENCE_PRIOR)  # a single-signal target's usual oddness
        self._seasons = [
            SeasonalProfile(len(self.signals), PERIOD_SECONDS[name], SEASON_BINS[name])
            for name in (SEASONS if seasons is None else seasons)
        ]
        self._recent = np.zeros((0, BURST_STEPS))
        self._first = np.zeros(0)  # time of each row's first sample (NaN: none yet)
        self.last_time = np.zeros(0)  # time of each row's newest sample (-inf: none yet)
        self._last_score = np.zeros(0)  # what each row's newest sample scored
        self._last_expected = np.zeros((0, len(self.signals), 3))
        self.inherited = np.zeros(0, dtype=bool)  # rows that started from their workload's statistics
        self._orphan = np.zeros(0, dtype=bool)  # rows that started fresh: no statistics to take then
        self._forest = null_forest(embed_steps)

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, key: object) -> bool:
        """Whether the target of this ``target_key`` is watched."""
        return key in self._rows

    def rows_of(self, targets: Sequence[Mapping[str, str]]) -> np.ndarray:
        """State rows of these targets (-1 for one not watched)."""
        return np.array([self._rows.get(target_key(t), -1) for t in targets], dtype=np.int64)

    def retain(self, targets: Sequence[Mapping[str, str]]) -> np.ndarray:
        """Keep exactly these targets; returns their state rows, in order. A new target starts
        from its workload's statistics when ``workload_of`` finds one, else fresh."""
        if len(targets) == len(self._labels) and all(map(operator.eq, targets, self._labels)):
            # The same targets in the same order (most cycles): nothing to move or copy.
            self.inherited = np.zeros(len(targets), dtype=bool)
            return np.arange(len(targets))
        keys = [target_key(labels) for labels in targets]
        known, rows = set(keys), self._rows
        workloads = [  # a watched target's was named when it came (or by refresh_workloads)
            self._row_workloads[rows[key]]
            if key in rows
            else self.workload_of(t)
            if self.workload_of
            else None
            for key, t in zip(keys, targets, strict=True)
        ]
        donors = dict(self._donors)
        for key, row in self._rows.items():
            workload = self._row_workloads[row]
            if key not in known and workload is not None:  # vanished: the newest donor of its workload
                donors.pop(workload, None)
                donors[workload] = row
        old, inherited = [], []
        for key, workload in zip(keys, workloads, strict=True):
            row = self._rows.get(key, -1)
            if row < 0 and workload is not None:
                row = self._workloads.get(workload, donors.get(workload, -1))
                inherited.append(row >= 0)
            else:
                inherited.append(False)
            old.append(row)
        kept_donors = list(donors.items())[-max(len(keys), 1) :]
        order = np.array(old + [row for _, row in kept_donors], dtype=np.int64)
        self._take(order, np.array(inherited + [False] * len(kept_donors), dtype=bool))
        self._rows = {key: row for row, key in enumerate(keys)}
        self._labels = list(targets)
        self.inherited = np.array(inherited, dtype=bool)
        self._donors = {workload: len(keys) + i for i, (workload, _) in enumerate(kept_donors)}
        self._workloads = {}
        self._row_workloads = workloads
        for row, workload in enumerate(workloads):
            if workload is not None:
                self._workloads.setdefault(workload, row)
        return np.arange(len(keys))

    def refresh_workloads(self, young: int = MIN_STEPS) -> int:
        """Name the watched targets' workloads again with the current ``workload_of`` (it was
        replaced: new owner information), and let each target that found no statistics when it
        was first seen and holds fewer than ``young`` samples take its workload's now (a pod seen
        before kube-state-metrics named its owner). Returns how many took them."""
        n = len(self._labels)
        if not n:
            return 0
        workloads = [self.workload_of(t) if self.workload_of else None for t in self._labels]
        late = self._orphan[:n] & (self.history(np.arange(n)) < young)
        live: dict[object, int] = {}
        for row, workload in enumerate(workloads):
            if workload is not None and not late[row]:
                live.setdefault(workload, row)
        order = np.arange(len(self._orphan))
        taken = np.zeros(len(order), dtype=bool)
        for row in np.flatnonzero(late):
            workload = workloads[row]
            donor = -1 if workload is None else live.get(workload, self._donors.get(workload, -1))
            order[row], taken[row] = (donor, True) if donor >= 0 else (row, False)
        if taken.any():
            self._take(order, taken)
            self.inherited = self.inherited | taken[:n]
        self._row_workloads = workloads
        self._workloads = {}
        for row, workload in enumerate(workloads):
            if workload is not None:
                self._workloads.setdefault(workload, row)
        return int(taken.sum())

    def include(self, targets: Sequence[Mapping[str, str]]) -> np.ndarray:
        """Watch these targets too, dropping none; returns their state rows, in order. Without a
        new target the state is left as it is (``retain`` would copy all of it)."""
        rows = self.rows_of(targets)
        if (rows < 0).any():
            self.retain(self._labels + [t for t, row in zip(targets, rows, strict=True) if row < 0])
            rows = self.rows_of(targets)
        return rows

    def _take(self, order: np.ndarray, inherited: np.ndarray) -> None:
        self._values.take(order)
        self._raw.take(order)
        self._evidence.take(order)
        for season in self._seasons:
            season.take(order)
        fresh = (order < 0) | inherited
        self._orphan = _take(self._orphan, order, True)
        self._orphan[inherited] = False
        self._recent = _take(self._recent, order, -np.inf)
        self._recent[fresh] = -np.inf
        self._first = _take(self._first, order, np.nan)
        self.last_time = _take(self.last_time, order, -np.inf)
        self.last_time[fresh] = -np.inf
        self._last_score = _take(self._last_score, order, 0.0)
        self._last_score[fresh] = 0.0
        self._last_expected = _take(self._last_expected, order, np.nan)

    def adopt(self, other: AnomalyNormaliser, targets: Sequence[Mapping[str, str]]) -> int:
        """Take over ``other``'s state of these targets where it holds more history than ours
        (a warm-up replay finishing); returns how many were taken."""
        mine, theirs = self.rows_of(targets), other.rows_of(targets)
        take = (mine >= 0) & (theirs >= 0)
        take[take] = other.history(theirs[take]) > self.history(mine[take])
        dst, src = mine[take], theirs[take]
        for a, b in [
            (self._values, other._values),
            (self._raw, other._raw),
            (self._evidence, other._evidence),
        ] + [(s.residual, o.residual) for s, o in zip(self._seasons, other._seasons, strict=True)]:
            for name in ("count", "mean", "var"):
                getattr(a, name)[dst] = getattr(b, name)[src]
        for s, o in zip(self._seasons, other._seasons, strict=True):
            for name in ("done", "visits", "open"):
                getattr(s, name)[dst] = getattr(o, name)[src]
        self._recent[dst] = other._recent[src]
        self._first[dst] = other._first[src]
        self.last_time[dst] = other.last_time[src]
        self._last_score[dst] = other._last_score[src]
        self._last_expected[dst] = other._last_expected[src]
        return int(take.sum())

    def forget_model(self) -> None:
        """A new bundle forest scores on a scale of its own: restart its raw statistics."""
        for name in ("count", "mean", "var"):
            getattr(self._raw, name)[:, -1] = 0.0

    def history(self, rows: np.ndarray) -> np.ndarray:
        """Samples behind each row's statistics (of its best-known signal: a signal a target
        never reports must not keep it "young" forever)."""
        return self._values.count[rows].max(axis=1) if len(rows) else np.zeros(0)

    def score_frame(
        self,
        values: np.ndarray,
        targets: Sequence[Mapping[str, str]],
        forest_raw: np.ndarray,
        time: float | None = None,
    ) -> np.ndarray:
        """One daemon cycle: ``values[targets, time, signals]`` is the newest window of every
        target watched now (targets not in it are dropped), ``forest_raw`` the bundle forest's raw
        score of each. The newest step is taken as one new sample per target."""
        if time is not None:
            return self.cycle(values, targets, forest_raw, time).score
        return self.evaluate(self.retain(targets), values, forest_raw).score

    def cycle(
        self, values: np.ndarray, targets: Sequence[Mapping[str, str]], forest_raw: np.ndarray, time: float
    ) -> Evaluation:
        """One daemon cycle at data time ``time``: like ``score_frame``, but a target whose state
        already holds that sample (a warm-up replayed it, or the window did not move since the
        last cycle) is not fed it twice and reads what it read then."""
        rows = self.retain(targets)
        due = self.last_time[rows] < time
        due = slice(None) if due.all() else due  # the usual cycle: the window itself, not a 19 MB copy of it
        chosen = rows[due]
        self.evaluate(chosen, values[due], forest_raw[due], np.full(len(chosen), time))
        return Evaluation(self._last_score[rows], self._last_expected[rows], self.history(rows))

    def score(
        self, rows: np.ndarray, windows: np.ndarray, forest_raw: np.ndarray, times: np.ndarray | None = None
    ) -> np.ndarray:
        """``anomaly_score`` of each input row; see ``evaluate``."""
        return self.evaluate(rows, windows, forest_raw, times).score

    def evaluate(
        self, rows: np.ndarray, windows: np.ndarray, forest_raw: np.ndarray, times: np.ndarray | None = None
    ) -> Evaluation:
        """Score each input row and say what was expected of it.

        ``rows[i]`` is the state row (from ``retain``) of input row i, ``windows[i]`` its
        ``[steps, signals]`` samples ending at its own (NaN where missing; at least
        ``embed_steps`` steps, the newest last), ``forest_raw[i]`` the bundle forest's raw score
        of that window and ``times[i]`` the newest sample's Unix time (None: no seasons). Input
        rows of one target must be in time order.
        """
        rows = np.asarray(rows, dtype=np.int64)
        windows = np.asarray(windows, dtype=float)[:, -self.embed_steps :, :]
        n, signals = len(rows), len(self.signals)
        out = np.zeros(n)
        expected = np.full((n, signals, 3), np.nan)
        if not n:
            return Evaluation(out, expected, np.zeros(0))
        steps = _steps(rows)
        # Pass 1: where each row's samples stand against the expectation before them.
        offset = np.zeros((n, signals))
        center = np.full((n, signals), np.nan)
        scale = np.full_like(center, np.nan)
        count = np.zeros_like(center)
        history = np.zeros(n)
        known = np.zeros(n)  # signals with statistics before each row's sample
        for step in steps:
            r = rows[step]
            when = None if times is None else np.asarray(times, dtype=float)[step]
            counts = self._values.count[r]  # samples behind each signal's statistics so far
            history[step] = counts.max(axis=1)  # as self.history(r)
            known[step] = (counts >= MIN_STEPS).sum(axis=1)
            count[step], center[step], scale[step], offset[step], entered = self._expect(r, when)
            newest = windows[step, -1, :]
            if when is not None:
                self._watch(r, when, newest, entered)
            self._values.update(r, newest)
        with np.errstate(invalid="ignore", divide="ignore"):
            level = offset + center
            half = band_width(count) * scale
            expected[:] = np.stack([level - half, level, level + half], axis=2)
            value_z = normal_z((windows[:, -1, :] - level) / scale, count)
            shape = self._shape_scores(windows, level, scale)
        shape[~np.isfinite(scale)] = np.nan
        raw = np.column_stack([shape, forest_raw])
        # Pass 2: raw scores against the target's own raw scores so far, then bursts.
        for step in steps:
            raw_z = self._raw.z(rows[step], raw[step])
            self._raw.update(rows[step], raw[step])
            out[step] = self._report(rows[step], value_z[step], raw_z, history[step], known[step])
        # Rows of one target are in time order: the last assignment is its newest.
        self._last_score[rows], self._last_expected[rows] = out, expected
        return Evaluation(out, expected, history)

    def _report(
        self, rows: np.ndarray, value_z: np.ndarray, raw_z: np.ndarray, history: np.ndarray, known: np.ndarray
    ) -> np.ndarray:
        """One step of distinct rows: ``value_z[rows, signals]`` and ``raw_z[rows, signals + 1]``
        (shape per signal, then the bundle forest; NaN where unknown), the samples behind each
        row's statistics and its signals with statistics -> the reported score."""
        evidence = np.column_stack(
            [_nanmax(value_z), _nanmax(raw_z[:, :-1]), np.nan_to_num(raw_z[:, -1], nan=0.0)]
        ).mean(axis=1)
        recent = self._recent[rows]
        # The evidence statistics lag the burst memory: the step leaving it joins them now, so a
        # rise over the last BURST_STEPS steps is judged, not absorbed, while it lasts.
        self._evidence.update(rows, recent[:, :1])
        both = np.column_stack([evidence, recent.max(axis=1)])
        single = known <= CALIBRATED_SIGNALS
        if single.any():
            count, mean, scale = self._evidence.location(rows[single])
            with np.errstate(invalid="ignore"):
                t = (both[single] - mean) / scale
                both[single] = CALIBRATED_GAIN * np.where(
                    t > 0.0, normal_z(t, count), 0.0
                )  # below the usual: 0
        fresh = both[:, 0] > np.where(single, 1.0 + BURST_MARGIN, 1.0) * both[:, 1]
        # Evidence means something once the target's statistics do (MIN_STEPS samples).
        self._recent[rows] = np.column_stack(
            [recent[:, 1:], np.where(history >= MIN_STEPS, evidence, -np.inf)]
        )
        return np.where(fresh, both[:, 0] / (1.0 + both[:, 0]), 0.0)

    def _shape_scores(self, windows: np.ndarray, level: np.ndarray, scale: np.ndarray) -> np.ndarray:
        """The null forest's raw score of each row's standardised window per signal, ``[rows,
        signals]``, in blocks of ``SHAPE_BLOCK`` rows: the standardised copy of a whole cycle's
        windows never exists at once."""
        n, signals = level.shape
        shape = np.empty((n, signals))
        for start in range(0, n, SHAPE_BLOCK):
            block = slice(start, start + SHAPE_BLOCK)
            # The season's level of the newest bin stands for the whole (short) window; a missing
            # sample reads as expected, a window with nothing to compare reads nothing.
            flat = standardised_windows(windows[block], level[block], scale[block], Z_CLIP)
            shape[block] = forest_score(self._forest, flat).reshape(-1, signals)
        return shape

    def _expect(self, rows: np.ndarray, times: np.ndarray | None) -> tuple[np.ndarray, ...]:
        """(count, center, deviation, offset) per row and signal for the newest sample: the plain
        running statistics (offset 0), or a season's profile level (offset) plus the statistics of
        the residual from it, whichever the history supports (module docstring). Also returns
        each season's (bin, level), for ``_watch``."""
        count, center, scale = self._values.location(rows)
        offset = np.zeros_like(center)
        entered = []
        if times is None:
            return count, center, scale, offset, entered
        best = self._values.var[rows] * SEASON_GAIN
        for season in self._seasons:
            b, level = season.enter(rows, times)
            entered.append((b, level))
            watched = (times - self._first[rows]) >= SEASON_MIN_PERIODS * season.period
            s_count, s_center, s_scale = season.residual.location(rows)
            var = season.residual.var[rows]
            use = watched[:, None] & np.isfinite(level) & np.isfinite(s_scale) & (var < best)
            best = np.where(use, var, best)
            count, center, scale, offset = (
                np.where(use, a, b)
                for a, b in ((s_count, count), (s_center, center), (s_scale, scale), (level, offset))
            )
        return count, center, scale, offset, entered

    def _watch(self, rows: np.ndarray, times: np.ndarray, x: np.ndarray, entered: list) -> None:
        """Seasonal bookkeeping of the newest sample (after it was judged)."""
        self._first[rows] = np.where(np.isfinite(self._first[rows]), self._first[rows], times)
        self.last_time[rows] = np.maximum(self.last_time[rows], times)
        for season, (_, level) in zip(self._seasons, entered, strict=True):
            season.add(rows, x, level)


def _take(array: np.ndarray, rows: np.ndarray, fill: float) -> np.ndarray:
    """``array[rows]`` along the first axis, ``fill`` where rows is -1 (or the array is empty)."""
    shape = (len(rows), *array.shape[1:])
    if not len(array):
        return np.full(shape, fill, dtype=array.dtype)
    out = array[np.where(rows < 0, 0, rows)]  # fancy indexing copies already
    out[rows < 0] = fill
    return out


def _nanmax(x: np.ndarray) -> np.ndarray:
    """Row maxima ignoring NaN; 0 where a row has no value."""
    return np.where(np.isfinite(x), x, -np.inf).max(axis=1).clip(min=0.0)


def _steps(rows: np.ndarray) -> list[np.ndarray]:
    """Input row indices grouped so that each group holds each target at most once, groups in
    time order: the k-th row of every target goes into group k."""
    order = np.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    starts = np.flatnonzero(np.r_[True, sorted_rows[1:] != sorted_rows[:-1]])
    first = np.repeat(starts, np.diff(np.r_[starts, len(rows)]))
    occurrence = np.empty(len(rows), dtype=np.int64)
    occurrence[order] = np.arange(len(rows)) - first
    if occurrence.max() == 0:
        return [np.arange(len(rows))]
    group_order = np.argsort(occurrence, kind="stable")
    bounds = np.flatnonzero(np.diff(occurrence[group_order])) + 1
    return np.split(group_order, bounds)
