import re
from dataclasses import dataclass

import numpy as np
import pytest

from exporter.sources.simulate import (
    SIGNALS,
    History,
    SimulatedCluster,
    SimulateSource,
    simulate_history,
)

CPU, MEMORY, LATENCY, ERRORS = range(4)
FAILING = {"memory_leak", "cpu_saturation", "latency_degradation", "error_burst"}
LOOKALIKES = {"load_spike", "memory_sawtooth", "error_blip", "cache_warmup"}
STEP = 60.0


@dataclass(frozen=True)
class Walk:
    """A cluster stepped one sample at a time, with its ground truth at every step."""

    cluster: SimulatedCluster
    values: np.ndarray  # [targets, steps, signals]
    scenarios: np.ndarray  # [targets, steps] scenario names
    failed: np.ndarray  # [targets, steps]


def walk(targets: int, steps: int, seed: int, incident_rate: float = 2.5, realistic: bool = False) -> Walk:
    """The clean cluster unless asked: the scenario tests check each shape on its own."""
    cluster = SimulatedCluster(targets=targets, seed=seed, incident_rate=incident_rate, realistic=realistic)
    values, scenarios, failed = [], [], []
    for _ in range(steps):
        values.append(cluster.advance(1))
        scenarios.append(cluster.scenarios())
        failed.append(cluster.failed())
    return Walk(
        cluster=cluster,
        values=np.concatenate(values, axis=1),
        scenarios=np.array(scenarios).T,
        failed=np.array(failed).T,
    )


@pytest.fixture(scope="module")
def busy() -> History:
    return simulate_history(targets=40, steps=3 * 1440, seed=3, incident_rate=20, realistic=False)


@pytest.fixture(scope="module")
def busy_walk() -> Walk:
    return walk(targets=20, steps=2000, seed=5, incident_rate=30)


def index(history: History, t: float) -> int:
    return int(np.searchsorted(history.frame.timestamps, t))


def incidents_of(history: History, kind: str) -> list:
    found = [i for i in history.incidents if i.kind == kind]
    assert len(found) >= 10, f"too few {kind} incidents to test"
    return found


def test_same_seed_gives_identical_history() -> None:
    first = simulate_history(targets=10, steps=2000, seed=7, incident_rate=20)
    second = simulate_history(targets=10, steps=2000, seed=7, incident_rate=20)
    np.testing.assert_array_equal(first.frame.values, second.frame.values)
    assert first.incidents == second.incidents
    assert first.frame.targets == second.frame.targets


def test_different_seeds_give_different_histories() -> None:
    first = simulate_history(targets=10, steps=500, seed=1)
    second = simulate_history(targets=10, steps=500, seed=2)
    assert not np.allclose(first.frame.values, second.frame.values, equal_nan=True)


def test_one_long_advance_equals_many_single_steps() -> None:
    at_once = SimulatedCluster(targets=8, seed=11, incident_rate=30)
    stepwise = SimulatedCluster(targets=8, seed=11, incident_rate=30)
    whole = at_once.advance(1500)
    pieces = np.concatenate([stepwise.advance(1) for _ in range(1500)], axis=1)
    assert np.array_equal(whole, pieces, equal_nan=True)
    assert at_once.incidents == stepwise.incidents
    assert at_once.now == stepwise.now


def test_memory_leak_reaches_limit_before_oom_incident(busy: History) -> None:
    memory = busy.frame.values[..., MEMORY]
    for incident in incidents_of(busy, "memory_leak"):
        at = index(busy, incident.start)
        ramp = memory[incident.target, at - 40 : at]
        assert np.nanmax(ramp[-2:]) >= 0.97  # at the limit, or thrashing just under it
        ok = ~np.isnan(ramp)
        assert np.polyfit(np.arange(40)[ok], ramp[ok], 1)[0] > 0


