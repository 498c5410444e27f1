"""Training labels from hand-made failed masks: a window ending at t is positive
when a failure starts in (t, t + horizon]."""

from __future__ import annotations

import numpy as np
import pytest

from exporter.training.labels import failure_starts, horizon_labels


def mask(*rows: str) -> np.ndarray:
    """``"..##.."`` -> a failed mask row: ``#`` failed, ``.`` healthy."""
    return np.array([[char == "#" for char in row] for row in rows])


def steps(row: np.ndarray) -> list[int]:
    return np.flatnonzero(row).tolist()


def test_failure_start_is_the_first_failed_step_of_each_stretch():
    starts = failure_starts(mask("#..##.###.", "..........", "##########"))

    assert steps(starts[0]) == [0, 3, 6]
    assert steps(starts[1]) == []
    assert steps(starts[2]) == [0]


def test_positive_exactly_when_a_failure_starts_within_the_horizon():
    labels = horizon_labels(mask("....##...."), horizon_steps=2)

    # The failure starts at 4: windows ending at 2 and 3 see it within 2 steps.
    assert steps(labels.positive[0]) == [2, 3]
    assert steps(labels.starts[0]) == [4]


def test_failure_start_and_failed_steps_are_not_eligible():
    labels = horizon_labels(mask("....##...."), horizon_steps=2)

    assert not labels.positive[0, 4]  # the start itself predicts nothing ahead
    assert not labels.eligible[0, 4]
    assert not labels.eligible[0, 5]
    assert labels.eligible[0, 6]  # recovered, and 6 + 2 is inside the data


def test_windows_whose_horizon_runs_past_the_data_are_not_eligible():
    labels = horizon_labels(mask("....##...."), horizon_steps=2)

    assert steps(labels.eligible[0]) == [0, 1, 2, 3, 6, 7]


def test_windows_near_the_end_are_eligible_when_already_positive():
    labels = horizon_labels(mask(".........#"), horizon_steps=3)

    assert steps(labels.positive[0]) == [6, 7, 8]
    # 7 and 8 look past the end, but the failure at 9 already makes them positive.
    assert steps(labels.eligible[0]) == [0, 1, 2, 3, 4, 5, 6, 7, 8]


def test_back_to_back_failures_each_label_the_steps_before_them():
    labels = horizon_labels(mask(".##.##...."), horizon_steps=2)

    assert steps(labels.starts[0]) == [1, 4]
    assert steps(labels.positive[0]) == [0, 2, 3]
    # The one healthy step between the failures is a positive, eligible sample.
    assert steps(labels.eligible[0]) == [0, 3, 6, 7]
    assert steps(labels.positive[0] & labels.eligible[0]) == [0, 3]


def test_an_ongoing_failure_does_not_label_the_steps_inside_it():
    labels = horizon_labels(mask("######...."), horizon_steps=3)

    assert steps(labels.starts[0]) == [0]
    assert not labels.positive[0].any()
    assert steps(labels.eligible[0]) == [6]


def test_targets_are_labelled_independently():
    labels = horizon_labels(mask("...#......", "......#...", ".........."), horizon_steps=2)

    assert steps(labels.positive[0]) == [1, 2]
    assert steps(labels.positive[1]) == [4, 5]
    assert steps(labels.positive[2]) == []
    assert steps(labels.eligible[2]) == [0, 1, 2, 3, 4, 5, 6, 7]


def test_horizon_longer_than_the_data_leaves_only_positives_eligible():
    labels = horizon_labels(mask(".....#", "......"), horizon_steps=20)

    assert steps(labels.eligible[0]) == [0, 1, 2, 3, 4]
    assert steps(labels.positive[0]) == [0, 1, 2, 3, 4]
    assert steps(labels.eligible[1]) == []


def test_integer_masks_are_read_as_booleans():
    labels = horizon_labels(np.array([[0, 0, 0, 1, 1, 0, 0, 0]]), horizon_steps=1)

    assert labels.positive.dtype == bool
    assert steps(labels.positive[0]) == [2]


def test_labels_are_aligned_with_the_failed_mask():
    failed = mask("..#.......", "....#.....")
    labels = horizon_labels(failed, horizon_steps=3)

    assert labels.positive.shape == labels.eligible.shape == labels.starts.shape == failed.shape


@pytest.mark.parametrize("horizon", [0, -1])
def test_horizon_shorter_than_one_step_is_rejected(horizon):
    with pytest.raises(ValueError, match="at least one step"):
        horizon_labels(mask("..#."), horizon_steps=horizon)
