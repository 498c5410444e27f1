"""The per-target anomaly history (exporter/models/normalize.py): scale-free, causal, one alarm
per burst, bounded by the targets watched now, and the same whether fed a row or a recording."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from exporter.backtest import NAB_COLUMNS, NAB_DIR_ENV, nab_dir, score_rows
from exporter.config import BOOTSTRAP_MODEL
from exporter.models.bundle import load_bundle
from exporter.models.forest import ArrayForest
from exporter.models.normalize import (
    BURST_STEPS,
    EMBED_STEPS,
    MIN_STEPS,
    NULL_FOREST,
    SETTLED_STEPS,
    AnomalyNormaliser,
    RunningStats,
    fit_null_forest,
    owned_by,
    workload_by,
)
from exporter.sources.files import read_recording

MODEL = BOOTSTRAP_MODEL
NAB_FILE = Path("realKnownCause") / "machine_temperature_system_failure.csv"
A, B = {"pod": "a"}, {"pod": "b"}


def windows_of(x: np.ndarray) -> np.ndarray:
    """``[rows, EMBED_STEPS, 1]``: the window ending at each sample, NaN before the first."""
    padded = np.concatenate([np.full(EMBED_STEPS - 1, np.nan), x])
    return sliding_window_view(padded, EMBED_STEPS)[:, :, None]


def replay(x: np.ndarray, raw: np.ndarray | None = None) -> np.ndarray:
    history = AnomalyNormaliser(("cpu",))
    history.retain([A])
    return history.score(
        np.zeros(len(x), dtype=np.int64), windows_of(x), np.zeros(len(x)) if raw is None else raw
    )


def noisy(rows: int, level: float = 10.0, seed: int = 1) -> np.ndarray:
    return level + np.random.default_rng(seed).normal(size=rows)


def test_a_spike_after_a_quiet_stretch_raises_one_alarm_whatever_the_unit() -> None:
    x = noisy(600)
    x[400:405] = 30.0
    for unit in (1.0, 1e-6, 1e4):
        scores = replay(unit * x)
        assert scores[400] > 0.8
        assert scores[SETTLED_STEPS:400].max() < scores[400]
        assert (scores[401:500] > 0).sum() == 0  # the rest of the burst is the same incident
        assert ((scores >= 0) & (scores < 1)).all()


def test_a_series_that_never_moves_is_never_anomalous_and_the_first_samples_read_zero() -> None:
    assert replay(np.full(600, 3.0)).max() == 0.0
    assert replay(noisy(600))[:MIN_STEPS].max() == 0.0


def test_a_young_target_already_scores_a_spike_but_less_surely_than_an_old_one() -> None:
    x = noisy(600)
    young, old = x.copy(), x.copy()
    young[8] = old[500] = x[:8].mean() + 12 * x[:8].std()
    early, late = replay(young), replay(old)
    # a spike on 8 samples of history already reads as one (0.63 before single-signal targets
    # were calibrated: their evidence is now read against a stationary series' too, 0.57)
    assert early[8] > 0.55
    assert early[8] < late[500]  # ... but with the uncertainty of 8 samples, not of 500


def test_scores_do_not_depend_on_later_rows_or_on_how_rows_are_batched() -> None:
    x = noisy(1500)
    x[[700, 1100]] += 8.0
    whole = replay(x)
    for cut in (300, 701, 1200):
        np.testing.assert_array_equal(replay(x[:cut]), whole[:cut])
    history = AnomalyNormaliser(("cpu",))
    history.retain([A])
    windows = windows_of(x)
    parts = [
        history.score(np.zeros(len(r), dtype=np.int64), windows[r], np.zeros(len(r)))
        for r in np.array_split(np.arange(1500), 7)
    ]
    np.testing.assert_allclose(np.concatenate(parts), whole, rtol=1e-12, atol=1e-15)


def test_interleaved_targets_score_as_each_would_alone() -> None:
    x, y = noisy(400, seed=2), noisy(400, level=500.0, seed=3)
    y[300] += 10.0
    history = AnomalyNormaliser(("cpu",))
    history.retain([A, B])
    rows = np.tile([0, 1], 400)
    windows = np.empty((800, EMBED_STEPS, 1))
    windows[0::2], windows[1::2] = windows_of(x), windows_of(y)
    both = history.score(rows, windows, np.zeros(800))
    np.testing.assert_allclose(both[0::2], replay(x), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(both[1::2], replay(y), rtol=1e-12, atol=1e-15)


def test_a_vanished_target_is_dropped_and_one_that_returns_starts_afresh() -> None:
    x = noisy(300)
    history = AnomalyNormaliser(("cpu",))
    windows = windows_of(x)
    for step in range(200):
        history.score_frame(np.repeat(windows[step : step + 1], 2, axis=0), [A, B], np.zeros(2))
    assert len(history) == 2
    alone = [history.score_frame(windows[step : step + 1], [B], np.zeros(1))[0] for step in range(200, 300)]
    assert len(history) == 1  # A vanished: its state is gone
    np.testing.assert_allclose(alone, replay(x)[200:], rtol=1e-12, atol=1e-15)
    back = history.score_frame(np.repeat(windows[:1], 2, axis=0), [A, B], np.zeros(2))
    assert back[0] == 0.0 and len(history) == 2  # A is new again: warming up


def test_a_vanished_pod_donates_under_the_owner_it_had_though_the_owners_no_longer_name_it() -> None:
    """kube-state-metrics drops a deleted pod's owner series: the owner mapping of the cycle its
    successor appears in no longer names it, yet its statistics go to that successor."""
    old, new, other = {"pod": "q7x2mlp0a"}, {"pod": "z81kdpw3b"}, {"pod": "cart-7d9f8b6c4-x2k4q"}
    pattern = workload_by("pod", r"^(.+?)(?:-[a-f0-9]{6,10})?-[a-z0-9]{5}$")
    history = AnomalyNormaliser(("cpu",))
    history.workload_of = owned_by("pod", lambda t: {"q7x2mlp0a": "Deployment/cart"}.get(t["pod"]), pattern)
    windows = windows_of(noisy(100))
    for step in range(100):
        history.score_frame(np.repeat(windows[step : step + 1], 2, axis=0), [old, other], np.zeros(2))
    history.workload_of = owned_by("pod", lambda t: {"z81kdpw3b": "Deployment/cart"}.get(t["pod"]), pattern)
    history.retain([new, other])
    assert history.inherited.tolist() == [True, False]
    assert history.history(history.rows_of([new]))[0] == 100


def test_a_young_target_named_late_takes_its_workloads_statistics_and_an_older_one_keeps_its_own() -> None:
    """A pod seen before kube-state-metrics named its owner started fresh: once a new workload_of
    names the owner, it takes the workload's statistics while it is young (MIN_STEPS samples)."""
    parent, young, grown = {"pod": "p0"}, {"pod": "p1"}, {"pod": "p2"}
    windows = windows_of(noisy(120))
    history = AnomalyNormaliser(("cpu",))
    history.workload_of = owned_by("pod", lambda t: {"p0": "Deployment/cart"}.get(t["pod"]), None)
    for step in range(100):
        history.score_frame(windows[step : step + 1], [parent], np.zeros(1))
    for step in range(100, 100 + MIN_STEPS):  # grown is watched for MIN_STEPS samples, young for one
        targets = [parent, grown] + ([young] if step == 100 + MIN_STEPS - 1 else [])
        history.score_frame(
            np.repeat(windows[step : step + 1], len(targets), axis=0), targets, np.zeros(len(targets))
        )
    owners = {"p0": "Deployment/cart", "p1": "Deployment/cart", "p2": "Deployment/cart"}
    history.workload_of = owned_by("pod", lambda t: owners.get(t["pod"]), None)
    assert history.refresh_workloads() == 1
    rows = history.rows_of([parent, young, grown])
    assert history.history(rows).tolist() == [100 + MIN_STEPS, 100 + MIN_STEPS, MIN_STEPS]


