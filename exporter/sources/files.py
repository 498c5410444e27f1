"""Recorded series from CSV files: the source for backtests on recorded or public data.

Two layouts, told apart by whether a file has a ``target`` column:

- one CSV per target: ``timestamp`` plus one column per signal; the file stem names the target;
- one long CSV: ``timestamp,target,<signals>``, one row per target and time.

``columns`` maps file columns to signals (a NAB file's ``value`` to ``cpu``, say); without it
every other column is a signal of its own name. Signals a file does not have are simply
absent from its Frame, as a disabled signal is in the daemon. Timestamps are ISO 8601 (read
as UTC when they carry no offset) or Unix seconds.

Each file becomes one Recording: a Frame on a regular grid of ``step`` seconds (the median
spacing of the file when not given) with NaN where nothing was recorded, plus the cell every
input row landed in, so per-row results can be written back in the file's own order and
timestamp format. Bad input is refused with the file, row and column named.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from exporter.frame import Frame

TIMESTAMP = "timestamp"
TARGET = "target"
MAX_CELLS = 25_000_000  # targets x steps x signals of one file's Frame: 200 MB of float64


class FilesError(Exception):
    """A recording that cannot be read; the message names the file and, where it can, row and column."""


@dataclass(frozen=True)
class Recording:
    """One input file: its Frame, and where each of its rows landed in it.

    Input row ``i`` is the cell ``(row_target[i], row_slot[i])`` of ``frame``, recorded at
    ``row_time[i]`` (Unix seconds; its text in the file is ``row_stamp[i]``), with its own
    samples ``row_values[i, signal]``. A cell that several rows fall into (repeated or
    out-of-order timestamps, or a step coarser than the data) holds the newest of them, the
    last in the file among equal times; every row still keeps its own samples.
    ``columns[j]`` is the file column that signal ``frame.signals[j]`` was read from.
    """

    path: Path
    frame: Frame
    columns: tuple[str, ...]
    row_target: np.ndarray
    row_slot: np.ndarray
    row_time: np.ndarray
    row_values: np.ndarray
    row_stamp: np.ndarray

    def __len__(self) -> int:
        return len(self.row_time)


class FilesSource:
    """Recordings from CSV files and directories of them (their ``*.csv``), read one file at a time."""

    def __init__(
        self,
        paths: Iterable[str | Path],
        columns: Mapping[str, str] | None = None,
        step: float | None = None,
    ) -> None:
        if step is not None and step <= 0:
            raise FilesError(f"step must be positive seconds, got {step}")
        self.columns = dict(columns or {})
        signals = list(self.columns.values())
        clashes = sorted({s for s in signals if signals.count(s) > 1})
        if clashes:
            raise FilesError(f"several columns are mapped to the same signal {clashes}: {self.columns}")
        self.step = step
        self.paths = tuple(_expand(paths))

    def recordings(self) -> Iterator[Recording]:
        """Each file's Recording in turn, so only one file is in memory at a time."""
        for path in self.paths:
            yield read_recording(path, self.columns, self.step)

    def count_rows(self) -> int:
        """Data rows in all files (non-blank lines after the header), for progress totals."""
        total = 0
        for path in self.paths:
            with path.open("rb") as handle:
                total += max(sum(1 for line in handle if line.strip()) - 1, 0)
        return total


def _expand(paths: Iterable[str | Path]) -> Iterator[Path]:
    given = [Path(p) for p in paths]
    if not given:
        raise FilesError("no input files given")
    for path in given:
        if path.is_dir():
            found = sorted(p for p in path.glob("*.csv") if p.is_file())
            if not found:
                raise FilesError(f"{path}: directory holds no *.csv files")
            yield from found
        elif path.is_file():
            yield path
        else:
            raise FilesError(f"{path}: no such file or directory")


