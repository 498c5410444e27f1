"""Backtests: replay recorded series through the daemon's own feature and model code.

Every input row is scored as the daemon would have scored its target at that moment: the
features (``window_features``) of the ``window_steps``-step window ending at the row's grid
cell, whose newest cell holds the row's own sample, scored by ``ModelBundle.score``. Nothing
recorded after the row enters its window, and the first windows of a recording are shorter,
left-padded with NaN exactly like a target that has only just appeared. Rows are scored in
chunks of ``CHUNK_ROWS``, so memory stays bounded however long the recording.

Outputs: ``csv`` writes one file of ``timestamp,target,<value columns>,failure_probability,
anomaly_score``; ``nab`` writes the Numenta Anomaly Benchmark layout
``<out>/<detector>/<category>/<detector>_<file>.csv`` with ``timestamp,value,anomaly_score``.
Timestamps are written exactly as they appear in the input.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

from exporter.config import NAB_DIR_ENV
from exporter.features import window_features
from exporter.models.bundle import ModelBundle, Scores
from exporter.models.normalize import EMBED_STEPS, AnomalyNormaliser
from exporter.sources.files import TARGET, TIMESTAMP, FilesSource, Recording

CHUNK_ROWS = 10_000
FORMATS = ("csv", "nab")
CSV_NAME = "backtest.csv"
DEFAULT_DETECTOR = "failurePredictor"
# NAB files are single `timestamp,value` series of any unit; which signal they stand for is a
# choice, not a fit: cpu is simply the first signal. Override with --signal-column value=...
NAB_COLUMNS = {"value": "cpu"}
REPO_ROOT = Path(__file__).resolve().parent.parent


class BacktestError(Exception):
    """A backtest that cannot run as asked; the message says why."""


@dataclass(frozen=True)
class Summary:
    files: int
    rows: int
    seconds: float
    outputs: tuple[Path, ...]


def nab_dir() -> Path:
    """The NAB corpus: ``$FAILURE_PREDICTOR_NAB_DIR``, else ``../shared/data/nab`` beside the repository."""
    configured = os.environ.get(NAB_DIR_ENV)
    return Path(configured) if configured else REPO_ROOT.parent / "shared" / "data" / "nab"


def nab_files(root: Path) -> list[Path]:
    """Every data file of a NAB corpus (``<root>/data/<category>/*.csv``), sorted."""
    files = sorted((root / "data").glob("*/*.csv"))
    if not files:
        raise BacktestError(
            f"no NAB data under {root} (expected {root / 'data'}/<category>/*.csv); "
            f"point {NAB_DIR_ENV} or --nab-dir at the NAB directory"
        )
    return files


def score_rows(
    recording: Recording, bundle: ModelBundle, chunk_rows: int = CHUNK_ROWS
) -> Iterator[tuple[slice, Scores]]:
    """Scores of every input row, ``chunk_rows`` at a time, in input order. ``anomaly`` is the
    daemon's ``anomaly_score``: normalised against each target's own earlier rows."""
    frame = recording.frame
    width = bundle.manifest.window_steps
    normaliser = AnomalyNormaliser(frame.signals, min(EMBED_STEPS, width), step=frame.step or 60.0)
    normaliser.retain(frame.targets)
    padding = np.full((len(frame.targets), width - 1, len(frame.signals)), np.nan)
    # [targets, cells, signals, width]: the window ending at each cell, young ones NaN-padded.
    views = sliding_window_view(np.concatenate([padding, frame.values], axis=1), width, axis=1)
    for begin in range(0, len(recording), chunk_rows):
        rows = slice(begin, min(begin + chunk_rows, len(recording)))
        windows = views[recording.row_target[rows], recording.row_slot[rows]].transpose(0, 2, 1).copy()
        windows[:, -1] = recording.row_values[rows]
        features = window_features(windows, frame.signals)
        scores = bundle.score(features, explain=False)
        times = recording.row_time[rows]
        anomaly = normaliser.score(recording.row_target[rows], windows, scores.raw_anomaly, times)
        yield rows, replace(scores, anomaly=anomaly)


def run_backtest(
    source: FilesSource,
    bundle: ModelBundle,
    out: Path,
    output_format: str = "csv",
    detector: str = DEFAULT_DETECTOR,
    progress: Callable[[int, int], None] | None = None,
) -> Summary:
    """Score every row of every recording and write the results; see the module docstring."""
    if output_format not in FORMATS:
        raise BacktestError(f"unknown format {output_format!r}; expected one of {', '.join(FORMATS)}")
    started = time.monotonic()
    total = source.count_rows() if progress else 0
    done, files, outputs = 0, 0, []
    first_columns: tuple[str, ...] | None = None
    for recording in source.recordings():
        _check_signals(recording, bundle)
        if output_format == "nab":
            path, header = _nab_path(out, detector, recording), True
        else:
            first_columns = first_columns or recording.columns
            _check_same_columns(recording, first_columns, source.paths[0])
            path, header = out / CSV_NAME, files == 0
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w" if header else "a", newline="") as handle:
            for rows, scores in score_rows(recording, bundle):
                table = _nab_table if output_format == "nab" else _csv_table
                table(recording, rows, scores).to_csv(handle, header=header, index=False)
                header = False
                done += rows.stop - rows.start
                if progress:
                    progress(done, max(total, done))
        if not outputs or outputs[-1] != path:
            outputs.append(path)
        files += 1
    return Summary(files=files, rows=done, seconds=time.monotonic() - started, outputs=tuple(outputs))


def _check_signals(recording: Recording, bundle: ModelBundle) -> None:
    known = bundle.manifest.signals
    if not set(recording.frame.signals) & set(known):
        raise BacktestError(
            f"{recording.path}: none of its signals {list(recording.frame.signals)} is one the model "
            f"reads {list(known)}; map a column with --signal-column COLUMN=SIGNAL"
        )


def _check_same_columns(recording: Recording, columns: tuple[str, ...], first: Path) -> None:
    if recording.columns != columns:
        raise BacktestError(
            f"{recording.path}: value columns {list(recording.columns)} differ from {list(columns)} in "
            f"{first}; one CSV output needs the same columns throughout (back-test them separately)"
        )


def _nab_path(out: Path, detector: str, recording: Recording) -> Path:
    """``<out>/<detector>/<category>/<detector>_<file>.csv``, the category being the file's directory."""
    if len(recording.columns) != 1 or len(recording.frame.targets) != 1:
        raise BacktestError(
            f"{recording.path}: the NAB format takes one series per file (one target, one value column); "
            f"this file has {len(recording.frame.targets)} target(s) and columns {list(recording.columns)}"
        )
    return out / detector / recording.path.parent.name / f"{detector}_{recording.path.name}"


def _nab_table(recording: Recording, rows: slice, scores: Scores) -> pd.DataFrame:
    return pd.DataFrame(
        {
            TIMESTAMP: recording.row_stamp[rows],
            "value": recording.row_values[rows, 0],
            "anomaly_score": scores.anomaly,
        }
    )


def _csv_table(recording: Recording, rows: slice, scores: Scores) -> pd.DataFrame:
    names = np.array([labels[TARGET] for labels in recording.frame.targets])
    values = {column: recording.row_values[rows, j] for j, column in enumerate(recording.columns)}
    return pd.DataFrame(
        {
            TIMESTAMP: recording.row_stamp[rows],
            TARGET: names[recording.row_target[rows]],
            **values,
            "failure_probability": scores.probability,
            "anomaly_score": scores.anomaly,
        }
    )
