"""A tiny model bundle trained on two simulated days, shared by the model and service tests.

Training takes a couple of seconds, so it happens once per test process; each test
module saves its own copy where it needs files.
"""

from __future__ import annotations

import functools
import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import xgboost as xgb

from exporter.models.bundle import MANIFEST, ModelBundle, manifest_digest, sha256
from exporter.sources.simulate import History, simulate_history
from exporter.training.dataset import Dataset, TrainingOptions, build_dataset
from exporter.training.train import train_bundle

STEP = 60.0
OPTIONS = TrainingOptions(stride=4)


@dataclass(frozen=True)
class Tiny:
    bundle: ModelBundle
    history: History
    dataset: Dataset


@functools.cache
def train_tiny_bundle() -> Tiny:
    """12 simulated targets x 2 days at 60 s steps: window 60 steps, horizon 30 steps (30m).

    The clean simulator (every signal, every limit): two days of the realistic one hold too
    few visible failures for a model that separates anything, and these tests are about
    the machinery around a model, not its quality (benchmarks/ and the bootstrap are).
    """
    history = simulate_history(targets=12, steps=1440 * 2, seed=3, step=STEP, realistic=False)
    dataset = build_dataset(history.frame, history.failed, OPTIONS)
    bundle = train_bundle(dataset, history.frame.signals, STEP, OPTIONS, "trained", {"source": "tests"})
    return Tiny(bundle=bundle, history=history, dataset=dataset)


def booster_of(bundle: ModelBundle) -> xgb.Booster:
    """XGBoost's own booster for a bundle's trees: the reference its served trees must match."""
    booster = xgb.Booster(params={"nthread": 1})
    booster.load_model(bytearray(bundle.classifier_model))
    return booster


class Payload:
    """What the fault matrix planted in a bundle: unpickling it runs a shell command that leaves
    ``marker`` behind, so a test can tell whether anything unpickled it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def resign_manifest(bundle: Path, **changes: object) -> None:
    """Change manifest fields and rewrite its digest, as a careful forger would."""
    path = bundle / MANIFEST
    manifest = json.loads(path.read_text()) | changes
    path.write_text(json.dumps(manifest | {"digest": manifest_digest(manifest)}))


def plant_pickle(bundle: Path, name: str, marker: Path) -> None:
    """Write a code-running pickle as ``name`` and make its checksum and the digest match it."""
    (bundle / name).write_bytes(pickle.dumps(Payload(marker)))
    files = json.loads((bundle / MANIFEST).read_text())["files"]
    resign_manifest(bundle, files=files | {name: sha256(bundle / name)})
