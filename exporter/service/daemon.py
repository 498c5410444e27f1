"""The scoring cycle and its schedule.

One cycle: fetch the window (one query per signal), compute features for every
target, score them all in one call per model, measure each target's anomaly
evidence against its own history (models/normalize.py), publish a new Snapshot. A cycle
that fails leaves the previous Snapshot in place (the collector hides it once it
is older than ``stale_after``) and records why, so the daemon never crashes on
bad data and never loses its model.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime

import numpy as np
from apscheduler.schedulers.background import BackgroundScheduler
from prometheus_client import CollectorRegistry

from exporter.config import Settings, format_duration
from exporter.features import absent_signals, frame_features, reporting
from exporter.frame import Frame
from exporter.models.bundle import BundleError, ModelBundle
from exporter.models.normalize import (
    EMBED_STEPS,
    AnomalyNormaliser,
    Evaluation,
    TargetKey,
    WorkloadOf,
    owned_by,
    target_key,
    workload_by,
)
from exporter.models.trend import time_to_limit
from exporter.redact import first_line, mask
from exporter.service.collector import SelfMetrics, SnapshotCollector
from exporter.service.drift import DriftTracker
from exporter.service.exposition import Exposition
from exporter.service.reload import ModelWatcher
from exporter.service.state import State
from exporter.service.turns import Turns
from exporter.service.warmup import WarmUp
from exporter.snapshot import Bands, Explanations, ModelInfo, Snapshot, contribution_shares, risk_floor
from exporter.sources import Owners, Source

log = logging.getLogger(__name__)


class CycleFailed(Exception):
    """Nothing usable came out of this cycle; the message says why."""


def served_horizon(bundle: ModelBundle, step: float) -> float:
    """Features are per step, so a model trained for N steps ahead predicts N of *our* steps."""
    manifest = bundle.manifest
    return manifest.horizon_seconds / manifest.step_seconds * step


def check_compatibility(bundle: ModelBundle, settings: Settings) -> list[str]:
    """Differences between how the model was trained and how it is being served."""
    manifest, problems = bundle.manifest, []
    window = round(settings.lookback / settings.step)
    if window != manifest.window_steps:
        problems.append(
            f"lookback/step gives {window} steps per window, the model was trained on {manifest.window_steps}"
        )
    if abs(served_horizon(bundle, settings.step) - settings.horizon) > 1e-6:
        problems.append(
            f"the model predicts {manifest.horizon_seconds / manifest.step_seconds:g} steps ahead, i.e. "
            f"{format_duration(served_horizon(bundle, settings.step))} at step {format_duration(settings.step)}, "
            f"not the configured horizon {format_duration(settings.horizon)}"
        )
    missing = sorted(set(manifest.signals) - set(settings.queries))
    if missing:
        problems.append(f"signals {missing} are disabled; their features will be missing")
    return problems


def explained_shares(signal_contributions: np.ndarray) -> np.ndarray:
    """Per-signal shares of explained rows; NaN for rows the cycle did not explain."""
    shares = contribution_shares(signal_contributions)
    shares[np.isnan(signal_contributions).any(axis=1)] = np.nan
    return shares


class Daemon:
    """Owns the state, the registry and the schedule; the HTTP layer only reads them."""

    def __init__(
        self,
        settings: Settings,
        source: Source,
        bundle: ModelBundle,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
        watcher: ModelWatcher | None = None,
    ) -> None:
        self.settings = settings
        self.watcher = watcher
        self.source = source
        self.state = State(bundle=bundle)
        self.registry = registry or CollectorRegistry()
        self.metrics = SelfMetrics(self.registry)
        self.registry.register(SnapshotCollector(self.state))
        self.exposition = Exposition(
            self.registry, self.state, settings.target_labels, settings.stale_after, clock
        )
        self.horizon = format_duration(served_horizon(bundle, settings.step))
        self.on_cycle: list[Callable[[Snapshot], None]] = []
        self.on_stop: list[Callable[[], None]] = []  # e.g. abandon a refit's queries
        self._drift = DriftTracker()
        self._normaliser: AnomalyNormaliser | None = None
        self._silent: set[str] = set()
        self._clock = clock
        self._turns = Turns()  # cycles and warm-up chunks, one at a time: their memory never adds up
        read = getattr(source, "read_history", None)  # sources that can read the past warm-start
        on_error = lambda reason: self.metrics.warmup_errors.labels(reason).inc()  # noqa: E731
        self._warmup = (
            WarmUp(settings, read, on_error, clock, self._turns)
            if read is not None and settings.anomaly.warmup > 0
            else None
        )
        self._cold: set[TargetKey] = set()  # first-seen targets waiting for a warm-up of their own
        self._warmed: set[TargetKey] = set()  # targets warmed or being warmed, of those watched
        self._full = False  # the warm-up running (or run last) replays every target
        self._warmed_once = False
        anomaly = settings.anomaly
        self._pattern = workload_by(anomaly.workload_label, anomaly.workload_pattern)
        self._workload_of: WorkloadOf | None = self._pattern  # the normaliser's, see _note_owners
        self._owner_pods: object = None  # the Owners.pods the current workload_of was built from
        self._explain_from = risk_floor(settings.explain_min_risk)
        self._dropped = 0
        self._stopping = False
        self._scheduler = BackgroundScheduler(daemon=True)
        for problem in check_compatibility(bundle, settings):
            log.warning("model and config differ", extra={"problem": problem})

    def run_cycle(self) -> Snapshot:
        """One scoring pass; raises CycleFailed when there is nothing to publish. A warm-up
        chunk under way finishes first (service/turns.py)."""
        with self._turns.first():
            return self._score()

    def _score(self) -> Snapshot:
        bundle = self.state.bundle
        if bundle is None:
            raise CycleFailed("no model bundle is loaded")
        with self.metrics.cycle_duration.labels("query").time():
            fetch = self.source.fetch()
        for error in fetch.errors:
            self.metrics.query_errors.labels(error.signal, error.reason).inc()
        self._note_dropped(fetch.dropped)
        self._note_owners(fetch.owners)
        failed = {error.signal for error in fetch.errors if not error.partial}
        if failed >= set(self.source.signals):
            raise CycleFailed(f"every signal query failed: {fetch.errors[0].message}")
        with self.metrics.cycle_duration.labels("features").time():
            frame = self._scored_targets(fetch.frame, failed)
            features = frame_features(frame)
        with self.metrics.cycle_duration.labels("score").time():
            scores = bundle.score(features, explain_from=self._explain_from)
            evaluation = self._anomaly(frame, scores.raw_anomaly, bundle)
        with self.metrics.cycle_duration.labels("publish").time():
            manifest = bundle.manifest
            snapshot = Snapshot(
                created_at=self._clock(),
                data_time=frame.end,
                horizon=self.horizon,
                model=ModelInfo(manifest.version, manifest.trained_at, manifest.kind),
                signals=manifest.signals,
                targets=frame.targets,
                probability=scores.probability,
                anomaly=evaluation.score,
                contribution=explained_shares(scores.signal_contributions),
                explanations=Explanations(
                    manifest.features, scores.inputs, scores.contributions, bundle.explainer.contributions
                ),
                drift=self._drift.update(bundle, scores.inputs),
                bands=self._bands(fetch.frame, evaluation),
            )
            self.state.snapshot = snapshot
            self.state.last_success = snapshot.created_at
        return snapshot

    def _scored_targets(self, frame: Frame, failed: set[str]) -> Frame:
        """The targets that report any signal, with how many lack each signal on the self-metric
        and one warning when a signal starts (or stops) returning nothing for every target."""
        every = absent_signals(frame.values)  # one pass over the window serves all three questions
        scored = reporting(frame, every)
        absent = every[~every.all(axis=1)]  # the scored targets'
        for signal, count in zip(frame.signals, absent.sum(axis=0), strict=True):
            self.metrics.targets_missing_signal.labels(signal).set(int(count))
        silent = {s for s, none in zip(frame.signals, every.all(axis=0), strict=True) if none}
        for signal in sorted(silent - self._silent):
            reason = "its query failed" if signal in failed else "its query returned no data"
            log.warning(
                "signal returns nothing: scoring every target without it",
                extra={"signal": signal, "reason": reason},
            )
        for signal in sorted(self._silent - silent):
            log.info("signal returns data again", extra={"signal": signal})
        self._silent = silent
        return scored

    def _note_dropped(self, dropped: int) -> None:
        """Targets beyond max_targets go unscored: say so on a gauge, and in the log when it changes."""
        if dropped != self._dropped:
            log.warning(
                "targets over max_targets are not scored" if dropped else "every live target is scored again",
                extra={"dropped": dropped, "max_targets": self.settings.max_targets},
            )
        self._dropped = dropped
        self.metrics.targets_dropped.set(dropped)

    def _note_owners(self, owners: Owners | None) -> None:
        """Name workloads by the owners the source read this cycle (the pattern while they are
        unknown), and show on the health metrics whether they are: the source logs the changes."""
        if owners is None:
            return
        self.metrics.workload_owner_fallback.set(int(owners.pods is None))
        if owners.asked and owners.failure is not None:
            self.metrics.workload_owner_errors.labels(owners.failure.reason).inc()
        if owners.pods is self._owner_pods:
            return
        self._owner_pods = owners.pods
        self._workload_of = self._pattern
        if owners.pods is not None:
            fallback = self._pattern if self.settings.anomaly.workload_source == "auto" else None
            self._workload_of = owned_by(self.settings.anomaly.workload_label, owners.of, fallback)
        if self._normaliser is not None:
            self._normaliser.workload_of = self._workload_of
            late = self._normaliser.refresh_workloads()
            if late:
                log.info(
                    "new targets took their workload's statistics once its owner was known",
                    extra={"targets": late},
                )

    def _anomaly(self, frame: Frame, forest_raw: np.ndarray, bundle: ModelBundle) -> Evaluation:
        """``anomaly_score`` of every target against its own history (models/normalize.py);
        a change of signals or window length starts the history afresh. Warm-ups from history
        (service/warmup.py) are started and adopted here, between cycles."""
        steps = min(EMBED_STEPS, frame.values.shape[1])
        normaliser = self._normaliser
        if (
            normaliser is None
            or normaliser.signals != tuple(frame.signals)
            or normaliser.embed_steps != steps
        ):
            normaliser = self._normaliser = self._new_normaliser(frame.signals, steps)
            self._warmed_once = False
        warmup = self._warmup
        if warmup is not None:
            self._adopt_warmup(normaliser, frame, bundle)
            self._begin_warmup(warmup, frame, bundle, steps)
        evaluation = normaliser.cycle(frame.values, frame.targets, forest_raw, frame.end)
        if warmup is not None and self._warmed_once:
            self._note_cold(warmup, normaliser, frame, evaluation)
        return evaluation

    def _begin_warmup(self, warmup: WarmUp, frame: Frame, bundle: ModelBundle, steps: int) -> None:
        """The replay of every target once per normaliser, then one for the first-seen targets
        waiting (``_cold``) whenever none runs. Each target is replayed at most once while it is
        watched: ``_warmed`` holds those warmed or being warmed."""
        make = lambda: self._new_normaliser(frame.signals, steps)  # noqa: E731
        if not self._warmed_once:
            if warmup.begin(make, bundle, targets=len(frame.targets)):
                self._warmed_once, self._full, self._cold = True, True, set()
                self._warmed = {target_key(t) for t in frame.targets}
        elif self._cold and not warmup.running:
            only, self._cold = self._cold - self._warmed, set()
            if only and warmup.begin(make, bundle, only, targets=len(only)):
                self._full = False
                self._warmed |= only
        self.metrics.warmup_running.set(int(warmup.running))

    def _note_cold(
        self, warmup: WarmUp, normaliser: AnomalyNormaliser, frame: Frame, evaluation: Evaluation
    ) -> None:
        """Targets that started with no statistics (not inherited, not warmed or being warmed)
        wait for a warm-up of their own; while the replay of every target runs, it covers them,
        as it reads every target up to its newest step."""
        cold = (evaluation.history <= 1) & ~normaliser.inherited  # the cycle's targets, in order
        new = {target_key(frame.targets[i]) for i in np.flatnonzero(cold)} - self._warmed
        if self._full and warmup.running:
            self._warmed |= new
        else:
            self._cold |= new
        # A target no longer watched is forgotten (its statistics are): if it returns, it is new.
        self._warmed = {key for key in self._warmed if key in normaliser}
        self._cold = {key for key in self._cold if key in normaliser}

    def _new_normaliser(self, signals: tuple[str, ...], steps: int) -> AnomalyNormaliser:
        return AnomalyNormaliser(
            signals,
            steps,
            step=self.settings.step,
            seasons=self.settings.anomaly.seasons,
            workload_of=self._workload_of,
        )

    def _adopt_warmup(self, normaliser: AnomalyNormaliser, frame: Frame, bundle: ModelBundle) -> None:
        """Take over a finished warm-up's statistics for the targets it holds more history of."""
        finished = self._warmup.take() if self._warmup is not None else None
        if finished is None:
            return
        warm, scored_with, _ = finished
        if scored_with is not bundle:
            warm.forget_model()
        normaliser.retain(frame.targets)
        taken = normaliser.adopt(warm, frame.targets)
        self.metrics.warmed_targets.inc(taken)
        log.info("anomaly statistics warmed from history", extra={"targets": taken})

    def _bands(self, frame: Frame, evaluation: Evaluation) -> Bands:
        """Expected bands (unless turned off) and time to limit of the configured signals."""
        anomaly = self.settings.anomaly
        limit = np.full((len(frame.targets), len(frame.signals)), np.nan)
        for column, signal in enumerate(frame.signals):
            if signal in anomaly.time_to_limit:
                limit[:, column] = time_to_limit(frame.values[:, :, column], frame.step or self.settings.step)
        return Bands(
            signals=tuple(frame.signals),
            expected=evaluation.expected if anomaly.bands else None,
            time_to_limit=limit,
            history=evaluation.history,
        )

    def reload_model(self) -> None:
        """Swap in a newly activated bundle; a bad one is refused and the current one stays."""
        if self.watcher is None:
            return
        try:
            bundle = self.watcher.poll()
        except BundleError as exc:
            self.metrics.model_load_errors.inc()
            log.error("model bundle refused, keeping the serving one", extra={"error": str(exc)})
            return
        if bundle is None:
            return
        self.state.bundle = bundle
        if self._normaliser is not None:
            self._normaliser.forget_model()
        self.horizon = format_duration(served_horizon(bundle, self.settings.step))
        log.info("model reloaded", extra={"version": bundle.manifest.version})
        for problem in check_compatibility(bundle, self.settings):
            log.warning("model and config differ", extra={"problem": problem})

    def cycle(self) -> None:
        """The scheduled job: never raises, records the outcome on metrics and logs."""
        self.reload_model()
        try:
            snapshot = self.run_cycle()
        except Exception as exc:
            if self._stopping:
                log.info("cycle abandoned: the daemon is stopping")
                return
            # /readyz is unauthenticated: the headline only (native errors carry stack
            # traces), secrets masked; the log keeps the details.
            self.state.last_error = mask(first_line(str(exc)), self.settings.prometheus.secrets)
            self.metrics.cycles.labels("failure").inc()
            log.error("cycle failed", extra={"error": str(exc)}, exc_info=not isinstance(exc, CycleFailed))
            return
        self.state.last_error = None
        self.metrics.cycles.labels("success").inc()
        log.debug("cycle done", extra={"targets": len(snapshot.targets)})
        for listener in self.on_cycle:
            listener(snapshot)

    def readiness(self) -> tuple[bool, str]:
        """Ready once a model is loaded and a cycle succeeded within stale_after."""
        if self.state.bundle is None:
            return False, "no model loaded"
        if self.state.last_success is None:
            return False, f"no successful cycle yet{self._because()}"
        age = self._clock() - self.state.last_success
        if age > self.settings.stale_after:
            return (
                False,
                f"last successful cycle {age:.0f}s ago (stale_after {self.settings.stale_after:g}s){self._because()}",
            )
        if self.state.snapshot is not None and not self.state.snapshot.targets:
            return True, "ready, 0 targets: no signal query returned a series with the target labels"
        return True, "ok"

    def _because(self) -> str:
        return f": {self.state.last_error}" if self.state.last_error else ""

    def start(self) -> None:
        """Cycle now and every interval; a slow cycle delays the next, never overlaps it."""
        self._scheduler.add_job(
            self.cycle,
            "interval",
            seconds=self.settings.interval,
            next_run_time=datetime.now(),
            max_instances=1,
            coalesce=True,
            misfire_grace_time=max(1, int(self.settings.interval)),
            id="cycle",
        )
        self._scheduler.start()

    def schedule(self, job: Callable[[], object], every: float, name: str) -> None:
        """Run slow background work (refits) every ``every`` seconds, off the scoring cycle."""

        def run() -> None:
            try:
                job()
            except Exception as exc:
                log.error("background job failed", extra={"job": name, "error": str(exc)}, exc_info=True)

        self._scheduler.add_job(
            run, "interval", seconds=every, id=name, max_instances=1, coalesce=True, misfire_grace_time=None
        )

    def stop(self) -> None:
        """Abandon the queries in flight first, so a hung Prometheus cannot hold the shutdown."""
        self._stopping = True
        close = getattr(self.source, "close", None)  # sources holding connections have one
        if close is not None:
            close()
        for hook in self.on_stop:
            hook()
        if self._scheduler.running:
            self._scheduler.shutdown(wait=True)
