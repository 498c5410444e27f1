"""Incidents files and training time ranges: the inputs people type by hand."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.training.incidents import IncidentsError, load_incidents
from exporter.training.workflow import time_range

LABELS = ("namespace", "pod")


def test_csv_incidents_with_and_without_end(tmp_path: Path) -> None:
    path = tmp_path / "incidents.csv"
    path.write_text(
        "namespace,pod,start,end\n"
        "shop,cart-1,2026-11-02T14:05:00Z,2026-11-02T14:20:00Z\n"
        "shop,cart-2,1793000000,\n"
    )
    first, second = load_incidents(path, LABELS, step=60)
    assert dict(first.labels) == {"namespace": "shop", "pod": "cart-1"}
    assert first.end - first.start == 15 * 60
    assert (second.start, second.end) == (1793000000.0, 1793000060.0)


def test_yaml_incidents_naive_times_are_utc(tmp_path: Path) -> None:
    path = tmp_path / "incidents.yaml"
    path.write_text("- {namespace: shop, pod: cart-1, start: '2026-11-02 14:05:00'}\n")
    [incident] = load_incidents(path, LABELS, step=30)
    assert incident.start == 1793628300.0
    assert incident.end == incident.start + 30


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("namespace,start\nshop,2026-11-02T14:05:00Z\n", "incident 1: missing target label 'pod'"),
        ("namespace,pod,start\nshop,cart,yesterday\n", "incident 1, field 'start': 'yesterday' is not"),
        ("namespace,pod,start,end\nshop,cart,100,50\n", "incident 1: end must be after start"),
    ],
)
def test_bad_incidents_name_the_row_and_field(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "incidents.csv"
    path.write_text(content)
    with pytest.raises(IncidentsError, match=message):
        load_incidents(path, LABELS, step=60)


def test_yaml_that_is_not_a_list_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "incidents.yml"
    path.write_text("namespace: shop\n")
    with pytest.raises(IncidentsError, match="expected a list of mappings"):
        load_incidents(path, LABELS, step=60)


def test_time_range_from_since_or_start_and_end() -> None:
    assert time_range("2d", None, None, now=1_000_000.0).start == 1_000_000.0 - 2 * 86400
    span = time_range(None, "2026-11-01T00:00:00Z", "2026-11-02T00:00:00Z")
    assert span.end - span.start == 86400
    with pytest.raises(ValueError, match="not both"):
        time_range("1d", "2026-11-01T00:00:00Z", None)
    with pytest.raises(ValueError, match="start must be before end"):
        time_range(None, "2026-11-02T00:00:00Z", "2026-11-01T00:00:00Z")