@pytest.mark.parametrize(
    ("kind", "signal", "exceeds"),
    [
        ("cpu_saturation", CPU, lambda value, usual: value > 1.0),
        ("latency_degradation", LATENCY, lambda value, usual: value > 5 * usual),
        ("error_burst", ERRORS, lambda value, usual: 0.03 < value <= 0.05),
    ],
)
def test_failing_scenario_shows_its_signal_before_the_incident(
    busy: History, kind: str, signal: int, exceeds
) -> None:
    series = busy.frame.values[..., signal]
    for incident in incidents_of(busy, kind):
        at = index(busy, incident.start)
        before = np.nanmax(series[incident.target, at - 2 : at])
        assert exceeds(before, np.nanmedian(series[incident.target]))


def test_error_burst_crosses_the_failure_threshold_only_when_the_failure_starts(busy: History) -> None:
    errors = busy.frame.values[..., ERRORS]
    for incident in incidents_of(busy, "error_burst"):
        at = index(busy, incident.start)
        ramp = slice(max(at - 30, 0), at)
        healthy = ~busy.failed[incident.target, ramp]  # an earlier failure may sit in the window
        assert np.nanmax(errors[incident.target, ramp][healthy]) <= 0.05
        assert np.nanmax(errors[incident.target, at : at + 3]) > 0.05


def test_latency_degradation_grows_over_the_last_twenty_minutes(busy: History) -> None:
    latency = busy.frame.values[..., LATENCY]
    for incident in incidents_of(busy, "latency_degradation"):
        at = index(busy, incident.start)
        assert np.nanmax(latency[incident.target, at - 2 : at]) > np.nanmin(
            latency[incident.target, at - 20 : at - 15]
        )


def test_restart_leaves_a_gap_when_a_target_fails(busy: History) -> None:
    for incident in busy.incidents:
        assert np.isnan(busy.frame.values[incident.target, index(busy, incident.start)]).all()


def test_oom_restart_brings_memory_back_to_baseline(busy: History) -> None:
    memory = busy.frame.values[..., MEMORY]
    for incident in incidents_of(busy, "memory_leak"):
        failed = memory[incident.target, index(busy, incident.start) : index(busy, incident.end)]
        assert np.nanmax(failed) < 0.8


def test_failed_mask_marks_incident_periods(busy: History) -> None:
    expected = np.zeros_like(busy.failed)
    times = busy.frame.timestamps
    for incident in busy.incidents:
        expected[incident.target] |= (times >= incident.start) & (times < incident.end)
        assert 3 <= (incident.end - incident.start) / STEP <= 10
    assert expected.any()
    np.testing.assert_array_equal(busy.failed, expected)


def test_incidents_are_in_time_order_and_only_of_failing_kinds(busy: History) -> None:
    starts = [incident.start for incident in busy.incidents]
    assert starts == sorted(starts)
    assert {incident.kind for incident in busy.incidents} == FAILING


def test_lookalikes_do_not_create_incidents(busy_walk: Walk) -> None:
    names = busy_walk.scenarios
    ended = (names[:, :-1] != names[:, 1:]) & np.isin(names[:, :-1], list(LOOKALIKES))
    assert ended.sum() >= 20
    assert "failed" not in set(names[:, 1:][ended])
    assert {i.kind for i in busy_walk.cluster.incidents} <= FAILING


def test_failing_scenarios_end_in_a_failure(busy_walk: Walk) -> None:
    names = busy_walk.scenarios
    ended = (names[:, :-1] != names[:, 1:]) & np.isin(names[:, :-1], list(FAILING))
    assert ended.sum() >= 20
    assert set(names[:, 1:][ended]) == {"failed"}


def test_lookalikes_stay_below_failure_thresholds(busy_walk: Walk) -> None:
    lookalike = np.isin(busy_walk.scenarios, list(LOOKALIKES))
    values = busy_walk.values[lookalike]
    assert np.nanmax(values[:, CPU]) < 1.0
    assert np.nanmax(values[:, MEMORY]) < 0.9
    assert np.nanmax(values[:, ERRORS]) < 0.05


