"""A tiny model bundle trained on two simulated days, shared by the model and service tests.

Training takes a couple of seconds, so it happens once per test process; each test
module saves its own copy where it needs files.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from exporter.models.bundle import ModelBundle
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
