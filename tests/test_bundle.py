"""The model bundle: save/load round trip, corruption caught at load, and what the
scores mean (calibrated probabilities, exact SHAP sums, bounded anomaly scores)."""

from __future__ import annotations

import dataclasses
import json
import logging
import pickle
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb
from helpers import Payload, Tiny, booster_of, plant_pickle, resign_manifest

from exporter import cli
from exporter.features import Features, window_features
from exporter.models.bundle import (
    CLASSIFIER_FILE,
    DETECTOR_FILE,
    MANIFEST,
    PICKLED_DETECTOR,
    BundleError,
    ModelBundle,
    load_bundle,
    manifest_digest,
    save_bundle,
    sha256,
)


@pytest.fixture(scope="module")
def saved(tiny: Tiny, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pristine saved bundle; tests that damage one work on a copy (see ``copy``)."""
    return save_bundle(tiny.bundle, tmp_path_factory.mktemp("saved") / "bundle")


@pytest.fixture
def copy(saved: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(saved, tmp_path / "bundle"))


@pytest.fixture
def rows(tiny: Tiny) -> Features:
    """Every 7th training row: healthy and failing windows, some with blanked history."""
    return Features(values=tiny.dataset.X[::7].astype(np.float64), names=tiny.dataset.names)


def flip_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_round_trip_gives_identical_scores(tiny, saved, rows):
    loaded = load_bundle(saved)

    before, after = tiny.bundle.score(rows), loaded.score(rows)
    np.testing.assert_array_equal(after.probability, before.probability)
    np.testing.assert_array_equal(after.anomaly, before.anomaly)
    np.testing.assert_array_equal(after.contributions, before.contributions)
    expected = dataclasses.replace(
        tiny.bundle.manifest, files=loaded.manifest.files, digest=loaded.manifest.digest
    )
    # Through JSON, where NaN metrics (nothing warned: no precision) compare equal.
    assert json.dumps(dataclasses.asdict(loaded.manifest), sort_keys=True, default=float) == json.dumps(
        dataclasses.asdict(expected), sort_keys=True, default=float
    )
    assert set(loaded.manifest.files) == {CLASSIFIER_FILE, DETECTOR_FILE}


@pytest.mark.parametrize("name", [CLASSIFIER_FILE, DETECTOR_FILE])
def test_one_changed_byte_fails_the_checksum(copy, name):
    flip_one_byte(copy / name)

    with pytest.raises(BundleError, match=rf"{name}: checksum mismatch"):
        load_bundle(copy)


@pytest.mark.parametrize("name", [CLASSIFIER_FILE, DETECTOR_FILE])
def test_missing_model_file_is_named(copy, name):
    (copy / name).unlink()

    with pytest.raises(BundleError, match=rf"{name}: missing from the bundle"):
        load_bundle(copy)


def test_missing_manifest_asks_whether_this_is_a_bundle(copy):
    (copy / MANIFEST).unlink()

    with pytest.raises(BundleError, match=r"no manifest\.json; is this a model bundle directory\?"):
        load_bundle(copy)


def test_directory_that_does_not_exist_is_a_bundle_error(tmp_path):
    with pytest.raises(BundleError, match=r"no manifest\.json"):
        load_bundle(tmp_path / "nothing-here")


def test_garbage_manifest_is_unreadable(copy):
    (copy / MANIFEST).write_text("{not json")

    with pytest.raises(BundleError, match=r"manifest\.json: unreadable manifest"):
        load_bundle(copy)


def test_manifest_that_is_not_an_object_is_rejected(copy):
    (copy / MANIFEST).write_text("[1, 2, 3]")

    with pytest.raises(BundleError, match="manifest must be a JSON object"):
        load_bundle(copy)


@pytest.mark.parametrize("version", [3, 0, None, "2"])
def test_unsupported_format_version_is_rejected(copy, version):
    resign_manifest(copy, format_version=version)

    with pytest.raises(BundleError, match=rf"format_version {version!r} is not supported \(expected 2\)"):
        load_bundle(copy)


def test_manifest_with_a_different_feature_list_is_rejected(copy, tiny):
    features = [name if name != "cpu_mean" else "cpu_trimmed_mean" for name in tiny.dataset.names]
    resign_manifest(copy, features=features)

    with pytest.raises(BundleError) as error:
        load_bundle(copy)
    message = str(error.value)
    assert "feature list does not match" in message
    assert "'cpu_trimmed_mean'" in message  # in the bundle, not computed here
    assert "'cpu_mean'" in message  # computed here, not in the bundle
    assert "Retrain" in message


def test_manifest_missing_a_field_is_rejected(copy):
    manifest = json.loads((copy / MANIFEST).read_text())
    del manifest["calibration"]
    (copy / MANIFEST).write_text(json.dumps(manifest | {"digest": manifest_digest(manifest)}))

    with pytest.raises(BundleError, match="manifest fields are wrong"):
        load_bundle(copy)


def test_checksum_that_matches_a_foreign_file_still_fails_on_load(copy):
    # Right checksum, wrong content: a valid manifest over a file that is not a model.
    (copy / CLASSIFIER_FILE).write_bytes(b"not an xgboost model")
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["files"][CLASSIFIER_FILE] = sha256(copy / CLASSIFIER_FILE)
    resign_manifest(copy, files=manifest["files"])

    with pytest.raises(BundleError, match=r"classifier\.ubj: not an XGBoost model file \(UBJSON\)"):
        load_bundle(copy)


def _self_referencing_root(model: bytes) -> bytes:
    """The first tree's root made its own left child: a walk that trusted it would never end."""
    header = model.index(b"left_children[$l#") + len(b"left_children[$l#")
    data = header + 1 + {b"i": 1, b"U": 1, b"I": 2, b"l": 4, b"L": 8}[model[header : header + 1]]
    return model[:data] + (0).to_bytes(4, "big") + model[data + 4 :]


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda model: model[: len(model) // 2], "not an XGBoost model file"),
        (lambda model: b"[" * 100_000, "nested deeper than 64"),
        (lambda model: b"[#L" + (1 << 62).to_bytes(8, "big") + b"Z", "more than the bytes left"),
        (lambda model: b"[$Z#L" + (1 << 62).to_bytes(8, "big"), "more than the bytes left"),
        (lambda model: b"{L" + (1 << 62).to_bytes(8, "big"), "the data ends first"),
        (_self_referencing_root, "children do not follow their parent"),
    ],
    ids=["truncated", "deep", "huge-count", "huge-null-count", "huge-key", "cycle"],
)
def test_a_hostile_classifier_file_is_refused_without_hanging(copy, damage, message):
    path = copy / CLASSIFIER_FILE
    path.write_bytes(damage(path.read_bytes()))
    manifest = json.loads((copy / MANIFEST).read_text())
    resign_manifest(copy, files=manifest["files"] | {CLASSIFIER_FILE: sha256(path)})

    with pytest.raises(BundleError, match=rf"classifier\.ubj: .*{message}"):
        load_bundle(copy)