def test_failed_state_matches_scenarios_and_incidents(busy_walk: Walk) -> None:
    np.testing.assert_array_equal(busy_walk.failed, busy_walk.scenarios == "failed")
    starts = busy_walk.failed[:, 1:] & ~busy_walk.failed[:, :-1]
    assert starts.sum() == len(busy_walk.cluster.incidents) - busy_walk.failed[:, 0].sum()


def test_values_stay_in_plausible_ranges(busy: History) -> None:
    values = busy.frame.values
    assert np.nanmin(values[..., [CPU, MEMORY, ERRORS]]) >= 0
    assert np.nanmax(values[..., CPU]) <= 1.5
    assert np.nanmax(values[..., MEMORY]) <= 1.0
    assert np.nanmin(values[..., LATENCY]) > 0
    assert np.nanmax(values[..., ERRORS]) <= 1.0
    healthy = ~busy.failed
    assert np.nanmedian(values[..., CPU][healthy]) < 0.8
    assert 0.03 <= np.nanmedian(values[..., LATENCY][healthy]) <= 0.5
    assert np.nanmedian(values[..., ERRORS][healthy]) < 0.005


def test_scrape_misses_are_rare_but_present() -> None:
    values = simulate_history(targets=40, steps=2000, seed=4, incident_rate=0, realistic=False).frame.values
    missing = np.isnan(values).all(axis=-1)
    assert np.array_equal(missing, np.isnan(values).any(axis=-1))
    assert 0.002 < missing.mean() < 0.01


def test_quiet_cluster_has_no_incidents() -> None:
    history = simulate_history(targets=20, steps=1440, seed=4, incident_rate=0)
    assert history.incidents == ()
    assert not history.failed.any()


def test_cpu_follows_a_daily_cycle() -> None:
    history = simulate_history(targets=20, steps=2 * 1440, seed=6, incident_rate=0, realistic=False)
    cpu = history.frame.values[..., CPU]
    angle = 2 * np.pi * history.frame.timestamps / 86_400
    design = np.column_stack([np.ones_like(angle), np.sin(angle), np.cos(angle)])
    fitted = []
    for row in cpu:
        ok = ~np.isnan(row)
        coef = np.linalg.lstsq(design[ok], row[ok], rcond=None)[0]
        fitted.append(1 - np.var(row[ok] - design[ok] @ coef) / np.var(row[ok]))
    assert np.median(fitted) > 0.5


def test_noise_is_autocorrelated() -> None:
    errors = simulate_history(targets=20, steps=1440, seed=6, incident_rate=0, realistic=False).frame.values[
        ..., ERRORS
    ]
    log = np.log(errors) - np.nanmean(np.log(errors), axis=1, keepdims=True)
    lag = np.nansum(log[:, 1:] * log[:, :-1]) / np.nansum(log * log)
    assert lag > 0.7


def test_default_rate_gives_a_few_scenarios_per_target_day() -> None:
    names = walk(targets=30, steps=2 * 1440, seed=8).scenarios
    starts = ((names[:, :-1] == "healthy") & (names[:, 1:] != "healthy")).sum()
    assert 1.5 <= starts / (30 * 2) <= 4


def test_labels_are_unique_kubernetes_pods() -> None:
    labels = SimulatedCluster(targets=200, seed=9).labels
    assert labels == SimulatedCluster(targets=200, seed=9).labels
    assert len({label["pod"] for label in labels}) == 200
    assert {label["namespace"] for label in labels} == {"shop", "payments", "search", "auth"}
    assert all(re.fullmatch(r"[a-z-]+-[a-z0-9]{4}-[a-z0-9]{5}", label["pod"]) for label in labels)


