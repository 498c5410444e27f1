"""The model bundle: a directory holding everything the daemon needs to score.

Layout: ``manifest.json`` (format version, features in order, horizon, window
shape, calibration, training window, metrics, library versions, sha256 of every
file, and ``digest``: the sha256 of all the other fields), ``classifier.ubj``
(XGBoost's native format, read here without XGBoost: serving never imports it, nor
scikit-learn) and ``detector.npz`` (the Isolation Forest and its
imputation values as plain arrays, models/forest.py).

Every file is data: nothing in a bundle can run code when it is loaded (no
pickle, ``np.load(allow_pickle=False)``), so the worst a hostile bundle can do is
score badly. A bundle is loaded whole or not at all: the manifest's digest, every
checksum and the feature list are verified before anything is returned, so a
daemon never scores with half a model or with an edited calibration. Checksums
catch corruption and stray edits, not a forger who rewrites them: whoever can
write the models directory decides what the daemon predicts (docs/security.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
from dataclasses import asdict, dataclass, field
from functools import cached_property
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from exporter.features import Features, feature_names, select, signal_weights
from exporter.models import ubjson
from exporter.models.anomaly import AnomalyDetector
from exporter.models.calibration import platt
from exporter.models.forest import ForestError
from exporter.models.staging import discard_staging, done_with, make_staging
from exporter.models.treeshap import TreeShap, TreeShapError

FORMAT_VERSION = 2
MANIFEST = "manifest.json"
CLASSIFIER_FILE = "classifier.ubj"
DETECTOR_FILE = "detector.npz"
PICKLED_DETECTOR = "detector.joblib"  # format 1: never opened
_LIBRARIES = ("xgboost-cpu", "xgboost", "scikit-learn", "pyod", "numpy")


class BundleError(Exception):
    """A bundle that cannot be served; the message says which file and why."""


@dataclass(frozen=True)
class Manifest:
    version: str
    kind: str  # "bootstrap" (shipped, synthetic) or "trained" (user history)
    trained_at: str
    horizon_seconds: float
    step_seconds: float
    window_steps: int
    signals: tuple[str, ...]
    features: tuple[str, ...]
    calibration: tuple[float, float]
    training: dict[str, Any] = field(default_factory=dict)
    reference: dict[str, Any] = field(default_factory=dict)  # training feature distribution, see drift.py
    metrics: dict[str, Any] = field(default_factory=dict)
    libraries: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    digest: str = ""  # sha256 of every other field (manifest_digest), written by save_bundle


@dataclass(frozen=True)
class Scores:
    """One scoring pass: row i of every array belongs to row i of the feature matrix."""

    inputs: np.ndarray  # [rows, features] what the models saw, in the manifest's feature order
    probability: np.ndarray
    anomaly: np.ndarray  # the detector's score on its own, without a target's history
    contributions: np.ndarray  # [rows, features + 1] SHAP on the margin, last column the bias
    signal_contributions: np.ndarray  # [rows, signals] SHAP grouped by signal
    raw_anomaly: np.ndarray  # the detector's raw (unbounded) score, for normalize.AnomalyNormaliser


@dataclass(frozen=True)
class ModelBundle:
    manifest: Manifest
    classifier_model: bytes  # the classifier's trees as XGBoost writes them (classifier.ubj)
    detector: AnomalyDetector

    @cached_property
    def explainer(self) -> TreeShap:
        """The classifier's trees and their exact SHAP tables, built once per bundle (~0.2 s)."""
        return TreeShap.from_model(ubjson.loads(self.classifier_model))

    def calibrate(self, margin: np.ndarray) -> np.ndarray:
        """The trees' margin as a calibrated probability (the manifest's Platt parameters)."""
        return platt(margin, self.manifest.calibration)

    def predict_proba(self, matrix: np.ndarray) -> np.ndarray:
        """Calibrated P(failure within the horizon) of rows in the manifest's feature order."""
        return self.calibrate(self.explainer.margin(matrix))

    @cached_property
    def signal_weights(self) -> np.ndarray:
        """``[features, signals]``: how SHAP values regroup by signal (features.signal_weights)."""
        return signal_weights(self.manifest.features, self.manifest.signals)

    def score(self, features: Features, explain: bool = True, explain_from: float = 0.0) -> Scores:
        """Score every row in one call of each model.

        Exact SHAP explanations cost many times the prediction itself, so only rows
        whose probability is at least ``explain_from`` get them (the daemon explains
        targets at risk); the others, and every row with ``explain=False`` (backtests),
        get NaN. Margins and explanations come from ``TreeShap`` (the same values as
        XGBoost's ``predict`` and ``pred_contribs``, without their fixed cost per call).
        """
        matrix = select(features, self.manifest.features)
        margin = self.explainer.margin(matrix)  # XGBoost's margin without its ~1 ms fixed cost per call
        probability = self.calibrate(margin)
        contributions = np.full((len(matrix), len(self.manifest.features) + 1), np.nan)
        rows = np.flatnonzero(probability >= explain_from) if explain else np.empty(0, dtype=np.intp)
        if len(rows):
            contributions[rows] = self.explainer.contributions(matrix[rows])
        weights = self.signal_weights
        raw_anomaly = self._raw_anomaly(matrix)
        return Scores(
            inputs=matrix,
            probability=probability,
            anomaly=self.detector.unify(raw_anomaly),
            contributions=contributions,
            signal_contributions=contributions[:, :-1] @ weights,
            raw_anomaly=raw_anomaly,
        )

    def raw_anomaly(self, features: Features) -> np.ndarray:
        """The detector's raw score alone (``Scores.raw_anomaly``), without the classifier: a
        warm-up replay needs nothing else, and skips the classifier's time and memory."""
        return self._raw_anomaly(select(features, self.manifest.features))

    def _raw_anomaly(self, matrix: np.ndarray) -> np.ndarray:
        return self.detector.raw_score(matrix) if len(matrix) else np.empty(0)


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_bundle(bundle: ModelBundle, directory: str | Path) -> Path:
    """Write into a sibling temp dir, then rename: readers see the old or the new bundle."""
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:  # from the staging dir's creation on: a signal may interrupt any line
        staging = make_staging(target)
        (staging / CLASSIFIER_FILE).write_bytes(bundle.classifier_model)
        bundle.detector.save(staging / DETECTOR_FILE)
        files = {name: sha256(staging / name) for name in (CLASSIFIER_FILE, DETECTOR_FILE)}
        manifest = json.loads(json.dumps(asdict(bundle.manifest) | {"files": files, "digest": ""}))
        manifest["digest"] = manifest_digest(manifest)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        for path in staging.iterdir():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
        staging.chmod(0o755)
        _swap_in(staging, target)
        done_with(staging)
    except BaseException:
        discard_staging(target)
        raise
    return target