def test_running_statistics_are_exact_at_first_then_forget_with_a_bounded_memory() -> None:
    stats = RunningStats(1, memory=100)
    stats.take(np.array([-1]))
    rows = np.array([0])
    x = np.random.default_rng(4).normal(size=100)
    for value in x:
        stats.update(rows, np.array([[value]]))
    assert stats.mean[0, 0] == pytest.approx(x.mean())
    assert stats.var[0, 0] == pytest.approx(x.var())
    stats.update(rows, np.array([[np.nan]]))  # a gap changes nothing
    assert stats.count[0, 0] == 100 and stats.mean[0, 0] == pytest.approx(x.mean())
    for _ in range(2000):
        stats.update(rows, np.array([[50.0]]))
    assert stats.count[0, 0] == 100  # state per target stays the same size forever
    assert stats.mean[0, 0] == pytest.approx(50.0, abs=1e-6)


def test_the_burst_memory_is_bounded_per_target() -> None:
    history = AnomalyNormaliser(("cpu", "memory"))
    history.retain([A, B])
    history.score(
        np.zeros(1000, dtype=np.int64), np.random.default_rng(5).normal(size=(1000, 60, 2)), np.zeros(1000)
    )
    assert history._recent.shape == (2, BURST_STEPS)


def test_backtest_scores_of_a_nab_file_do_not_depend_on_later_rows(tmp_path: Path) -> None:
    data = nab_dir() / "data" / NAB_FILE
    if not data.is_file():
        pytest.skip(f"NAB corpus not found at {data.parent} (set {NAB_DIR_ENV} to the NAB directory)")
    bundle = load_bundle(MODEL)
    cut = tmp_path / "realKnownCause" / NAB_FILE.name
    cut.parent.mkdir()
    pd.read_csv(data).iloc[:4000].to_csv(cut, index=False)
    full = np.concatenate([s.anomaly for _, s in score_rows(read_recording(data, NAB_COLUMNS), bundle, 3000)])
    part = np.concatenate([s.anomaly for _, s in score_rows(read_recording(cut, NAB_COLUMNS), bundle, 1700)])
    np.testing.assert_allclose(part, full[:4000], rtol=1e-9, atol=1e-12)
    assert (full[:4000] > 0.5).any()


def test_the_shipped_null_forest_is_the_fit_it_claims_to_be() -> None:
    shipped = ArrayForest.load(NULL_FOREST).to_arrays()
    fitted = fit_null_forest(EMBED_STEPS).to_arrays()

    assert shipped.keys() == fitted.keys()
    for name, array in fitted.items():
        np.testing.assert_array_equal(shipped[name], array, err_msg=name)