@pytest.mark.parametrize(
    "field, value",
    [("calibration", [5.0, 3.0]), ("version", "someone-else"), ("reference", {}), ("horizon_seconds", 60.0)],
)
def test_an_edited_manifest_field_fails_the_digest(copy, field, value):
    path = copy / MANIFEST
    path.write_text(json.dumps(json.loads(path.read_text()) | {field: value}))

    with pytest.raises(BundleError, match=r"manifest\.json: digest mismatch"):
        load_bundle(copy)


def test_a_format_1_bundle_with_a_pickle_payload_is_refused_without_running_it(copy, tmp_path):
    marker = tmp_path / "pwned"
    (copy / DETECTOR_FILE).unlink()
    plant_pickle(copy, PICKLED_DETECTOR, marker)
    manifest = json.loads((copy / MANIFEST).read_text())
    del manifest["files"][DETECTOR_FILE]
    resign_manifest(copy, format_version=1, files=manifest["files"])
    assert not marker.exists()

    with pytest.raises(BundleError, match=r"format_version 1 bundles keep the anomaly detector as a pickle"):
        load_bundle(copy)
    with pytest.raises(BundleError, match="Retrain the model"):
        load_bundle(copy)
    assert not marker.exists()
    pickle.loads((copy / PICKLED_DETECTOR).read_bytes())  # the payload works: a fair witness
    assert marker.exists()