def manifest_digest(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest's fields except ``digest``, as canonical JSON: any edited field
    (calibration, features, file checksums, ...) changes it."""
    fields = {key: value for key, value in manifest.items() if key != "digest"}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _swap_in(staging: Path, target: Path) -> None:
    if not target.exists():
        staging.rename(target)
        return
    retired = target.with_name(f".{target.name}.old-{os.getpid()}")
    target.rename(retired)
    staging.rename(target)
    shutil.rmtree(retired, ignore_errors=True)


def load_bundle(directory: str | Path) -> ModelBundle:
    """Load and verify a bundle; raise BundleError rather than return anything partial."""
    root = Path(directory)
    manifest = _read_manifest(root)
    for name in (CLASSIFIER_FILE, DETECTOR_FILE):
        _verify_file(root, name, manifest.files)
    expected = feature_names(manifest.signals)
    if manifest.features != expected:
        raise BundleError(
            f"{root}: the bundle's feature list does not match what this version computes for signals "
            f"{list(manifest.signals)}; missing here {sorted(set(manifest.features) - set(expected))}, "
            f"new here {sorted(set(expected) - set(manifest.features))}. Retrain the model."
        )
    bundle = ModelBundle(
        manifest=manifest,
        classifier_model=(root / CLASSIFIER_FILE).read_bytes(),
        detector=_load_detector(root, manifest),
    )
    _check_classifier(root, bundle)
    return bundle


def _read_manifest(root: Path) -> Manifest:
    path = root / MANIFEST
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise BundleError(f"{root}: no {MANIFEST}; is this a model bundle directory?") from None
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path}: unreadable manifest: {exc}") from None
    if not isinstance(raw, dict):
        raise BundleError(f"{path}: manifest must be a JSON object")
    if raw.get("format_version") == 1:
        raise BundleError(
            f"{path}: format_version 1 bundles keep the anomaly detector as a pickle ({PICKLED_DETECTOR}), "
            "which could run code when loaded; this version never opens it. Retrain the model "
            "(failure-predictor train ...) to write a format 2 bundle."
        )
    if raw.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"{path}: format_version {raw.get('format_version')!r} is not supported (expected {FORMAT_VERSION})"
        )
    if raw.get("digest") != manifest_digest(raw):
        raise BundleError(
            f"{path}: digest mismatch: a field was changed after the bundle was written "
            "(calibration, features, checksums, ...); restore the bundle or retrain"
        )
    if set(raw.get("files") or {}) != {CLASSIFIER_FILE, DETECTOR_FILE}:
        raise BundleError(f"{path}: files must list exactly {CLASSIFIER_FILE} and {DETECTOR_FILE}")
    try:
        slope, intercept = (float(v) for v in raw["calibration"])
        fields = {"signals": tuple(raw["signals"]), "features": tuple(raw["features"])}
        return Manifest(**(raw | fields | {"calibration": (slope, intercept)}))
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{path}: manifest fields are wrong: {exc!r}") from None


def _verify_file(root: Path, name: str, files: dict[str, str]) -> None:
    path = root / name
    if name not in files:
        raise BundleError(f"{root}: manifest lists no checksum for {name}")
    if not path.is_file():
        raise BundleError(f"{path}: missing from the bundle")
    actual = sha256(path)
    if actual != files[name]:
        raise BundleError(
            f"{path}: checksum mismatch (manifest {files[name][:12]}..., file {actual[:12]}...)"
        )


def _check_classifier(root: Path, bundle: ModelBundle) -> None:
    """Build the trees now (so no request or cycle waits for them) and check they fit the manifest."""
    path = root / CLASSIFIER_FILE
    try:
        trees = bundle.explainer
    except ubjson.UBJSONError as exc:
        raise BundleError(f"{path}: not an XGBoost model file (UBJSON): {exc}") from None
    except TreeShapError as exc:
        raise BundleError(f"{path}: cannot be explained: {exc}") from None
    if trees.n_features != len(bundle.manifest.features):
        raise BundleError(
            f"{path}: model takes {trees.n_features} features, manifest lists {len(bundle.manifest.features)}"
        )


def _load_detector(root: Path, manifest: Manifest) -> AnomalyDetector:
    try:
        return AnomalyDetector.load(root / DETECTOR_FILE, len(manifest.features))
    except ForestError as exc:
        raise BundleError(f"{root / DETECTOR_FILE}: not an anomaly detector: {exc}") from None
