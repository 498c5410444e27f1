"""Training on history read from a real Prometheus, backfilled with labelled incidents.

Four simulated days of 30 targets are written as OpenMetrics, turned into TSDB
blocks by promtool, and served by a real Prometheus; the train command reads
them back through the HTTP API with the signal queries and failure definition
pointed at those series.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from backfill import FAILURE_QUERY, SIGNAL_QUERIES, create_blocks, write_openmetrics
from servers import PrometheusServer, promtool_bin

from exporter.cli import main
from exporter.config import BOOTSTRAP_MODEL, AnomalyRefitSettings, RetrainSettings, load_settings
from exporter.models.bundle import ModelBundle, load_bundle, save_bundle
from exporter.models.registry import activate, list_versions, resolve
from exporter.sources.prometheus import plan_chunks
from exporter.sources.simulate import History, simulate_history
from exporter.training.dataset import SplitOptions, TrainingOptions
from exporter.training.history import HistoryReader
from exporter.training.refit import Refitter
from exporter.training.train import train_bundle

DAYS = 4


@pytest.fixture(scope="module")
def history() -> History:
    return simulate_history(targets=30, steps=1440 * DAYS, seed=5)


@pytest.fixture(scope="module")
def backfilled(history: History, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    workdir = tmp_path_factory.mktemp("backfilled")
    server = PrometheusServer(workdir)
    openmetrics = workdir / "history.om"
    write_openmetrics(history, openmetrics)
    create_blocks(promtool_bin(), openmetrics, server.data_path)
    openmetrics.unlink()
    with server:
        yield server


@pytest.fixture(scope="module")
def config(backfilled: PrometheusServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("config") / "config.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "prometheus": {"url": backfilled.url, "timeout": "30s"},
                "signals": SIGNAL_QUERIES,
                "failure": {"query": FAILURE_QUERY},
                "step": "60s",
                "lookback": "60m",
                "horizon": "30m",
            }
        )
    )
    return path


def span(history: History) -> list[str]:
    return ["--start", f"{history.frame.timestamps[0]:.0f}", "--end", f"{history.frame.timestamps[-1]:.0f}"]


def test_train_reads_prometheus_history_and_beats_both_baselines(
    config: Path, history: History, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = tmp_path / "models"
    code = main(
        [
            "train",
            "--config",
            str(config),
            *span(history),
            "--models-dir",
            str(models),
            "--activate",
            "--json",
        ]
    )
    report = json.loads(capsys.readouterr().out)

    assert code == 0
    assert report["failures"] >= 10, "the test period must hold enough failures to mean anything"
    for name, baseline in report["baselines"].items():
        assert report["pr_auc"] > baseline["pr_auc"], name
        assert report["event_recall"] >= baseline["event_recall"], name
    # At the threshold the report recommends for this model (chosen on its calibration period),
    # not at the shipped 0.35, which is the bootstrap's: 15 of the 19 failures, what the previous
    # features (54 per window) also warned at theirs on this history.
    assert report["at_supported_threshold"]["event_recall"] >= 0.78
    versions = list_versions(models)
    assert len(versions) == 1 and versions[0].active
    bundle = load_bundle(resolve(models))
    assert bundle.manifest.kind == "trained"
    assert bundle.manifest.signals == ("cpu", "memory", "latency", "errors")
    assert bundle.manifest.training["rows"]["test"] > 0


def test_evaluate_rescores_an_existing_bundle_on_another_period(
    config: Path, history: History, capsys: pytest.CaptureFixture[str]
) -> None:
    later_half = [
        "--start",
        f"{history.frame.timestamps[1440 * 2]:.0f}",
        "--end",
        f"{history.frame.timestamps[-1]:.0f}",
    ]
    code = main(["evaluate", str(BOOTSTRAP_MODEL), "--config", str(config), *later_half, "--json"])
    report = json.loads(capsys.readouterr().out)

    assert code == 0
    assert report["period"]["rows"] > 30 * 1400
    assert report["roc_auc"] > 0.8
    assert set(report["baselines"]) == {"static_threshold", "linear_extrapolation"}


def test_chunk_boundaries_do_not_change_the_rows(config: Path, history: History) -> None:
    settings = load_settings(config)
    options = TrainingOptions(stride=7, partial_history_share=0.0)  # blanking draws differ per chunk
    start, end = history.frame.timestamps[0], history.frame.timestamps[1439]
    whole = HistoryReader(settings, options, chunk_steps=1440).read(start, end)
    pieces = HistoryReader(settings, options, chunk_steps=97).read(start, end)

    order_whole = np.lexsort((whole.time, whole.target))
    order_pieces = np.lexsort((pieces.time, pieces.target))
    np.testing.assert_array_equal(whole.time[order_whole], pieces.time[order_pieces])
    np.testing.assert_array_equal(whole.y[order_whole], pieces.y[order_pieces])
    assert np.allclose(whole.X[order_whole], pieces.X[order_pieces], equal_nan=True, atol=1e-6)
    assert whole.y.sum() > 0


def test_cached_chunks_let_an_interrupted_run_finish_without_prometheus(
    config: Path, history: History, backfilled: PrometheusServer, tmp_path: Path
) -> None:
    settings = load_settings(config)
    options = TrainingOptions(stride=5)
    start, end = history.frame.timestamps[0], history.frame.timestamps[1439]
    first = HistoryReader(settings, options, chunk_steps=480, cache_dir=tmp_path).read(start, end)
    assert len(list(tmp_path.glob("rows-*.npz"))) == 3

    backfilled.stop()
    try:
        again = HistoryReader(settings, options, chunk_steps=480, cache_dir=tmp_path).read(start, end)
    finally:
        backfilled.start()
    np.testing.assert_array_equal(first.X, again.X)
    np.testing.assert_array_equal(first.y, again.y)
    assert first.y.sum() > 0


def test_chunks_never_exceed_the_point_limit() -> None:
    chunks = plan_chunks(steps=30_000, chunk_steps=10_941, window_steps=60)
    assert [c.first for c in chunks] == [0, 10_941, 21_882]
    assert chunks[-1].last == 29_999
    with pytest.raises(ValueError, match="11000 points"):
        plan_chunks(steps=30_000, chunk_steps=10_942, window_steps=60)


def test_row_cap_keeps_memory_bounded_and_the_base_rate(config: Path, history: History) -> None:
    settings = load_settings(config)
    options = TrainingOptions(stride=1, partial_history_share=0.0)
    start, end = history.frame.timestamps[0], history.frame.timestamps[2879]
    everything = HistoryReader(settings, options, chunk_steps=720).read(start, end)
    capped = HistoryReader(settings, options, chunk_steps=720, max_rows=8000).read(start, end)

    assert len(capped.y) == 8000 < len(everything.y)
    assert abs(capped.y.mean() - everything.y.mean()) < 0.01
    assert capped.time.min() < start + 86_400 and capped.time.max() > end - 86_400, "every chunk contributes"


def refitter_for(
    config: Path, history: History, models: Path, serving: ModelBundle, **sections: dict
) -> Refitter:
    settings = load_settings(config).model_copy(
        update={
            "anomaly": AnomalyRefitSettings(**sections.get("anomaly", {})),
            "retrain": RetrainSettings(**sections.get("retrain", {})),
        }
    )
    return Refitter(settings, models, lambda: serving, clock=lambda: float(history.frame.timestamps[-1]))


def published(models: Path, bundle: ModelBundle, version: str) -> ModelBundle:
    save_bundle(
        dataclasses.replace(bundle, manifest=dataclasses.replace(bundle.manifest, version=version)),
        models / version,
    )
    activate(models, version)
    return load_bundle(models / version)


def test_anomaly_refit_activates_a_new_detector_beside_the_same_classifier(
    config: Path, history: History, tmp_path: Path
) -> None:
    serving = published(tmp_path, load_bundle(BOOTSTRAP_MODEL), "v1")
    refitter = refitter_for(config, history, tmp_path, serving, anomaly={"fit_window": 2 * 86400})

    version = refitter.refit_anomaly()

    assert version is not None and resolve(tmp_path).name == version
    refitted = load_bundle(resolve(tmp_path))
    assert refitted.manifest.files["classifier.ubj"] == serving.manifest.files["classifier.ubj"]
    assert refitted.manifest.files["detector.npz"] != serving.manifest.files["detector.npz"]
    assert refitted.manifest.training["anomaly_refit"]["rows"] > 1000


def test_retrain_replaces_a_worse_model_but_not_a_better_one(
    config: Path, history: History, tmp_path: Path
) -> None:
    bootstrap = load_bundle(BOOTSTRAP_MODEL)
    slope, intercept = bootstrap.manifest.calibration
    # An inverted calibration ranks every target backwards.
    inverted = dataclasses.replace(bootstrap.manifest, calibration=(-slope, intercept))
    worse = published(tmp_path, dataclasses.replace(bootstrap, manifest=inverted), "worse")

    outcome = refitter_for(config, history, tmp_path, worse, retrain={"window": DAYS * 86400}).retrain()
    assert outcome is not None and outcome.activated, outcome
    assert resolve(tmp_path).name == outcome.version

    # A model that has seen nearly all of this history scores better on the candidate's test rows.
    settings = load_settings(config)
    everything = HistoryReader(settings, TrainingOptions(stride=2)).read(
        history.frame.timestamps[0], history.frame.timestamps[-1]
    )
    seen_it = train_bundle(
        everything,
        tuple(settings.queries),
        60.0,
        TrainingOptions(split=SplitOptions(fractions=(0.9, 0.05))),
        "trained",
        {},
    )
    better = published(tmp_path, seen_it, "better")

    outcome = refitter_for(config, history, tmp_path, better, retrain={"window": DAYS * 86400}).retrain()
    assert outcome is not None and not outcome.activated, outcome
    assert outcome.serving_pr_auc > outcome.candidate_pr_auc
    assert resolve(tmp_path).name == "better"
