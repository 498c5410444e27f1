"""The train and evaluate commands' work, independent of argument parsing."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from exporter.config import Settings, parse_duration
from exporter.features import Features, select
from exporter.frame import Frame
from exporter.models.bundle import ModelBundle
from exporter.sources.files import TARGET, FilesSource, Recording
from exporter.sources.simulate import SIGNALS, simulate_history
from exporter.training.dataset import DEFAULT_SPLIT, Dataset, SplitOptions, TrainingOptions, build_dataset
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


def options_for(
    settings: Settings, seed: int, stride: int, split: SplitOptions = DEFAULT_SPLIT
) -> TrainingOptions:
    """Window and horizon in steps, as the daemon will serve them."""
    return TrainingOptions(
        window_steps=round(settings.lookback / settings.step),
        horizon_steps=max(1, round(settings.horizon / settings.step)),
        stride=stride,
        seed=seed,
        split=split,
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
    split: SplitOptions = DEFAULT_SPLIT,
) -> ModelBundle:
    options = options_for(settings, seed, stride, split)
    dataset = read_history(settings, span, options, cache_dir, progress)
    _require_failures(dataset)
    info = {"source": "prometheus", "prometheus": settings.prometheus.url, "command": command}
    return train_bundle(dataset, tuple(settings.queries), settings.step, options, "trained", info)


def train_from_files(
    source: FilesSource,
    incidents_file: Path,
    settings: Settings,
    options: TrainingOptions,
    command: str,
    progress: Progress | None,
) -> ModelBundle:
    """Train on recorded CSVs (the ``backtest`` layouts) labelled by an incidents file.

    Targets are named as ``backtest`` names them (the file stem, or the ``target``
    column), so the incidents file has a ``target`` column. Window and horizon are the
    config's durations in steps of the recording.
    """
    recordings = list(source.recordings())
    step = _common_step(recordings)
    options = replace(
        options,
        window_steps=max(2, round(settings.lookback / step)),
        horizon_steps=max(1, round(settings.horizon / step)),
    )
    signals = _signal_order(recordings)
    incidents = load_incidents(incidents_file, (TARGET,), step)
    known = {t[TARGET] for r in recordings for t in r.frame.targets}
    unknown = sorted({i.labels[TARGET] for i in incidents} - known)
    if unknown:
        raise ValueError(
            f"{incidents_file}: incidents name target(s) {unknown} that no recording has; "
            f"targets are file stems or values of the {TARGET!r} column: {sorted(known)[:10]}"
        )
    parts = []
    for recording in recordings:
        frame = _with_signals(recording.frame, signals)
        failed = _failed_mask(frame, incidents)
        parts.append(build_dataset(frame, failed, options, progress=progress))
    dataset = _concatenate(parts)
    info = {"source": "files", "inputs": [str(p) for p in source.paths], "command": command}
    return train_bundle(dataset, signals, step, options, "trained", info)


def _common_step(recordings: list[Recording]) -> float:
    steps = {r.path.name: r.frame.step for r in recordings}
    if len(set(steps.values())) > 1:
        raise ValueError(f"the recordings have different steps {steps}; give one with --step")
    step = next(iter(steps.values()))
    if step <= 0:
        raise ValueError(f"{recordings[0].path}: a single timestamp is no history to train on")
    return step


def _signal_order(recordings: list[Recording]) -> tuple[str, ...]:
    """The default signals first in their usual order, then any others by name."""
    present = {s for r in recordings for s in r.frame.signals}
    return tuple(s for s in SIGNALS if s in present) + tuple(sorted(present - set(SIGNALS)))


def _with_signals(frame: Frame, signals: tuple[str, ...]) -> Frame:
    """The frame with exactly ``signals``, NaN for those it lacks (absent, as in the daemon)."""
    values = np.full((len(frame.targets), len(frame.timestamps), len(signals)), np.nan)
    for index, signal in enumerate(signals):
        if signal in frame.signals:
            values[:, :, index] = frame.signal(signal)
    return Frame(values=values, targets=frame.targets, timestamps=frame.timestamps, signals=signals)


def _failed_mask(frame: Frame, incidents) -> np.ndarray:
    failed = np.zeros((len(frame.targets), len(frame.timestamps)), bool)
    row = {t[TARGET]: i for i, t in enumerate(frame.targets)}
    for incident in incidents:
        target = row.get(incident.labels[TARGET])
        if target is not None:
            failed[target] |= (frame.timestamps >= incident.start) & (frame.timestamps < incident.end)
    return failed


def _concatenate(parts: list[Dataset]) -> Dataset:
    """One dataset of several recordings, their targets numbered one after another."""
    offsets = np.cumsum([0] + [int(p.target.max()) + 1 if len(p.target) else 0 for p in parts])
    return Dataset(
        X=np.concatenate([p.X for p in parts]),
        y=np.concatenate([p.y for p in parts]),
        target=np.concatenate([p.target + o for p, o in zip(parts, offsets, strict=False)]),
        time=np.concatenate([p.time for p in parts]),
        names=parts[0].names,
        failure_target=np.concatenate([p.failure_target + o for p, o in zip(parts, offsets, strict=False)]),
        failure_time=np.concatenate([p.failure_time for p in parts]),
    )


def train_from_simulation(
    targets: int,
    days: float,
    seed: int,
    kind: str,
    command: str,
    progress: Progress | None,
    split: SplitOptions = DEFAULT_SPLIT,
) -> ModelBundle:
    options = TrainingOptions(seed=seed, split=split)
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
    probability = bundle.predict_proba(matrix)
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