def test_source_window_rolls_forward_by_one_step() -> None:
    source = SimulateSource(SimulatedCluster(targets=5, seed=2), window=30)
    first = source.fetch().frame
    second = source.fetch().frame
    assert first.values.shape == (5, 30, len(SIGNALS))
    assert source.signals == SIGNALS == second.signals
    np.testing.assert_array_equal(second.values[:, :-1], first.values[:, 1:])
    np.testing.assert_array_equal(second.timestamps, first.timestamps + STEP)
    assert second.step == STEP


def test_source_frames_are_not_changed_by_later_fetches() -> None:
    source = SimulateSource(SimulatedCluster(targets=5, seed=2), window=30)
    first = source.fetch().frame
    kept = first.values.copy()
    source.fetch()
    np.testing.assert_array_equal(first.values, kept)
    with pytest.raises(ValueError):
        first.values[0, 0, 0] = 1.0


@pytest.mark.parametrize("steps_per_fetch", [1, 5, 20])
def test_source_windows_match_the_cluster_history(steps_per_fetch: int) -> None:
    window, fetches = 12, 4
    source = SimulateSource(SimulatedCluster(targets=6, seed=3), window, steps_per_fetch)
    for _ in range(fetches):
        result = source.fetch()
    total = window + fetches * steps_per_fetch
    history = simulate_history(targets=6, steps=total, seed=3).frame
    np.testing.assert_array_equal(result.frame.values, history.values[:, -window:])
    np.testing.assert_array_equal(result.frame.timestamps, history.timestamps[-window:])
    assert result.errors == ()


@pytest.mark.parametrize(
    "make",
    [
        lambda: SimulatedCluster(targets=0),
        lambda: SimulatedCluster(step=0),
        lambda: SimulatedCluster(incident_rate=-1),
        lambda: SimulateSource(SimulatedCluster(targets=1), window=0),
        lambda: SimulateSource(SimulatedCluster(targets=1), window=5, steps_per_fetch=0),
    ],
)
def test_invalid_arguments_are_rejected(make) -> None:
    with pytest.raises(ValueError):
        make()


@pytest.fixture(scope="module")
def real() -> Walk:
    return walk(targets=60, steps=3 * 1440, seed=12, incident_rate=6, realistic=True)


def healthy_rows(real: Walk) -> np.ndarray:
    """Rows of healthy targets that run no failing scenario: what must not page anyone."""
    return np.isin(real.scenarios, ["healthy", *LOOKALIKES, "noisy_neighbour", "rollout"])


def test_realistic_pods_lack_whole_signals_as_real_pods_do(real: Walk) -> None:
    reports = real.cluster.reports
    never = np.isnan(real.values).all(axis=1)
    np.testing.assert_array_equal(never, ~reports)
    assert reports[:, [CPU, MEMORY]].all()
    share = reports.mean(axis=0)
    assert 0.4 < share[LATENCY] < 0.8 and 0.45 < share[ERRORS] < 0.85
    assert (~reports[:, LATENCY] & ~reports[:, ERRORS]).sum() >= 10  # no HTTP metrics at all


def test_pods_without_limits_report_cores_and_burstable_memory_above_one(real: Walk) -> None:
    healthy = healthy_rows(real)
    cpu, memory = real.values[..., CPU], real.values[..., MEMORY]
    over_one = [
        (np.nanmedian(series[row][healthy[row]]) > 1.0) for series in (cpu, memory) for row in range(60)
    ]
    assert sum(over_one[:60]) >= 2  # pods of more than a core, no limit
    assert sum(over_one[60:]) >= 3  # burstable pods above their request


def test_idle_pods_use_almost_no_cpu_and_report_latency_only_sometimes(real: Walk) -> None:
    cpu = np.nanmedian(real.values[..., CPU], axis=1)
    latency_present = np.isfinite(real.values[..., LATENCY]).mean(axis=1)
    idle = (cpu < 0.012) & real.cluster.reports[:, LATENCY]
    assert idle.sum() >= 2
    assert ((latency_present[idle] > 0.05) & (latency_present[idle] < 0.75)).all()
    assert (np.nanmin(real.values[..., CPU], axis=1) < 0.006).any()