def test_a_pickle_in_place_of_the_detector_arrays_is_refused_without_running_it(copy, tmp_path):
    marker = tmp_path / "pwned"
    plant_pickle(copy, DETECTOR_FILE, marker)

    with pytest.raises(BundleError, match=r"detector\.npz: not an anomaly detector"):
        load_bundle(copy)
    assert not marker.exists()


def test_an_object_array_inside_the_detector_file_is_refused_without_running_it(copy, tmp_path):
    marker = tmp_path / "pwned"
    with np.load(copy / DETECTOR_FILE) as arrays:
        contents = dict(arrays)
    contents["fill"] = np.array([Payload(marker)], dtype=object)
    with (copy / DETECTOR_FILE).open("wb") as handle:
        np.savez(handle, **contents)
    manifest = json.loads((copy / MANIFEST).read_text())
    resign_manifest(copy, files=manifest["files"] | {DETECTOR_FILE: sha256(copy / DETECTOR_FILE)})

    with pytest.raises(BundleError, match=r"detector\.npz: not an anomaly detector: .*allow_pickle"):
        load_bundle(copy)
    assert not marker.exists()


@pytest.mark.parametrize(
    "field, damage",
    [
        ("forest_left", lambda a: np.where(a > 0, 0, a)),  # children pointing back: a walk that never ends
        ("forest_feature", lambda a: a + 1000),  # a column the rows do not have
        ("fill", lambda a: a[:-1]),  # imputation for one feature too few
        ("forest_threshold", lambda a: np.full_like(a, np.nan)),
    ],
)
def test_detector_arrays_that_are_not_a_forest_are_refused(copy, field, damage):
    with np.load(copy / DETECTOR_FILE) as arrays:
        contents = dict(arrays)
    contents[field] = damage(contents[field])
    with (copy / DETECTOR_FILE).open("wb") as handle:
        np.savez(handle, **contents)
    manifest = json.loads((copy / MANIFEST).read_text())
    resign_manifest(copy, files=manifest["files"] | {DETECTOR_FILE: sha256(copy / DETECTOR_FILE)})

    with pytest.raises(BundleError, match=r"detector\.npz: not an anomaly detector"):
        load_bundle(copy)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """``run`` configures the root logger for a daemon; put pytest's handlers back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("restore_logging")
def test_run_with_a_corrupt_bundle_exits_before_serving(copy, tmp_path, capsys, monkeypatch):
    flip_one_byte(copy / DETECTOR_FILE)
    config = tmp_path / "config.yaml"
    config.write_text("listen:\n  port: 1\n")
    monkeypatch.setenv("FAILURE_PREDICTOR_MODEL__PATH", str(copy))

    def must_not_start(*args: object, **kwargs: object) -> None:
        raise AssertionError("a server was started with a corrupt bundle")

    monkeypatch.setattr(cli, "make_server", must_not_start)
    monkeypatch.setattr(cli, "Daemon", must_not_start)

    code = cli.main(["run", "--config", str(config)])

    err = capsys.readouterr().err
    assert code == 2
    assert "error: cannot load model bundle" in err
    assert f"{DETECTOR_FILE}: checksum mismatch" in err


def test_saving_over_an_existing_bundle_replaces_it(tiny, tmp_path):
    target = tmp_path / "bundle"
    save_bundle(tiny.bundle, target)
    (target / "leftover.txt").write_text("from the old bundle")
    second = dataclasses.replace(
        tiny.bundle, manifest=dataclasses.replace(tiny.bundle.manifest, version="second")
    )

    save_bundle(second, target)

    assert load_bundle(target).manifest.version == "second"
    assert not (target / "leftover.txt").exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["bundle"]  # no staging or retired dirs


def test_failed_save_leaves_no_temp_dir_and_keeps_the_old_bundle(tiny, saved, tmp_path):
    target = Path(shutil.copytree(saved, tmp_path / "bundle"))
    broken = ModelBundle(
        manifest=tiny.bundle.manifest, classifier_model=object(), detector=tiny.bundle.detector
    )

    with pytest.raises(TypeError):
        save_bundle(broken, target)

    assert sorted(path.name for path in tmp_path.iterdir()) == ["bundle"]
    assert load_bundle(target).manifest.version == tiny.bundle.manifest.version


def test_probabilities_are_in_the_unit_interval(tiny, rows):
    probability = tiny.bundle.score(rows).probability

    assert np.isfinite(probability).all()
    assert ((probability >= 0) & (probability <= 1)).all()
    assert probability.min() < 0.2 < 0.8 < probability.max()  # it does separate something


def test_calibration_is_monotone_in_the_margin(tiny, rows):
    bundle = tiny.bundle

    assert np.all(np.diff(bundle.calibrate(np.linspace(-15, 15, 301))) > 0)
    margin = bundle.explainer.margin(rows.values)
    order = np.argsort(margin, kind="stable")
    assert np.all(np.diff(bundle.predict_proba(rows.values)[order]) >= 0)


def test_shap_contributions_with_the_bias_sum_to_the_margin(tiny, rows):
    scores = tiny.bundle.score(rows)

    assert scores.contributions.shape == (len(rows.values), len(rows.names) + 1)
    margin = booster_of(tiny.bundle).predict(xgb.DMatrix(rows.values), output_margin=True)

    np.testing.assert_allclose(scores.contributions.sum(axis=1), margin, rtol=1e-4, atol=1e-4)


def test_signal_contributions_regroup_every_feature(tiny, rows):
    scores = tiny.bundle.score(rows)

    assert scores.signal_contributions.shape == (len(rows.values), len(tiny.bundle.manifest.signals))
    np.testing.assert_allclose(
        scores.signal_contributions.sum(axis=1),
        scores.contributions[:, :-1].sum(axis=1),
        rtol=1e-5,
        atol=1e-5,
    )


def test_anomaly_scores_are_in_the_unit_interval(tiny, rows):
    anomaly = tiny.bundle.score(rows).anomaly

    assert ((anomaly >= 0) & (anomaly <= 1)).all()


def test_extreme_window_is_more_anomalous_than_a_typical_one(tiny):
    frame = tiny.history.frame
    healthy_rows = tiny.dataset.X[tiny.dataset.y == 0].astype(np.float64)
    median = Features(values=np.nanmedian(healthy_rows, axis=0)[None], names=tiny.dataset.names)
    extreme = frame.values[:1, -60:].copy()
    extreme[:, :, frame.signals.index("memory")] = 1.0
    extreme[:, :, frame.signals.index("errors")] = 0.5

    typical_score = tiny.bundle.score(median).anomaly[0]
    extreme_score = tiny.bundle.score(window_features(extreme, frame.signals)).anomaly[0]

    assert extreme_score > typical_score
    assert extreme_score > 0.9


def test_scoring_copes_with_rows_missing_a_whole_signal(tiny, rows):
    values = rows.values.copy()
    values[:, [i for i, name in enumerate(rows.names) if name.startswith("latency_")]] = np.nan

    scores = tiny.bundle.score(Features(values=values, names=rows.names))

    assert np.isfinite(scores.probability).all()
    assert np.isfinite(scores.anomaly).all()


def test_features_the_model_does_not_know_are_ignored(tiny, rows):
    extra = Features(
        values=np.column_stack([rows.values, np.ones(len(rows.values))]), names=(*rows.names, "extra")
    )

    np.testing.assert_array_equal(tiny.bundle.score(extra).probability, tiny.bundle.score(rows).probability)
