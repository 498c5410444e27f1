"""One version: ``exporter.__version__`` is what pyproject, ``--version``, the image label, the chart
and ``failure_predictor_build_info`` report."""

from __future__ import annotations

import platform
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import requests
import yaml
from apiserver import FixedSource, app_server, history_frame, serving
from helpers import Tiny
from prometheus_client.parser import text_string_to_metric_families

from exporter import __version__
from exporter.config import Settings
from exporter.service.daemon import Daemon

REPO = Path(__file__).resolve().parent.parent


def test_version_is_a_release_number():
    assert re.fullmatch(r"\d+\.\d+\.\d+([.-]?(a|b|rc|dev)\d+)?", __version__)


def test_pyproject_takes_its_version_from_the_package():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in project["project"]
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "exporter.__version__"}


def test_version_flag_prints_the_package_version():
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "--version"], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == f"failure-predictor {__version__}"


def test_chart_and_image_label_carry_the_package_version():
    chart = yaml.safe_load((REPO / "helm" / "failure-predictor" / "Chart.yaml").read_text())
    assert chart["appVersion"] == __version__
    assert chart["version"] == __version__
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.findall(r"^ARG VERSION=(\S+)$", dockerfile, re.MULTILINE) == [__version__]
    changelog = (REPO / "CHANGELOG.md").read_text()
    assert re.search(rf"^## \[?{re.escape(__version__)}\]?", changelog, re.MULTILINE), "CHANGELOG entry"


def test_build_info_on_metrics_names_the_package_python_and_model_libraries(tiny: Tiny):
    daemon = Daemon(Settings(), FixedSource(history_frame(tiny)), tiny.bundle)
    with serving(app_server(daemon)) as base:
        text = requests.get(f"{base}/metrics", timeout=5).text
    (sample,) = [
        s
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "failure_predictor_build_info"
    ]
    assert sample.value == 1
    assert sample.labels["version"] == __version__
    assert sample.labels["python_version"] == platform.python_version()
    for library in ("numpy", "scikit_learn", "xgboost", "pyod"):
        assert re.fullmatch(r"\d+\.\d+.*", sample.labels[f"{library}_version"]), library
