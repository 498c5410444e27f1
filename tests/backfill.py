"""Backfill a real Prometheus with simulated history, through promtool's OpenMetrics import.

The simulator's four signals become gauges ``sim_<signal>{namespace,pod}`` and
its ground truth a 0/1 gauge ``sim_failed``, so a test can point the daemon's
configurable signal queries and failure definition at them and train through
the real HTTP API.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from exporter.sources.simulate import History

SIGNAL_QUERIES = {signal: f"sim_{signal}" for signal in ("cpu", "memory", "latency", "errors")}
FAILURE_QUERY = "sim_failed == 1"
Series = tuple[Mapping[str, str], np.ndarray]  # a label set and its value per step (NaN: none)


def write_openmetrics(
    history: History, path: Path, extra: Mapping[str, Sequence[Series]] | None = None
) -> None:
    """One gauge family per signal plus sim_failed; NaN samples are simply not written.
    ``extra`` adds gauge families of any labels: name -> (labels, values per step) pairs."""
    frame = history.frame
    stamps = [f"{t:.0f}" for t in frame.timestamps]
    with path.open("w") as out:
        for index, signal in enumerate(frame.signals):
            _family(out, f"sim_{signal}", frame.values[:, :, index], frame.targets, stamps)
        _family(out, "sim_failed", history.failed.astype(float), frame.targets, stamps)
        for name, series in (extra or {}).items():
            labels, values = zip(*series, strict=True)
            _family(out, name, np.array(values), labels, stamps)
        out.write("# EOF\n")


def _family(out, name: str, values: np.ndarray, targets, stamps: list[str]) -> None:
    out.write(f"# TYPE {name} gauge\n")
    for row, target in enumerate(targets):
        labels = "{" + ",".join(f'{name}="{value}"' for name, value in target.items()) + "}"
        series = values[row]
        out.writelines(
            f"{name}{labels} {value:.6g} {stamp}\n"
            for value, stamp in zip(series.tolist(), stamps, strict=True)
            if value == value
        )


def create_blocks(promtool: str, openmetrics: Path, data_dir: Path) -> None:
    """Write TSDB blocks into ``data_dir`` (before Prometheus starts on it)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [promtool, "tsdb", "create-blocks-from", "openmetrics", str(openmetrics), str(data_dir)],
        check=True,
        capture_output=True,
    )