def read_recording(
    path: Path, columns: Mapping[str, str] | None = None, step: float | None = None
) -> Recording:
    """Read and align one CSV file (see the module docstring for layouts and rules)."""
    table = _read_table(path)
    names = list(table.columns)
    if TIMESTAMP not in names:
        raise FilesError(f"{path}: no {TIMESTAMP!r} column (columns: {', '.join(names)})")
    long = TARGET in names
    if columns:
        unknown = [c for c in columns if c not in names]
        if unknown:
            raise FilesError(
                f"{path}: mapped column(s) {unknown} not in the file (columns: {', '.join(names)})"
            )
        mapping = dict(columns)
    else:
        mapping = {c: c for c in names if c not in (TIMESTAMP, TARGET)}
        if not mapping:
            raise FilesError(f"{path}: no value columns besides {TIMESTAMP!r}")
    stamps = table[TIMESTAMP]
    times = _parse_times(path, stamps)
    values = np.column_stack([_parse_values(path, table[c], c) for c in mapping])
    if long:
        labels = table[TARGET]
        if labels.isna().any():
            raise FilesError(f"{path}, row {_first(labels.isna())}, column {TARGET!r}: empty target")
        codes, targets = pd.factorize(labels.str.strip(), sort=True)
    else:
        codes, targets = np.zeros(len(table), np.int64), [path.stem]
    step = step or _median_step(path, times, codes)
    origin = times.min()
    slots = np.rint((times - origin) / step).astype(np.int64)
    steps = int(slots.max()) + 1
    cells = len(targets) * steps * len(mapping)
    if cells > MAX_CELLS:
        raise FilesError(
            f"{path}: {len(targets)} target(s) x {steps:,} steps of {step:g}s x {len(mapping)} signal(s) "
            f"is {cells:,} values, more than {MAX_CELLS:,}; give a coarser step or split the file"
        )
    grid = np.full((len(targets), steps, len(mapping)), np.nan)
    newest = _newest_per_cell(codes * steps + slots, times)
    grid[codes[newest], slots[newest]] = values[newest]
    frame = Frame(
        values=grid,
        targets=tuple({TARGET: str(name)} for name in targets),
        timestamps=origin + step * np.arange(steps),
        signals=tuple(mapping.values()),
    )
    return Recording(
        path=path,
        frame=frame,
        columns=tuple(mapping),
        row_target=codes.astype(np.int64),
        row_slot=slots,
        row_time=times,
        row_values=values,
        row_stamp=stamps.to_numpy(str),
    )


def _read_table(path: Path) -> pd.DataFrame:
    try:
        table = pd.read_csv(path, dtype=str, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise FilesError(f"{path}: empty file; expected a header with a {TIMESTAMP!r} column") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        raise FilesError(f"{path}: cannot be read as CSV: {exc}") from None
    table.columns = [str(c).strip() for c in table.columns]
    if len(table) == 0:
        raise FilesError(f"{path}: no data rows")
    return table


def _first(mask: pd.Series | np.ndarray) -> int:
    """1-based data row number (the header is not a row) of the first True."""
    return int(np.argmax(np.asarray(mask))) + 1


def _parse_times(path: Path, text: pd.Series) -> np.ndarray:
    if text.isna().any():
        raise FilesError(f"{path}, row {_first(text.isna())}, column {TIMESTAMP!r}: empty timestamp")
    text = text.str.strip()
    numeric = pd.to_numeric(text, errors="coerce")
    if numeric.notna().all():
        return numeric.to_numpy(float)
    parsed = pd.to_datetime(text, utc=True, format="ISO8601", errors="coerce")
    bad = parsed.isna()
    if bad.any():
        row = _first(bad)
        raise FilesError(
            f"{path}, row {row}, column {TIMESTAMP!r}: cannot read {text.iloc[row - 1]!r} as a time "
            "(expected ISO 8601 like 2024-05-01 12:00:00 or Unix seconds, the same form in every row)"
        )
    return ((parsed - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)).to_numpy(float)


def _parse_values(path: Path, text: pd.Series, column: str) -> np.ndarray:
    numbers = pd.to_numeric(text.str.strip(), errors="coerce")
    bad = text.notna() & numbers.isna()
    if bad.any():
        row = _first(bad)
        raise FilesError(f"{path}, row {row}, column {column!r}: {text.iloc[row - 1]!r} is not a number")
    values = numbers.to_numpy(float)
    return np.where(np.isfinite(values), values, np.nan)


def _median_step(path: Path, times: np.ndarray, codes: np.ndarray) -> float:
    """Median spacing between distinct consecutive timestamps of each target."""
    order = np.lexsort((times, codes))
    gaps = np.diff(times[order])
    same_target = np.diff(codes[order]) == 0
    gaps = gaps[same_target & (gaps > 0)]
    if not len(gaps):
        raise FilesError(f"{path}: fewer than two distinct timestamps per target; give the step explicitly")
    return float(np.median(gaps))


def _newest_per_cell(cells: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Row index of the newest row in each cell, the last in file order among equal times."""
    order = np.lexsort((np.arange(len(cells)), times, cells))
    last = np.append(np.diff(cells[order]) != 0, True)
    return order[last]
