"""Backtests: CSV recordings become the right Frames, every input row is scored once by the
daemon's own feature and model code, causally, and NAB results land in NAB's layout."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from exporter import cli
from exporter.backtest import NAB_COLUMNS, NAB_DIR_ENV, BacktestError, nab_dir, run_backtest, score_rows
from exporter.config import BOOTSTRAP_MODEL
from exporter.features import frame_features
from exporter.frame import Frame
from exporter.models.bundle import ModelBundle, load_bundle
from exporter.models.normalize import EMBED_STEPS, AnomalyNormaliser
from exporter.sources.files import FilesError, FilesSource, read_recording

MODEL = BOOTSTRAP_MODEL
NAB_FILE = Path("realKnownCause") / "ec2_request_latency_system_failure.csv"  # has repeated timestamps


@functools.cache
def bundle() -> ModelBundle:
    return load_bundle(MODEL)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.strip() + "\n")
    return path


def leak(rows: int, start: str = "2024-05-01 00:00:00", step: str = "60s") -> pd.DataFrame:
    """A memory leak that builds up to the limit over ``rows`` steps, with a little noise."""
    rng = np.random.default_rng(7)
    memory = np.clip(0.3 + 0.7 * np.linspace(0, 1, rows) ** 3 + rng.normal(0, 0.01, rows), 0, 1)
    stamps = pd.date_range(start, periods=rows, freq=step).strftime("%Y-%m-%d %H:%M:%S")
    return pd.DataFrame({"timestamp": stamps, "cpu": 0.3 + rng.normal(0, 0.02, rows), "memory": memory})


def nab_data() -> Path:
    data = nab_dir() / "data"
    if not (data / NAB_FILE).is_file():
        pytest.skip(f"NAB corpus not found at {data} (set {NAB_DIR_ENV} to the NAB directory)")
    return data


def test_one_csv_per_target_aligns_on_the_median_step_with_nan_gaps(tmp_path: Path) -> None:
    path = write(
        tmp_path / "cart-1.csv",
        """
timestamp,cpu,memory
2024-05-01T00:00:00Z,0.1,0.5
2024-05-01T00:01:00Z,0.2,
2024-05-01T00:02:00Z,0.3,0.6
2024-05-01T00:05:00Z,0.4,0.7
""",
    )
    recording = read_recording(path)
    frame = recording.frame
    start = pd.Timestamp("2024-05-01", tz="UTC").timestamp()
    assert frame.signals == ("cpu", "memory")
    assert frame.targets == ({"target": "cart-1"},)
    assert frame.step == 60.0
    np.testing.assert_array_equal(frame.timestamps, start + 60.0 * np.arange(6))
    np.testing.assert_array_equal(frame.signal("cpu")[0], [0.1, 0.2, 0.3, np.nan, np.nan, 0.4])
    np.testing.assert_array_equal(frame.signal("memory")[0], [0.5, np.nan, 0.6, np.nan, np.nan, 0.7])
    np.testing.assert_array_equal(recording.row_slot, [0, 1, 2, 5])
    assert list(recording.row_stamp) == [f"2024-05-01T00:0{m}:00Z" for m in (0, 1, 2, 5)]


def test_a_directory_gives_one_recording_per_file_named_by_its_stem(tmp_path: Path) -> None:
    write(tmp_path / "runs" / "b.csv", "timestamp,cpu\n100,0.1\n160,0.2")
    write(tmp_path / "runs" / "a.csv", "timestamp,cpu\n0,0.5\n30,0.6\n60,0.7")
    recordings = list(FilesSource([tmp_path / "runs"]).recordings())
    assert [r.frame.targets for r in recordings] == [({"target": "a"},), ({"target": "b"},)]
    assert [r.frame.step for r in recordings] == [30.0, 60.0]


def test_long_csv_puts_every_target_on_one_grid(tmp_path: Path) -> None:
    path = write(
        tmp_path / "cluster.csv",
        """