def test_healthy_pods_have_scrape_gaps_of_several_minutes(real: Walk) -> None:
    silent = np.isnan(real.values).all(axis=-1) & healthy_rows(real)
    runs = silent[:, 2:] & silent[:, 1:-1] & silent[:, :-2]
    assert runs.any(axis=1).sum() >= 20
    assert silent.mean() < 0.03


def test_healthy_lookalikes_cross_static_thresholds(real: Walk) -> None:
    healthy = healthy_rows(real)
    values = real.values
    limited_memory = np.nanmax(values[..., MEMORY], axis=1) <= 1.0
    hot = (values[..., MEMORY] > 0.9) & healthy & limited_memory[:, None]
    assert hot.any(axis=1).sum() >= 2
    served = real.cluster.reports[:, LATENCY]
    latency = values[served][..., LATENCY]
    slow = (latency > 3 * np.nanmedian(latency, axis=1, keepdims=True)) & healthy[served]
    assert slow.sum() >= 20


def test_realistic_scenarios_need_the_signal_that_shows_them(real: Walk) -> None:
    reports = real.cluster.reports
    kinds_of = {row: set(real.scenarios[row]) for row in range(60)}
    for row, kinds in kinds_of.items():
        if not reports[row, LATENCY]:
            assert "latency_degradation" not in kinds
        if not reports[row, ERRORS]:
            assert "error_burst" not in kinds and "error_blip" not in kinds
    assert {i.kind for i in real.cluster.incidents} == FAILING | {"hang"}


def test_a_hung_pod_stops_reporting_requests_before_it_fails(real: Walk) -> None:
    hangs = [i for i in real.cluster.incidents if i.kind == "hang"]
    assert len(hangs) >= 5
    for incident in hangs:
        at = int(
            np.searchsorted(real.cluster.now - STEP * np.arange(real.values.shape[1])[::-1], incident.start)
        )
        before = real.values[incident.target, at - 3 : at]
        assert np.isnan(before[:, [LATENCY, ERRORS]]).all()
        assert np.isfinite(before[:, MEMORY]).any()


def test_incidents_start_at_any_time_of_day() -> None:
    history = simulate_history(targets=60, steps=4 * 1440, seed=13, incident_rate=6)
    hours = np.array([(i.start % 86_400) // 3600 for i in history.incidents])
    quarters = np.bincount((hours // 6).astype(int), minlength=4) / len(hours)
    assert len(hours) > 200
    assert (quarters > 0.18).all()


@pytest.mark.parametrize("step", [15.0, 300.0])
def test_other_step_sizes_keep_scenarios_in_minutes(step: float) -> None:
    steps = int(2 * 86_400 / step)
    history = simulate_history(targets=30, steps=steps, seed=14, step=step, incident_rate=10, realistic=False)
    assert history.frame.step == step
    leaks = [i for i in history.incidents if i.kind == "memory_leak"]
    assert leaks
    memory = history.frame.values[..., MEMORY]
    for incident in leaks:
        at = int(np.searchsorted(history.frame.timestamps, incident.start))
        assert np.nanmax(memory[incident.target, max(at - 2, 0) : at]) >= 0.8  # at most 10 min before
    for incident in history.incidents:
        assert 3 * step <= incident.end - incident.start <= 10 * step


def test_realistic_cluster_is_deterministic_by_seed() -> None:
    first = SimulatedCluster(targets=20, seed=21)
    second = SimulatedCluster(targets=20, seed=21)
    np.testing.assert_array_equal(first.advance(3000), second.advance(3000))
    np.testing.assert_array_equal(first.reports, second.reports)
    assert first.incidents == second.incidents
