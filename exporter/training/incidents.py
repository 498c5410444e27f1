"""Incidents files: failures a team recorded by hand, as CSV or YAML.

CSV: a header with the target labels, ``start`` and optionally ``end``; YAML: a
list of mappings with the same keys. Times are ISO 8601 (UTC unless an offset is
given) or Unix seconds. Without an end, an incident lasts one step.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import yaml


class IncidentsError(Exception):
    """The incidents file cannot be used; the message names the file, row and field."""


@dataclass(frozen=True)
class Incident:
    labels: Mapping[str, str]
    start: float
    end: float


def load_incidents(path: Path, target_labels: Sequence[str], step: float) -> tuple[Incident, ...]:
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            rows = yaml.safe_load(path.read_text()) or []
        except yaml.YAMLError as exc:
            raise IncidentsError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
            raise IncidentsError(f"{path}: expected a list of mappings with {[*target_labels, 'start']}")
    else:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    return tuple(
        _incident(path, number, row, target_labels, step) for number, row in enumerate(rows, start=1)
    )


def _incident(path: Path, number: int, row: Mapping, target_labels: Iterable[str], step: float) -> Incident:
    where = f"{path}, incident {number}"
    labels = {}
    for label in target_labels:
        value = row.get(label)
        if value in (None, ""):
            raise IncidentsError(f"{where}: missing target label {label!r}")
        labels[label] = str(value)
    start = parse_time(row.get("start"), f"{where}, field 'start'")
    end_value = row.get("end")
    end = start + step if end_value in (None, "") else parse_time(end_value, f"{where}, field 'end'")
    if end <= start:
        raise IncidentsError(f"{where}: end must be after start")
    return Incident(labels=labels, start=start, end=end)


def parse_time(value: object, where: str) -> float:
    """Unix seconds from a number or an ISO 8601 string (naive times are UTC)."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    elif isinstance(value, str) and value.strip():
        text = value.strip()
        try:
            return float(text)
        except ValueError:
            pass
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise IncidentsError(f"{where}: {value!r} is not an ISO 8601 time or Unix seconds") from None
    else:
        raise IncidentsError(f"{where}: missing or empty")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