timestamp,target,cpu,errors
1714521600,web-2,0.5,0.01
1714521600,web-1,0.1,0.00
1714521660,web-1,0.2,0.00
1714521720,web-1,0.3,0.02
1714521720,web-2,0.6,0.03
""",
    )
    recording = read_recording(path)
    frame = recording.frame
    assert frame.targets == ({"target": "web-1"}, {"target": "web-2"})
    np.testing.assert_array_equal(frame.timestamps, [1714521600, 1714521660, 1714521720])
    np.testing.assert_array_equal(frame.signal("cpu"), [[0.1, 0.2, 0.3], [0.5, np.nan, 0.6]])
    np.testing.assert_array_equal(recording.row_target, [1, 0, 0, 0, 1])


def test_a_mapped_column_is_read_as_its_signal_and_other_columns_are_ignored(tmp_path: Path) -> None:
    path = write(
        tmp_path / "nab.csv", "timestamp,value,label\n2014-04-01 00:00:00,20.5,x\n2014-04-01 00:05:00,21,y"
    )
    recording = read_recording(path, NAB_COLUMNS)
    assert recording.frame.signals == ("cpu",)
    assert recording.columns == ("value",)
    assert recording.frame.step == 300.0
    np.testing.assert_array_equal(recording.frame.values[0, :, 0], [20.5, 21.0])


def test_a_coarser_step_keeps_the_newest_sample_of_each_cell_but_every_row(tmp_path: Path) -> None:
    path = write(tmp_path / "t.csv", "timestamp,cpu\n0,0.1\n60,0.2\n120,0.3\n180,0.4\n180,0.5")
    recording = read_recording(path, step=120.0)
    np.testing.assert_array_equal(recording.row_slot, [0, 0, 1, 2, 2])
    np.testing.assert_array_equal(recording.frame.values[0, :, 0], [0.2, 0.3, 0.5])
    np.testing.assert_array_equal(recording.row_values[:, 0], [0.1, 0.2, 0.3, 0.4, 0.5])


@pytest.mark.parametrize(
    ("text", "columns", "message"),
    [
        ("time,cpu\n0,0.1", None, "bad.csv: no 'timestamp' column (columns: time, cpu)"),
        (
            "timestamp,cpu\n0,0.1\n60,0.2",
            {"value": "cpu"},
            "bad.csv: mapped column(s) ['value'] not in the file",
        ),
        (
            "timestamp,cpu\n0,0.1\n60,high\n120,0.2",
            None,
            "bad.csv, row 2, column 'cpu': 'high' is not a number",
        ),
        (
            "timestamp,cpu\n2024-05-01 00:00:00,0.1\nyesterday,0.2",
            None,
            "bad.csv, row 2, column 'timestamp': cannot read 'yesterday' as a time",
        ),
        ("timestamp,cpu\n0,0.1\n,0.2", None, "bad.csv, row 2, column 'timestamp': empty timestamp"),
        ("timestamp,cpu\n0,0.1\n0,0.2", None, "bad.csv: fewer than two distinct timestamps"),
        ("timestamp,cpu", None, "bad.csv: no data rows"),
    ],
)
def test_bad_files_are_refused_naming_file_row_and_column(
    tmp_path: Path, text: str, columns: dict | None, message: str
) -> None:
    path = write(tmp_path / "bad.csv", text)
    with pytest.raises(FilesError) as caught:
        read_recording(path, columns)
    assert message in str(caught.value)


def test_missing_inputs_and_clashing_mappings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(FilesError, match=r"nowhere\.csv: no such file or directory"):
        FilesSource([tmp_path / "nowhere.csv"])
    with pytest.raises(FilesError, match=r"holds no \*\.csv files"):
        FilesSource([tmp_path])
    with pytest.raises(FilesError, match="same signal"):
        FilesSource([tmp_path], {"a": "cpu", "b": "cpu"})


def test_backtest_writes_one_row_per_input_row_with_scores_in_the_unit_interval(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    leak(200).to_csv(inputs / "leaky.csv", index=False)
    leak(150, start="2024-05-02 00:00:00").to_csv(inputs / "steady.csv", index=False)
    summary = run_backtest(FilesSource([inputs]), bundle(), tmp_path / "out")
    result = pd.read_csv(summary.outputs[0], dtype={"timestamp": str})
    assert summary.outputs == (tmp_path / "out" / "backtest.csv",)
    assert summary.rows == 350
    assert list(result.columns) == [
        "timestamp",
        "target",
        "cpu",
        "memory",
        "failure_probability",
        "anomaly_score",
    ]
    assert result.target.value_counts().to_dict() == {"leaky": 200, "steady": 150}
    assert list(result.timestamp[:200]) == list(leak(200).timestamp)
    for column in ("failure_probability", "anomaly_score"):
        assert result[column].between(0, 1).all()
    # The shipped model should see the leak coming once it has a full window of it.
    assert result.failure_probability[150:200].max() > result.failure_probability[60:100].max()


def test_a_long_csv_backtest_keeps_input_order_and_target_names(tmp_path: Path) -> None:
    path = write(
        tmp_path / "cluster.csv",
        "timestamp,target,memory\n0,b,0.5\n0,a,0.4\n60,a,0.45\n60,b,0.55\n120,b,0.6\n120,b,0.61",
    )
    summary = run_backtest(FilesSource([path]), bundle(), tmp_path / "out")
    result = pd.read_csv(summary.outputs[0])
    assert list(result.target) == ["b", "a", "a", "b", "b", "b"]
    assert list(result.memory) == [0.5, 0.4, 0.45, 0.55, 0.6, 0.61]
    assert result.anomaly_score.between(0, 1).all()


def test_scores_of_early_rows_do_not_depend_on_later_rows(tmp_path: Path) -> None:
    history = leak(240)
    history.to_csv(tmp_path / "full.csv", index=False)
    history[:130].to_csv(tmp_path / "cut.csv", index=False)
    full = [s for _, s in score_rows(read_recording(tmp_path / "full.csv"), bundle(), chunk_rows=50)]
    cut = [s for _, s in score_rows(read_recording(tmp_path / "cut.csv"), bundle(), chunk_rows=64)]
    for field in ("probability", "anomaly"):
        whole = np.concatenate([getattr(s, field) for s in full])
        truncated = np.concatenate([getattr(s, field) for s in cut])
        np.testing.assert_array_equal(whole[:130], truncated)


def test_each_row_scores_as_the_daemon_would_at_that_moment_young_windows_included(tmp_path: Path) -> None:
    leak(150).to_csv(tmp_path / "pod.csv", index=False)
    recording = read_recording(tmp_path / "pod.csv")
    _, scores = next(score_rows(recording, bundle()))
    width = bundle().manifest.window_steps
    frame = recording.frame
    # The daemon's anomaly history, fed one cycle per row as Daemon.run_cycle feeds it.
    history = AnomalyNormaliser(frame.signals, min(EMBED_STEPS, width))
    for row in range(len(recording)):
        # The daemon's window at that moment: the last `width` steps, NaN before the target existed.
        window = np.full((1, width, len(frame.signals)), np.nan)
        seen = frame.values[:, max(0, row - width + 1) : row + 1]
        window[:, width - seen.shape[1] :] = seen
        timestamps = frame.timestamps[row] - frame.step * np.arange(width)[::-1]
        daemon = bundle().score(frame_features(Frame(window, frame.targets, timestamps, frame.signals)))
        anomaly = history.score_frame(window, frame.targets, daemon.raw_anomaly)
        # Backtests skip SHAP: the margin then comes from XGBoost directly rather than as the
        # sum of the contributions, which differ only in float32 rounding.
        assert math.isclose(scores.probability[row], daemon.probability[0], rel_tol=1e-5)
        assert math.isclose(scores.raw_anomaly[row], daemon.raw_anomaly[0], rel_tol=1e-12)
        assert math.isclose(scores.anomaly[row], anomaly[0], rel_tol=1e-9, abs_tol=1e-12)
    assert (scores.anomaly[EMBED_STEPS:] > 0).any()  # past the warm-up, something was measured


def test_nab_format_needs_one_series_per_file(tmp_path: Path) -> None:
    leak(20).to_csv(tmp_path / "two.csv", index=False)
    with pytest.raises(BacktestError, match="one series per file"):
        run_backtest(FilesSource([tmp_path / "two.csv"]), bundle(), tmp_path / "out", "nab")


def test_a_file_the_model_cannot_read_is_refused(tmp_path: Path) -> None:
    write(tmp_path / "x.csv", "timestamp,value\n0,1\n60,2")
    with pytest.raises(BacktestError, match="map a column with --signal-column"):
        run_backtest(FilesSource([tmp_path / "x.csv"]), bundle(), tmp_path / "out")


def test_nab_file_backtest_writes_nab_layout_with_the_input_timestamps(tmp_path: Path) -> None:
    source = nab_data() / NAB_FILE
    out = tmp_path / "results"
    argv = ["backtest", "--input", str(source), "--signal-column", "value=cpu"]
    assert cli.main([*argv, "--format", "nab", "--out", str(out), "--model", str(MODEL)]) == 0
    written = (
        out
        / "failurePredictor"
        / "realKnownCause"
        / "failurePredictor_ec2_request_latency_system_failure.csv"
    )
    result = pd.read_csv(written, dtype={"timestamp": str})
    original = pd.read_csv(source, dtype={"timestamp": str})
    assert list(result.columns) == ["timestamp", "value", "anomaly_score"]
    assert len(result) == len(original)
    assert list(result.timestamp) == list(original.timestamp)
    np.testing.assert_array_equal(result.value, original.value)
    assert result.anomaly_score.between(0, 1).all()


def test_nab_shortcut_runs_every_file_of_the_corpus_in_the_env_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    corpus = tmp_path / "nab"
    write(
        corpus / "data" / "realA" / "one.csv", "timestamp,value\n2014-01-01 00:00:00,1\n2014-01-01 00:05:00,2"
    )
    write(
        corpus / "data" / "realB" / "two.csv", "timestamp,value\n2014-01-01 00:00:00,3\n2014-01-01 00:10:00,4"
    )
    monkeypatch.setenv(NAB_DIR_ENV, str(corpus))
    assert cli.main(["backtest", "--nab", "--out", str(tmp_path / "out"), "--detector", "fp"]) == 0
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.csv")) == [
        "fp/realA/fp_one.csv",
        "fp/realB/fp_two.csv",
    ]
    assert "backtest: 2 file(s), 4 rows in" in capsys.readouterr().out


def test_cli_reports_bad_input_without_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write(tmp_path / "bad.csv", "timestamp,cpu\n0,0.1\n60,oops")
    assert cli.main(["backtest", "--input", str(tmp_path / "bad.csv"), "--out", str(tmp_path / "o")]) == 2
    assert "bad.csv, row 2, column 'cpu': 'oops' is not a number" in capsys.readouterr().err
    assert cli.main(["backtest", "--nab", "--nab-dir", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "no NAB data under" in capsys.readouterr().err
