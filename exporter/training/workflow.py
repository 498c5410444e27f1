"""The train and evaluate commands' work, independent of argument parsing."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from exporter.config import Settings, parse_duration
from exporter.features import Features, select
from exporter.models.bundle import ModelBundle
from exporter.sources.simulate import simulate_history
from exporter.training.dataset import Dataset, TrainingOptions, build_dataset
from exporter.training.evaluate import evaluation_report
from exporter.training.history import HistoryReader
from exporter.training.incidents import IncidentsError, load_incidents, parse_time
from exporter.training.train import train_bundle

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class TimeRange:
    start: float
    end: float


def time_range(since: str | None, start: str | None, end: str | None, now: float | None = None) -> TimeRange:
    """``--since 14d`` (up to now) or ``--start``/``--end`` (ISO 8601 or Unix seconds)."""
    now = time.time() if now is None else now
    if since is not None and start is not None:
        raise ValueError("give --since or --start, not both")
    try:
        last = parse_time(end, "--end") if end is not None else now
        first = parse_time(start, "--start") if start is not None else last - parse_duration(since or "14d")
    except IncidentsError as exc:
        raise ValueError(str(exc)) from None
    if first >= last:
        raise ValueError("the range is empty: start must be before end")
    return TimeRange(first, last)


def options_for(settings: Settings, seed: int, stride: int) -> TrainingOptions:
    """Window and horizon in steps, as the daemon will serve them."""
    return TrainingOptions(
        window_steps=round(settings.lookback / settings.step),
        horizon_steps=max(1, round(settings.horizon / settings.step)),
        stride=stride,
        seed=seed,
    )


def read_history(
    settings: Settings, span: TimeRange, options: TrainingOptions, cache_dir, progress: Progress | None
) -> Dataset:
    incidents = ()
    if settings.failure.incidents_file is not None:
        incidents = load_incidents(settings.failure.incidents_file, settings.target_labels, settings.step)
    reader = HistoryReader(settings, options, cache_dir=cache_dir)
    return reader.read(span.start, span.end, incidents, progress)


def train_from_prometheus(
    settings: Settings,
    span: TimeRange,
    seed: int,
    stride: int,
    cache_dir,
    command: str,
    progress: Progress | None,
) -> ModelBundle:
    options = options_for(settings, seed, stride)
    dataset = read_history(settings, span, options, cache_dir, progress)
    _require_failures(dataset)
    info = {"source": "prometheus", "prometheus": settings.prometheus.url, "command": command}
    return train_bundle(dataset, tuple(settings.queries), settings.step, options, "trained", info)


def train_from_simulation(
    targets: int, days: float, seed: int, kind: str, command: str, progress: Progress | None
) -> ModelBundle:
    options = TrainingOptions(seed=seed)
    step = 60.0
    history = simulate_history(targets=targets, steps=int(days * 86400 / step), seed=seed, step=step)
    dataset = build_dataset(history.frame, history.failed, options, progress=progress)
    info = {"source": "simulate", "targets": targets, "days": days, "command": command}
    return train_bundle(dataset, history.frame.signals, step, options, kind, info)


def evaluate_on_prometheus(
    bundle: ModelBundle, settings: Settings, span: TimeRange, cache_dir, progress: Progress | None
) -> dict:
    """Score every window of another period with an existing bundle, no fitting."""
    manifest = bundle.manifest
    options = TrainingOptions(
        window_steps=manifest.window_steps,
        horizon_steps=round(manifest.horizon_seconds / manifest.step_seconds),
        stride=1,
        partial_history_share=0.0,
    )
    dataset = read_history(settings, span, options, cache_dir, progress)
    _require_failures(dataset)
    matrix = select(Features(dataset.X.astype(np.float64), dataset.names), manifest.features)
    probability = bundle.classifier.predict_proba(matrix)
    everything = np.ones(len(dataset.y), dtype=bool)
    return evaluation_report(
        dataset, everything, probability, options.horizon_steps, settings.step, None, manifest.signals
    )


def _require_failures(dataset: Dataset) -> None:
    if len(dataset.y) == 0:
        raise ValueError("no windows in the range: do the signal queries return data for it?")
    if dataset.y.sum() == 0:
        raise ValueError(
            "no failures in the range: check the failure definition (failure.query / incidents_file)"
        )
