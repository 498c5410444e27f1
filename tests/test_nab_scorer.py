"""Our NAB scorer (benchmarks/nab.py) follows NAB's published rules: hand-checked rewards and
costs on a tiny corpus, the exact threshold sweep agrees with direct scoring, and on the real
corpus the null detector scores 0, the perfect one 100, and the trailing z-score 38.8."""

from __future__ import annotations

import functools
import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from exporter.backtest import NAB_DIR_ENV, nab_dir

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "nab.py"


def _load_nab():
    spec = importlib.util.spec_from_file_location("benchmarks_nab", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


nab = _load_nab()


def stamps(rows: int) -> pd.Series:
    return pd.Series(pd.date_range("2024-01-01", periods=rows, freq="5min").strftime("%Y-%m-%d %H:%M:%S"))


def tiny_file(rows: int = 1000, window: tuple[int, int] = (400, 499), key: str = "cat/tiny.csv"):
    times = stamps(rows)
    limits = [[times[window[0]] + ".000000", times[window[1]] + ".000000"]]  # NAB's label format
    return nab.make_data_file(key, times, np.zeros(rows), limits)


def raw(data, rows: list[int], profile: str = "standard") -> float:
    scores = np.zeros(len(data))
    scores[rows] = 1.0
    return nab.raw_at(data, scores, 1.0, nab.PROFILES[profile])[0]


def test_scaled_sigmoid_and_probation_follow_nab():
    assert nab.scaled_sigmoid(np.array(-1.0)) == pytest.approx(0.98661, abs=1e-5)
    assert nab.scaled_sigmoid(np.array(-0.5)) == pytest.approx(0.84828, abs=1e-5)
    assert nab.scaled_sigmoid(np.array(0.0)) == pytest.approx(0.0)
    assert nab.scaled_sigmoid(np.array(1.0)) == pytest.approx(-0.98661, abs=1e-5)
    assert nab.scaled_sigmoid(np.array(3.0)) == -1.0
    assert [nab.probation_rows(n) for n in (1000, 4032, 5000, 22695)] == [150, 604, 750, 750]
    assert nab.PROFILES["standard"] == nab.Profile(tp=1.0, fp=0.11, fn=1.0)
    assert nab.PROFILES["reward_low_FP_rate"] == nab.Profile(tp=1.0, fp=0.22, fn=1.0)
    assert nab.PROFILES["reward_low_FN_rate"] == nab.Profile(tp=1.0, fp=0.11, fn=2.0)


def test_rewards_and_costs_of_single_detections():
    data = tiny_file()  # probation 150 rows; window rows 400..499 (width 100)
    assert data.probation == 150 and data.windows == ((400, 499),)
    assert raw(data, []) == -1.0  # missed window
    assert raw(data, [], "reward_low_FN_rate") == -2.0
    assert raw(data, [400]) == pytest.approx(1.0)  # at the window's start: the full reward
    middle = nab.scaled_sigmoid(np.array(-51 / 100)) / nab.MAX_TP
    assert raw(data, [449]) == pytest.approx(middle)
    assert raw(data, [449, 400, 470]) == pytest.approx(1.0)  # only the earliest detection counts
    assert raw(data, [100, 449]) == pytest.approx(middle)  # probationary rows are not scored
    assert raw(data, [200]) == pytest.approx(-1.0 - 0.11)  # a FP before any window costs the full fp
    assert raw(data, [200], "reward_low_FP_rate") == pytest.approx(-1.0 - 0.22)
    assert raw(data, [200, 300]) == pytest.approx(-1.0 - 0.22)  # every FP counts
    just_after = 0.11 * nab.scaled_sigmoid(np.array(1 / 99))
    assert -0.11 < just_after < 0
    assert raw(data, [500]) == pytest.approx(-1.0 + just_after)  # FPs right after a window cost little
    assert raw(data, [499 + 3 * 99 + 1]) == pytest.approx(-1.0 - 0.11)  # >= 3 widths after: full fp


def test_windows_in_files_with_repeated_timestamps_start_and_end_at_their_first_rows():
    times = pd.concat([stamps(200), stamps(200)[198:]], ignore_index=True)  # rows 200, 201 repeat 198, 199
    data = nab.make_data_file("cat/x.csv", times, np.zeros(202), [[times[150], times[198]]])
    assert data.windows == ((150, 198),)
    with pytest.raises(ValueError, match="does not start and end"):
        nab.make_data_file(
            "cat/x.csv", times, np.zeros(202), [["2030-01-01 00:00:00", "2030-01-02 00:00:00"]]
        )


def test_sweep_equals_direct_scoring_at_every_threshold():
    rng = np.random.default_rng(3)
    corpus = [
        tiny_file(key="a/1.csv"),
        tiny_file(2000, (900, 1049), "a/2.csv"),
        tiny_file(800, (300, 309), "b/3.csv"),
    ]
    # coarse scores, so that many rows share a threshold
    scores = {data.key: np.round(rng.random(len(data)), 2) for data in corpus}
    events = [nab.file_events(data, scores[data.key]) for data in corpus]
    for profile in nab.PROFILES.values():
        swept = nab.sweep(events, profile)
        assert swept.null == -profile.fn * 3 and swept.perfect == profile.tp * 3
        for at in rng.choice(len(swept.thresholds), 40):
            direct = sum(
                nab.raw_at(data, scores[data.key], swept.thresholds[at], profile)[0] for data in corpus
            )
            assert direct == pytest.approx(swept.raw[at])
        # the chosen threshold is the best candidate, the highest one among ties (as NAB's)
        threshold, best = swept.best()
        assert best == max(swept.raw)
        assert threshold == swept.thresholds[np.flatnonzero(swept.raw == best)].max()


# ---------------------------------------------------------------------------------------------
# The real corpus


@functools.cache
def corpus():
    root = nab_dir()
    if not (root / "labels" / "combined_windows.json").is_file():
        pytest.skip(f"NAB corpus not found at {root} (set {NAB_DIR_ENV} to the NAB directory)")
    return nab.load_corpus(root)


def test_corpus_has_58_files_and_116_windows_outside_the_probation():
    files = corpus()
    assert len(files) == 58 and sum(len(d) for d in files) == 365_558
    assert sum(len(d.windows) for d in files) == 116
    assert all(first >= d.probation for d in files for first, _ in d.windows)


@pytest.mark.parametrize("profile", list(nab.PROFILES))
def test_null_scores_0_and_perfect_scores_100(profile):
    files = corpus()
    profiles = {profile: nab.PROFILES[profile]}
    assert nab.score_corpus(files, nab.null_scores(files), profiles)[profile].score == pytest.approx(0.0)
    perfect = nab.score_corpus(files, nab.perfect_scores(files), profiles)[profile]
    assert perfect.score == pytest.approx(100.0)
    assert all(math.isclose(value, 100.0) for value in perfect.categories.values())


def test_trailing_zscore_scores_38_8_on_the_standard_profile(tmp_path, capsys):
    files = corpus()
    nab.main(["--nab-dir", str(nab_dir()), "baseline", "zscore", "--out", str(tmp_path)])
    scores = nab.read_results(tmp_path, "zscore", files)
    for data in files:
        assert (scores[data.key][: data.probation] == 0).all()
        assert ((scores[data.key] >= 0) & (scores[data.key] <= 1)).all()
    results = nab.score_corpus(files, scores)
    assert results["standard"].score == pytest.approx(38.8, abs=0.5)
    # the three profiles order as NAB's do: low-FN above standard above low-FP
    assert (
        results["reward_low_FN_rate"].score > results["standard"].score > results["reward_low_FP_rate"].score
    )
    capsys.readouterr()
    nab.main(["--nab-dir", str(nab_dir()), "score", str(tmp_path)])
    lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert ["standard", f"{results['standard'].score:.1f}", f"{results['standard'].threshold:.4f}"] in lines
