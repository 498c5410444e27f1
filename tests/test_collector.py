"""Publishing: the Daemon's cycle over a fake Source, the Snapshot it builds, and the
/metrics page rendered from it (stale and vanished targets included)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping

import numpy as np
import pytest
from helpers import Tiny
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from exporter.config import Settings, load_settings
from exporter.frame import Frame
from exporter.service.daemon import Daemon
from exporter.service.exposition import Exposition
from exporter.service.state import State
from exporter.snapshot import Bands, ModelInfo, Snapshot, contribution_shares, risk_levels
from exporter.sources import Fetch, QueryError

SIGNALS = ("cpu", "memory", "latency", "errors")
WINDOW = 60  # the tiny bundle's window: lookback 1h at 60 s steps, the default settings
START = 1_700_000_000.0
P1, P2, Q1 = (
    {"namespace": "a", "pod": "p1"},
    {"namespace": "a", "pod": "p2"},
    {"namespace": "b", "pod": "q1"},
)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


class FakeSource:
    """Returns whatever the test put in ``next``: a Fetch, or an exception to raise."""

    signals = SIGNALS

    def __init__(self, fetch: Fetch) -> None:
        self.next: Fetch | Exception = fetch

    def fetch(self) -> Fetch:
        if isinstance(self.next, Exception):
            raise self.next
        return self.next


@pytest.fixture(scope="module")
def settings() -> Settings:
    return load_settings(None, environ={})


def fetch_of(tiny: Tiny, *targets: Mapping[str, str], errors: tuple[QueryError, ...] = ()) -> Fetch:
    """A window of real simulated series for ``targets``; errored signals are NaN, as a Source leaves them."""
    history = tiny.history.frame
    values = history.values[: len(targets), -WINDOW:].copy()
    for error in errors:
        values[:, :, SIGNALS.index(error.signal)] = np.nan
    frame = Frame(values=values, targets=targets, timestamps=history.timestamps[-WINDOW:], signals=SIGNALS)
    return Fetch(frame=frame, errors=errors)


def every_signal_fails() -> Fetch:
    errors = tuple(QueryError(signal, "timeout", f"{signal} query timed out") for signal in SIGNALS)
    values = np.full((0, WINDOW, len(SIGNALS)), np.nan)
    frame = Frame(
        values=values, targets=(), timestamps=START - 60.0 * np.arange(WINDOW)[::-1], signals=SIGNALS
    )
    return Fetch(frame=frame, errors=errors)


def make_daemon(tiny: Tiny, settings: Settings, fetch: Fetch) -> tuple[Daemon, FakeSource, Clock]:
    source, clock = FakeSource(fetch), Clock()
    return Daemon(settings, source, tiny.bundle, clock=clock), source, clock


def samples(exposition: Exposition) -> dict[tuple[str, frozenset], float]:
    text = exposition.render()[0].decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def series(exposition: Exposition, name: str) -> dict[frozenset, float]:
    return {labels: value for (metric, labels), value in samples(exposition).items() if metric == name}


def labelled(target: Mapping[str, str], **extra: str) -> frozenset:
    return frozenset({**target, **extra}.items())


def hand_snapshot(probability: list[float], contribution: list[list[float]] | None = None) -> Snapshot:
    rows = len(probability)
    return Snapshot(
        created_at=START,
        data_time=START,
        horizon="30m",
        model=ModelInfo("v1", "2024-01-01T00:00:00+00:00", "trained"),
        signals=SIGNALS,
        targets=tuple({"namespace": "n", "pod": f"p{row}"} for row in range(rows)),
        probability=np.array(probability),
        anomaly=np.zeros(rows),
        contribution=np.array(contribution) if contribution is not None else np.zeros((rows, 4)),
    )


def test_risk_levels_at_the_thresholds():
    probability = np.array([0.0, 0.1999, 0.2, 0.3999, 0.4, 0.5999, 0.6, 0.7999, 0.8, 1.0])

    assert risk_levels(probability).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]


def test_contribution_shares_count_only_what_pushes_the_score_up():
    shares = contribution_shares(
        np.array([[1.0, 3.0, -2.0, 0.0], [-1.0, -0.5, 0.0, -3.0], [0.0, 0.0, 0.0, 2.0]])
    )

    np.testing.assert_allclose(shares, [[0.25, 0.75, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])


def test_top_signals_are_the_largest_positive_shares():
    snapshot = hand_snapshot([0.9], contribution=[[0.1, 0.6, 0.3, 0.0]])

    assert snapshot.top_signals(0) == [("memory", 0.6), ("latency", 0.3)]
    assert hand_snapshot([0.1], contribution=[[0.0, 0.0, 0.0, 0.0]]).top_signals(0) == []


def test_exported_risk_level_follows_the_thresholds():
    state = State(snapshot=hand_snapshot([0.8, 0.7999, 0.6, 0.4, 0.2, 0.1999]))
    exposition = Exposition(CollectorRegistry(), state, ("namespace", "pod"), stale_after=300, clock=Clock())

    risk = series(exposition, "failure_risk_level")

    assert {dict(labels)["pod"]: value for labels, value in risk.items()} == {
        "p0": 4,
        "p1": 3,
        "p2": 3,
        "p3": 2,
        "p4": 1,
        "p5": 0,
    }


def test_cycle_exports_every_target(tiny, settings):
    daemon, _, _ = make_daemon(tiny, settings, fetch_of(tiny, P1, P2, Q1))

    daemon.cycle()

    exported = samples(daemon.exposition)
    for target in (P1, P2, Q1):
        assert ("failure_probability", labelled(target, horizon="30m")) in exported
        assert ("failure_risk_level", labelled(target)) in exported
        assert ("anomaly_score", labelled(target)) in exported
    assert exported[("failure_predictor_targets", frozenset())] == 3
    assert exported[("failure_predictor_cycles_total", labelled({}, outcome="success"))] == 1
    assert exported[("failure_predictor_last_success_timestamp_seconds", frozenset())] == START
    manifest = tiny.bundle.manifest
    info = labelled({}, version=manifest.version, trained_at=manifest.trained_at, kind="trained")
    assert exported[("failure_predictor_model_info", info)] == 1
    assert (
        'failure_probability{namespace="a",pod="p1",horizon="30m"}' in daemon.exposition.render()[0].decode()
    )


def test_exported_values_are_the_snapshot(tiny, settings):
    daemon, _, _ = make_daemon(tiny, settings, fetch_of(tiny, P1, P2, Q1))

    daemon.cycle()

    snapshot = daemon.state.snapshot
    probability = series(daemon.exposition, "failure_probability")
    anomaly = series(daemon.exposition, "anomaly_score")
    for row, target in enumerate((P1, P2, Q1)):
        assert probability[labelled(target, horizon="30m")] == pytest.approx(float(snapshot.probability[row]))
        assert anomaly[labelled(target)] == pytest.approx(float(snapshot.anomaly[row]))
        assert 0 <= snapshot.probability[row] <= 1
        assert 0 <= snapshot.anomaly[row] <= 1


def test_anomaly_score_measures_each_target_against_its_own_history(tiny, settings):
    history = tiny.history.frame
    daemon, source, _ = make_daemon(tiny, settings, fetch_of(tiny, P1, P2))
    cycles = range(WINDOW, WINDOW + 150)
    for end in cycles:
        values = history.values[:2, end - WINDOW : end].copy()
        if end == cycles[-1]:
            values[0, -1, SIGNALS.index("latency")] *= 50  # P1's latency jumps in the last cycle
        frame = Frame(
            values=values,
            targets=(P1, P2),
            timestamps=history.timestamps[end - WINDOW : end],
            signals=SIGNALS,
        )
        source.next = Fetch(frame=frame, errors=())
        daemon.cycle()
        anomaly = daemon.state.snapshot.anomaly
        assert ((anomaly >= 0) & (anomaly <= 1)).all()
    assert anomaly[0] > 0.8 > anomaly[1]
    exported = series(daemon.exposition, "anomaly_score")
    assert exported[labelled(P1)] == pytest.approx(float(anomaly[0]))


def test_series_left_out_of_every_signal_do_not_fail_the_cycle(tiny, settings):
    """An unparsable sample drops one series, not its signal: the other targets are still scored."""
    partial = tuple(
        QueryError(s, "unparsable_samples", "1 series dropped: a sample is not a number") for s in SIGNALS
    )
    daemon, _, _ = make_daemon(tiny, settings, Fetch(fetch_of(tiny, P1, P2).frame, errors=partial))

    daemon.cycle()

    exported = samples(daemon.exposition)
    assert exported[("failure_predictor_targets", frozenset())] == 2
    assert (
        exported[
            ("failure_predictor_query_errors_total", labelled({}, signal="cpu", reason="unparsable_samples"))
        ]
        == 1
    )


def test_vanished_pod_is_forgotten_by_the_anomaly_history(tiny, settings):
    daemon, source, _ = make_daemon(tiny, settings, fetch_of(tiny, P1, P2, Q1))
    daemon.cycle()
    source.next = fetch_of(tiny, P2)
    daemon.cycle()
    assert len(daemon._normaliser) == 1


def test_contribution_shares_of_each_target_sum_to_one_or_zero(tiny, settings):
    history = tiny.history
    # Windows ending just before a failure starts, so some targets have risk to explain.
    starts = np.argwhere(history.failed[:, 1:] & ~history.failed[:, :-1])[:6]
    values = np.stack([history.frame.values[t, end - WINDOW + 1 : end + 1] for t, end in starts])
    targets = tuple({"namespace": "a", "pod": f"p{i}"} for i in range(len(values)))
    frame = Frame(values, targets, history.frame.timestamps[-WINDOW:], SIGNALS)
    daemon, _, _ = make_daemon(tiny, settings, Fetch(frame))

    daemon.cycle()

    snapshot = daemon.state.snapshot
    totals = snapshot.contribution.sum(axis=1)
    at_risk = snapshot.probability >= 0.2
    assert all(total == pytest.approx(1.0) or total == 0.0 for total in totals[at_risk]), totals
    assert (totals > 0).any()
    exported = series(daemon.exposition, "failure_probability_contribution")
    for target, total in zip(np.array(targets)[at_risk], totals[at_risk], strict=True):
        mine = [v for labels, v in exported.items() if labels >= labelled(target)]
        assert len(mine) == len(SIGNALS)
        assert sum(mine) == pytest.approx(total)


@pytest.mark.parametrize("floor", ["minimal", "low", "medium"])
def test_contribution_is_exported_only_for_targets_at_the_explain_risk_or_above(tiny, floor):
    history = tiny.history
    # Windows right before failures start and long before: some targets at risk, some not.
    starts = np.argwhere(history.failed[:, 1:] & ~history.failed[:, :-1])[:4]
    calm = [(t, WINDOW + 5) for t in range(4)]
    windows = [history.frame.values[t, end - WINDOW + 1 : end + 1] for t, end in [*starts.tolist(), *calm]]
    targets = tuple({"namespace": "a", "pod": f"p{i}"} for i in range(len(windows)))
    frame = Frame(np.stack(windows), targets, history.frame.timestamps[-WINDOW:], SIGNALS)
    settings = load_settings(None, environ={"FAILURE_PREDICTOR_EXPLAIN_MIN_RISK": floor})
    daemon, _, _ = make_daemon(tiny, settings, Fetch(frame))

    daemon.cycle()

    probability = daemon.state.snapshot.probability
    floor_probability = {"minimal": 0.0, "low": 0.2, "medium": 0.4}[floor]
    expected = {t["pod"] for t, p in zip(targets, probability, strict=True) if p >= floor_probability}
    exported = series(daemon.exposition, "failure_probability_contribution")
    assert {dict(labels)["pod"] for labels in exported} == expected
    assert len(exported) == len(expected) * len(SIGNALS)
    if floor == "low":
        assert 0 < len(expected) < len(targets), probability


def test_vanished_target_is_no_longer_exported(tiny, settings):
    daemon, source, _ = make_daemon(tiny, settings, fetch_of(tiny, P1, P2, Q1))
    daemon.cycle()

    source.next = fetch_of(tiny, P1, Q1)
    daemon.cycle()

    text = daemon.exposition.render()[0].decode()
    assert 'pod="p2"' not in text
    assert 'pod="p1"' in text and 'pod="q1"' in text
    assert samples(daemon.exposition)[("failure_predictor_targets", frozenset())] == 2


def test_every_target_gone_publishes_an_empty_snapshot(tiny, settings):
    daemon, source, _ = make_daemon(tiny, settings, fetch_of(tiny, P1, P2))
    daemon.cycle()

    source.next = fetch_of(tiny)
    daemon.cycle()

    assert daemon.state.last_error is None
    assert series(daemon.exposition, "failure_probability") == {}
    assert (
        samples(daemon.exposition)[("failure_predictor_cycles_total", labelled({}, outcome="success"))] == 2
    )
    ready, reason = daemon.readiness()
    assert ready and reason.startswith("ready, 0 targets")
    assert samples(daemon.exposition)[("failure_predictor_targets", frozenset())] == 0


def test_failed_cycle_keeps_the_previous_snapshot_until_it_is_stale(tiny, settings):
    daemon, source, clock = make_daemon(tiny, settings, fetch_of(tiny, P1, P2))
    daemon.cycle()
    source.next = every_signal_fails()

    clock.now = START + 60
    daemon.cycle()

    exported = samples(daemon.exposition)
    assert exported[("failure_predictor_cycles_total", labelled({}, outcome="failure"))] == 1
    assert exported[("failure_predictor_cycles_total", labelled({}, outcome="success"))] == 1
    assert (
        exported[("failure_predictor_query_errors_total", labelled({}, signal="memory", reason="timeout"))]
        == 1
    )
    assert len(series(daemon.exposition, "failure_probability")) == 2  # still the last good scores
    assert daemon.readiness() == (True, "ok")

    clock.now = START + settings.stale_after  # exactly stale_after old: still served
    assert len(series(daemon.exposition, "failure_probability")) == 2

    clock.now = START + settings.stale_after + 1
    daemon.cycle()

    exported = samples(daemon.exposition)
    assert exported[("failure_predictor_cycles_total", labelled({}, outcome="failure"))] == 2
    for name in (
        "failure_probability",
        "failure_risk_level",
        "anomaly_score",
        "failure_probability_contribution",
    ):
        assert series(daemon.exposition, name) == {}, name
    assert exported[("failure_predictor_last_success_timestamp_seconds", frozenset())] == START
    assert exported[("failure_predictor_model_loaded", frozenset())] == 1
    ready, reason = daemon.readiness()
    assert not ready
    assert "last successful cycle 301s ago" in reason
    assert "every signal query failed" in reason


def test_source_that_raises_fails_the_cycle_without_crashing(tiny, settings):
    daemon, source, _ = make_daemon(tiny, settings, fetch_of(tiny, P1))
    source.next = ConnectionError("connection refused")

    daemon.cycle()

    assert (
        samples(daemon.exposition)[("failure_predictor_cycles_total", labelled({}, outcome="failure"))] == 1
    )
    ready, reason = daemon.readiness()
    assert not ready
    assert reason == "no successful cycle yet: connection refused"


def test_not_ready_before_the_first_cycle(tiny, settings):
    daemon, _, _ = make_daemon(tiny, settings, fetch_of(tiny, P1))

    assert daemon.readiness() == (False, "no successful cycle yet")
    assert series(daemon.exposition, "failure_probability") == {}


def test_query_errors_are_counted_per_signal_while_the_cycle_succeeds(tiny, settings):
    errors = (
        QueryError("latency", "timeout", "latency query timed out"),
        QueryError("errors", "promql", "parse error"),
    )
    daemon, _, _ = make_daemon(tiny, settings, fetch_of(tiny, P1, P2, errors=errors))

    daemon.cycle()
    daemon.cycle()

    exported = samples(daemon.exposition)
    counted = series(daemon.exposition, "failure_predictor_query_errors_total")
    assert counted == {
        labelled({}, signal="latency", reason="timeout"): 2,
        labelled({}, signal="errors", reason="promql"): 2,
    }
    assert exported[("failure_predictor_cycles_total", labelled({}, outcome="success"))] == 2
    assert exported[("failure_predictor_cycles_total", labelled({}, outcome="failure"))] == 0
    assert len(series(daemon.exposition, "failure_probability")) == 2
    assert daemon.readiness() == (True, "ok")


def test_exposition_passes_promtool(tiny, settings):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package 'prometheus')")
    odd = {"namespace": "b", "pod": 'we"ird\\pod\nname'}  # label values that need escaping
    errors = (QueryError("latency", "timeout", "timed out"),)
    daemon, _, _ = make_daemon(tiny, settings, fetch_of(tiny, P1, P2, odd, errors=errors))
    daemon.cycle()

    checked = subprocess.run(
        [promtool, "check", "metrics"],
        input=daemon.exposition.render()[0],
        capture_output=True,
        timeout=30,
        check=False,
    )

    assert (checked.returncode, checked.stdout, checked.stderr) == (0, b"", b"")


def reference_page(snapshot: Snapshot, labels: tuple[str, ...], openmetrics: bool) -> bytes:
    """What prometheus_client itself writes for the per-target families of ``snapshot``."""
    from prometheus_client import generate_latest
    from prometheus_client.core import GaugeMetricFamily
    from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest

    from exporter.service import exposition as page

    def family(name: str, help_text: str, extra: tuple[str, ...] = ()) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, help_text, labels=[*labels, *extra])

    probability = family("failure_probability", page.PROBABILITY_HELP, ("horizon",))
    risk = family("failure_risk_level", page.RISK_HELP)
    anomaly = family("anomaly_score", page.ANOMALY_HELP)
    contribution = family("failure_probability_contribution", page.CONTRIBUTION_HELP, ("signal",))
    expected = family("signal_expected", page.EXPECTED_HELP, ("signal", "bound"))
    limit = family("signal_time_to_limit_seconds", page.LIMIT_HELP, ("signal",))
    bands = snapshot.bands
    for row, target in enumerate(snapshot.targets):
        values = [target[name] for name in labels]
        probability.add_metric([*values, snapshot.horizon], snapshot.probability[row])
        risk.add_metric(values, int(snapshot.risk[row]))
        anomaly.add_metric(values, snapshot.anomaly[row])
        if not np.isnan(snapshot.contribution[row]).any():
            for column, signal in enumerate(snapshot.signals):
                contribution.add_metric([*values, signal], snapshot.contribution[row, column])
        for column, signal in enumerate(bands.signals):
            for bound, value in zip(("lower", "mean", "upper"), bands.expected[row, column], strict=True):
                if not np.isnan(value):
                    expected.add_metric([*values, signal, bound], value)
            if not np.isnan(bands.time_to_limit[row, column]):
                limit.add_metric([*values, signal], bands.time_to_limit[row, column])

    class Families:
        def collect(self):
            return [probability, risk, anomaly, contribution, expected, limit]

    registry = CollectorRegistry()
    registry.register(Families())
    return (openmetrics_latest if openmetrics else generate_latest)(registry)


@pytest.mark.parametrize("openmetrics", [False, True], ids=["text-0.0.4", "openmetrics"])
def test_the_page_holds_what_prometheus_client_writes_for_the_same_families(openmetrics):
    rng = np.random.default_rng(0)
    targets = (
        {"pod": 'we"ird\\pod\nname', "namespace": "n"},
        {"pod": "p1", "namespace": "n"},
        {"pod": "p2-100%s-%(x)s-%%", "namespace": ""},  # the page is built as a %-format: not read as one
    )
    contribution = rng.random((3, 4))
    contribution[1] = np.nan  # not explained
    expected = rng.random((3, 4, 3)) * 1e7  # large values take Go's exponent form
    expected[0, 2] = np.nan
    limit = np.array([[123456789.5, np.nan, np.nan, np.nan], [np.nan] * 4, [60.0, 1e-9, np.inf, np.nan]])
    snapshot = Snapshot(
        created_at=START,
        data_time=START,
        horizon="30m",
        model=ModelInfo("v1", "2024-01-01T00:00:00+00:00", "trained"),
        signals=SIGNALS,
        targets=targets,
        probability=np.array([0.93, 1e-5, 0.1 + 0.2]),  # 0.30000000000000004 keeps its digits
        anomaly=np.array([0.5, 0.0, 0.99]),
        contribution=contribution,
        bands=Bands(signals=SIGNALS, expected=expected, time_to_limit=limit, history=np.full(3, 60)),
    )
    accept = "application/openmetrics-text; version=1.0.0" if openmetrics else ""
    exposition = Exposition(CollectorRegistry(), State(snapshot=snapshot), ("namespace", "pod"), 300, Clock())

    page, content_type = exposition.render(accept)

    reference = reference_page(snapshot, ("namespace", "pod"), openmetrics)
    assert ("openmetrics" in content_type) == openmetrics
    assert page.endswith(b"# EOF\n") == openmetrics
    headers = [line for line in page.decode().splitlines() if line.startswith("#")]
    assert headers == [line for line in reference.decode().splitlines() if line.startswith("#")]
    ours, theirs = parsed(page, openmetrics), parsed(reference, openmetrics)
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        if key[0].startswith("signal_"):  # bands and times to limit: 6 significant digits
            assert ours[key] == pytest.approx(value, rel=1e-5), key
        else:
            assert ours[key] == value, key


def parsed(page: bytes, openmetrics: bool) -> dict[tuple[str, frozenset], float]:
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families

    families = (openmetrics_families if openmetrics else text_string_to_metric_families)(page.decode())
    return {(s.name, frozenset(s.labels.items())): s.value for family in families for s in family.samples}
