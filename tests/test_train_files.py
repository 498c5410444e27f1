"""`failure-predictor train --source files`: a recording plus an incidents file, and splits
that say exactly what is missing when the data cannot be used as asked."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from exporter.cli import main
from exporter.models.bundle import load_bundle
from exporter.sources.simulate import History, simulate_history
from exporter.training.dataset import SplitOptions, TrainingOptions, build_dataset
from exporter.training.evaluate import iso_time
from exporter.training.train import SplitError, split_rows

STEP = 60.0


@pytest.fixture(scope="module")
def history() -> History:
    """Two days of four realistic pods holding exactly five incidents (seed 4)."""
    history = simulate_history(targets=4, steps=2 * 1440, seed=4)
    assert len(history.incidents) == 5
    return history


@pytest.fixture(scope="module")
def recording(history: History, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The long CSV layout of `backtest` (ISO timestamps, empty cells where nothing was
    recorded) and an incidents CSV naming targets as the recording does."""
    root = tmp_path_factory.mktemp("recording")
    frame = history.frame
    names = [f"{t['namespace']}.{t['pod']}" for t in frame.targets]
    target, step = np.meshgrid(np.arange(len(names)), np.arange(len(frame.timestamps)), indexing="ij")
    table = pd.DataFrame(
        {
            "timestamp": pd.to_datetime(frame.timestamps[step.ravel()], unit="s").strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            ),
            "target": np.array(names)[target.ravel()],
            **{signal: frame.values[:, :, i].ravel() for i, signal in enumerate(frame.signals)},
        }
    )
    table.to_csv(root / "recording.csv", index=False, na_rep="")
    incidents = pd.DataFrame(
        {
            "target": [names[i.target] for i in history.incidents],
            "start": [iso_time(i.start) for i in history.incidents],
            "end": [iso_time(i.end) for i in history.incidents],
        }
    )
    incidents.to_csv(root / "incidents.csv", index=False)
    return root / "recording.csv", root / "incidents.csv"


def train(recording: tuple[Path, Path], out: Path, *extra: str) -> int:
    data, incidents = recording
    argv = ["train", "--source", "files", "--input", str(data), "--incidents", str(incidents)]
    return main([*argv, "--out", str(out), "--json", *extra])


def test_two_days_with_five_incidents_train_a_bundle_with_an_honest_report(recording, tmp_path, capsys):
    assert train(recording, tmp_path / "bundle") == 0

    report = json.loads(capsys.readouterr().out)
    bundle = load_bundle(tmp_path / "bundle")
    training = bundle.manifest.training
    assert training["source"] == "files"
    # The calibration period of two days holds no failure: cross-validated instead of failing.
    assert training["split"]["calibration"] == "3-fold cross-validated"
    assert report["failures"] == 2
    assert 0 < report["supported_threshold"] < 1
    assert set(report["at_supported_threshold"]) >= {"event_recall", "false_alarms_per_target_day"}
    assert report["ece"] >= 0 and report["reliability"]
    assert bundle.manifest.step_seconds == STEP
    assert bundle.manifest.window_steps == 60


def test_a_test_period_without_failures_says_where_to_move_test_from(recording, history, tmp_path, capsys):
    late = iso_time(history.frame.timestamps[-1] - 3 * 3600)

    assert train(recording, tmp_path / "bundle", "--test-from", late) == 2

    error = capsys.readouterr().err
    latest = iso_time(max(i.start for i in history.incidents) - 1800)
    assert f"the test period holds 0 failures: move --test-from before {latest}" in error
    assert not (tmp_path / "bundle").exists()


def test_a_training_period_without_failures_says_where_to_move_the_cuts(recording, history, tmp_path, capsys):
    first = history.frame.timestamps[0]
    early = [iso_time(first + 3 * 3600), iso_time(first + 6 * 3600)]

    assert train(recording, tmp_path / "b", "--calibrate-from", early[0], "--test-from", early[1]) == 2

    assert "the training period holds 0 failures: move --calibrate-from" in capsys.readouterr().err


def test_incidents_of_targets_the_recording_lacks_are_named(recording, tmp_path, capsys):
    data, _ = recording
    wrong = tmp_path / "incidents.csv"
    wrong.write_text("target,start\nshop.nope,2026-01-01T10:00:00Z\n")

    assert train((data, wrong), tmp_path / "bundle") == 2

    assert "['shop.nope'] that no recording has" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--fractions", "0.6", "--fractions takes TRAIN,CALIBRATION"),
        ("--test-from", "tuesday", "--test-from"),
    ],
)
def test_malformed_split_options_are_refused(recording, tmp_path, capsys, flag, value, message):
    assert train(recording, tmp_path / "bundle", flag, value) == 2
    assert message in capsys.readouterr().err


def test_files_training_needs_inputs_and_incidents(tmp_path, capsys):
    assert main(["train", "--source", "files", "--out", str(tmp_path / "b")]) == 2
    assert "--source files needs --input PATH" in capsys.readouterr().err


@pytest.fixture(scope="module")
def dataset():
    history = simulate_history(targets=12, steps=2 * 1440, seed=3, realistic=False)
    return build_dataset(history.frame, history.failed, TrainingOptions(stride=4))


def test_split_by_target_keeps_every_target_in_one_part(dataset):
    periods = split_rows(dataset, TrainingOptions(split=SplitOptions(by="target")), STEP)

    parts = [
        set(np.unique(dataset.target[mask]).tolist())
        for mask in (periods.train, periods.calibration, periods.test)
    ]
    assert all(parts)
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert (periods.train | periods.calibration | periods.test).all()


def test_explicit_cuts_leave_the_gap_before_each_one(dataset):
    start = dataset.time.min()
    split = SplitOptions(calibrate_from=start + 20 * 3600, test_from=start + 34 * 3600, gap=3600.0)

    periods = split_rows(dataset, TrainingOptions(split=split), STEP)

    assert dataset.time[periods.train].max() < split.calibrate_from - 3600
    assert dataset.time[periods.calibration].min() >= split.calibrate_from
    assert dataset.time[periods.calibration].max() < split.test_from - 3600
    assert dataset.time[periods.test].min() >= split.test_from
    assert periods.description["test_from"] == iso_time(split.test_from)


def test_cuts_outside_the_history_are_refused(dataset):
    split = SplitOptions(test_from=dataset.time.max() + 86_400)

    with pytest.raises(SplitError, match=r"--test-from .* is outside the history"):
        split_rows(dataset, TrainingOptions(split=split), STEP)
