"""The shipped bundle on healthy pods with every subset of the four signals missing
(benchmarks/healthy.py): missing is not failing."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from exporter.config import BOOTSTRAP_MODEL
from exporter.models.bundle import load_bundle

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "healthy.py"


@pytest.fixture(scope="module")
def suite():
    spec = importlib.util.spec_from_file_location("benchmarks_healthy", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def result(suite):
    return suite.score_healthy(load_bundle(BOOTSTRAP_MODEL))


def test_healthy_pods_stay_low_whichever_signals_they_lack(suite, result):
    assert len(result.names) == 45  # 16 subsets x 3 shapes, minus the three with no signal
    peaks = dict(zip(result.names, result.probability.max(axis=1), strict=True))
    medians = dict(zip(result.names, np.median(result.probability, axis=1), strict=True))
    assert max(peaks.values()) < suite.MAX_BAR, sorted(peaks.items(), key=lambda kv: -kv[1])[:5]
    assert max(medians.values()) < suite.MEDIAN_BAR, sorted(medians.items(), key=lambda kv: -kv[1])[:5]


def test_a_flat_pod_scores_about_the_same_with_or_without_its_http_signals(result):
    score = dict(zip(result.names, np.median(result.probability, axis=1), strict=True))
    full = score["flat/cpu+memory+latency+errors"]
    for lacking in ("flat/cpu+memory+latency", "flat/cpu+memory+errors", "flat/cpu+memory"):
        assert abs(score[lacking] - full) < 0.02, (lacking, score[lacking], full)


def test_pods_with_no_signal_are_not_scored(result):
    assert result.unscored == ("flat/none", "noisy/none", "diurnal/none")
