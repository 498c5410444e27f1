"""The daemon swaps in a newly activated bundle between cycles, and refuses a bad one."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
from helpers import plant_pickle, resign_manifest, train_tiny_bundle
from prometheus_client.parser import text_string_to_metric_families

from exporter.config import load_settings
from exporter.models.bundle import (
    CLASSIFIER_FILE,
    DETECTOR_FILE,
    PICKLED_DETECTOR,
    ModelBundle,
    load_bundle,
    save_bundle,
)
from exporter.models.registry import activate, resolve
from exporter.service.daemon import Daemon
from exporter.service.reload import ModelWatcher
from exporter.sources.simulate import SimulatedCluster, SimulateSource


def versioned(bundle: ModelBundle, version: str) -> ModelBundle:
    return dataclasses.replace(bundle, manifest=dataclasses.replace(bundle.manifest, version=version))


def sample(daemon: Daemon, name: str) -> list[tuple[dict, float]]:
    text = daemon.exposition.render()[0].decode()
    return [
        (s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    ]


@pytest.fixture
def models(tmp_path: Path) -> Path:
    bundle = train_tiny_bundle().bundle
    for version in ("v1", "v2"):
        save_bundle(versioned(bundle, version), tmp_path / version)
    activate(tmp_path, "v1")
    return tmp_path


@pytest.fixture
def daemon(models: Path) -> Daemon:
    serving = resolve(models)
    source = SimulateSource(SimulatedCluster(targets=5, seed=2), window=60)
    return Daemon(
        load_settings(None, environ={}), source, load_bundle(serving), watcher=ModelWatcher(models, serving)
    )


def link_active(models: Path, version: str) -> None:
    """Point ``active`` by hand, as ``ln -sfn`` would: ``activate`` refuses a bundle that cannot load,
    but the daemon must still refuse one that reaches it another way."""
    staging = models / ".active.by-hand"
    staging.symlink_to(version)
    staging.rename(models / "active")


def serving_version(daemon: Daemon) -> str:
    [(labels, value)] = sample(daemon, "failure_predictor_model_info")
    assert value == 1
    return labels["version"]


def load_errors(daemon: Daemon) -> float:
    return sample(daemon, "failure_predictor_model_load_errors_total")[0][1]


def test_newly_activated_bundle_serves_from_the_next_cycle(daemon: Daemon, models: Path) -> None:
    daemon.cycle()
    assert serving_version(daemon) == "v1"
    activate(models, "v2")
    daemon.cycle()
    assert serving_version(daemon) == "v2"
    assert daemon.state.snapshot is not None and daemon.state.snapshot.model.version == "v2"
    assert load_errors(daemon) == 0


def test_corrupt_bundle_is_refused_once_and_the_previous_keeps_serving(daemon: Daemon, models: Path) -> None:
    shutil.copytree(models / "v2", models / "v3")
    classifier = models / "v3" / CLASSIFIER_FILE
    data = bytearray(classifier.read_bytes())
    data[len(data) // 2] ^= 0xFF
    classifier.write_bytes(data)
    daemon.cycle()
    link_active(models, "v3")

    daemon.cycle()
    daemon.cycle()

    assert serving_version(daemon) == "v1"
    assert load_errors(daemon) == 1, "a refused bundle is counted once, not every cycle"
    assert daemon.readiness() == (True, "ok")
    activate(models, "v2")
    daemon.cycle()
    assert serving_version(daemon) == "v2"


def test_dangling_active_link_is_refused_and_counted(daemon: Daemon, models: Path) -> None:
    daemon.cycle()
    shutil.rmtree(models / "v2")
    (models / "active").unlink()
    (models / "active").symlink_to("v2")

    daemon.cycle()

    assert serving_version(daemon) == "v1"
    assert load_errors(daemon) == 1


def test_a_pickled_detector_is_refused_on_hot_reload_without_running_it(
    daemon: Daemon, models: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # The fault matrix's payload: a format-1 bundle whose detector.joblib runs a shell command
    # when unpickled, with a matching checksum. It must never be opened.
    marker = tmp_path_factory.mktemp("witness") / "pwned"
    shutil.copytree(models / "v2", models / "v3")
    (models / "v3" / DETECTOR_FILE).unlink()
    plant_pickle(models / "v3", PICKLED_DETECTOR, marker)
    resign_manifest(models / "v3", format_version=1)
    daemon.cycle()
    link_active(models, "v3")

    daemon.cycle()

    assert not marker.exists()
    assert serving_version(daemon) == "v1"
    assert load_errors(daemon) == 1
