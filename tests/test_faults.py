"""The fault matrix (issue 13): each fault made for real, and what the daemon must do about it.

A real Prometheus scrapes a TextExporter whose series each test writes (absurd values,
clashing label sets, pods that vanish), and real proxies stand between the daemon and
Prometheus where the fault lives on the wire: one that drips its answer a byte at a time,
one that terminates TLS (with or without demanding a client certificate), one that wants
credentials. Files are corrupted on disk, signals are sent to real processes. In every
case the daemon keeps serving, scores every target it can and says what is wrong.

Each test uses metric names of its own, so the shared Prometheus needs no reset.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import xgboost as xgb
import yaml
from apiserver import app_server, serving
from certs import Authority
from helpers import booster_of
from prometheus_client.parser import text_string_to_metric_families
from servers import (
    TEST_SPEED,
    AuthProxy,
    DaemonServer,
    DripProxy,
    PrometheusServer,
    SilentServer,
    TextExporter,
    free_port,
)

from exporter.cli import main
from exporter.config import BOOTSTRAP_MODEL, ConfigError, Settings, load_settings
from exporter.models.bundle import CLASSIFIER_FILE, MANIFEST, ModelBundle, load_bundle, save_bundle
from exporter.models.registry import activate, resolve
from exporter.service.daemon import Daemon
from exporter.sources.prometheus import PrometheusSource

NAMESPACE = "faults"
SECRET_PASSWORD = "hunter2-secret"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def exporter() -> Iterator[TextExporter]:
    with TextExporter() as served:
        yield served


@pytest.fixture(scope="module")
def fault_prometheus(
    exporter: TextExporter, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrometheusServer]:
    server = PrometheusServer(tmp_path_factory.mktemp("faults-prometheus"))
    server.add_target("faults", exporter.address)
    with server:
        server.wait_for('up{job="faults"} == 1', timeout=30)
        yield server


@pytest.fixture(scope="module")
def bundle() -> ModelBundle:
    """The shipped bootstrap bundle: 60-step windows, which TEST_SPEED gives at 1 s steps."""
    return load_bundle(resolve(BOOTSTRAP_MODEL))


def gauges(name: str, values: Mapping[str, float], **labels: str) -> str:
    """Exposition text: one ``name`` series per pod, with extra ``labels`` on each."""
    extra = "".join(f',{key}="{value}"' for key, value in labels.items())
    lines = [f"# TYPE {name} gauge"]
    lines += [
        f'{name}{{namespace="{NAMESPACE}",pod="{pod}"{extra}}} {value!r}' for pod, value in values.items()
    ]
    return "\n".join(lines) + "\n"


def publish(prometheus: PrometheusServer, exporter: TextExporter, text: str, settled: str) -> None:
    """Serve ``text`` and wait until ``settled`` holds in Prometheus and the newest whole step has it."""
    exporter.text = text
    prometheus.wait_for(settled, timeout=20)
    time.sleep(1.2)


def fault_settings(url: str, signals: Mapping[str, str | None], **overrides: Any) -> Settings:
    """TEST_SPEED with only ``signals`` enabled and quick, bounded queries."""
    prometheus = {"url": url, "timeout": "2s", "retries": 0, **overrides.pop("prometheus", {})}
    disabled = dict.fromkeys(("cpu", "memory", "latency", "errors"))
    return Settings.model_validate(
        {**TEST_SPEED, **overrides, "prometheus": prometheus, "signals": {**disabled, **signals}}
    )


def in_process(settings: Settings, bundle: ModelBundle) -> Daemon:
    return Daemon(settings, PrometheusSource(settings), bundle)


def metric(daemon: Daemon, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(daemon.exposition.render()[0].decode()):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


def pods_of(daemon: Daemon) -> set[str]:
    snapshot = daemon.state.snapshot
    return set() if snapshot is None else {target["pod"] for target in snapshot.targets}


# 1. One absurd sample ----------------------------------------------------------------------


ABSURD = {"huge": 1e308, "big": 1e200, "wide": 1e40}
CALM = {"calm-1": 0.3, "calm-2": 0.45}


def test_one_absurd_sample_is_missing_for_its_target_only_and_every_target_is_scored(
    fault_prometheus: PrometheusServer, exporter: TextExporter, bundle: ModelBundle
) -> None:
    pods = {**ABSURD, **CALM}
    text = gauges("absurd_cpu", pods) + gauges("absurd_memory", dict.fromkeys(pods, 0.5))
    publish(fault_prometheus, exporter, text, f"count(absurd_cpu) == {len(pods)}")
    daemon = in_process(
        fault_settings(fault_prometheus.url, {"cpu": "absurd_cpu", "memory": "absurd_memory"}), bundle
    )

    daemon.cycle()

    assert daemon.readiness() == (True, "ok"), daemon.state.last_error
    snapshot = daemon.state.snapshot
    assert pods_of(daemon) == set(pods)
    assert np.isfinite(snapshot.probability).all() and np.isfinite(snapshot.anomaly).all()
    names, inputs = snapshot.explanations.features, snapshot.explanations.values
    rows = {target["pod"]: row for row, target in enumerate(snapshot.targets)}
    cpu_last, memory_last = names.index("cpu_last"), names.index("memory_last")
    for pod in ABSURD:
        assert np.isnan(inputs[rows[pod], cpu_last]), f"{pod}: an unusable cpu value must read as missing"
        assert inputs[rows[pod], memory_last] == 0.5, f"{pod}: its other signals are still used"
    for pod in CALM:
        assert np.isfinite(inputs[rows[pod], cpu_last]) and inputs[rows[pod], memory_last] == 0.5


class NativeFailure:
    """A source whose fetch makes XGBoost fail for real (its message carries a native stack
    trace). The cycle itself no longer reaches XGBoost with such input, so the fault is
    raised here, where the daemon meets it like any unexpected error."""

    signals = ("memory",)

    def __init__(self, bundle: ModelBundle) -> None:
        self._booster = booster_of(bundle)

    def fetch(self) -> Any:
        width = self._booster.num_features()
        return self._booster.predict(xgb.DMatrix(np.full((1, width), np.inf), missing=np.nan))


def test_a_native_error_reaches_readyz_as_its_headline_only(bundle: ModelBundle) -> None:
    """/readyz is unauthenticated: an error's first line only, never a stack trace."""
    daemon = Daemon(Settings(), NativeFailure(bundle), bundle)

    with serving(app_server(daemon)) as url:
        daemon.cycle()
        answer = requests.get(f"{url}/readyz", timeout=10)

    assert answer.status_code == 503
    reason = answer.json()["reason"]
    assert "Input data contains `inf`" in reason, "the headline says what XGBoost refused"
    assert "Stack trace" not in reason and "[bt]" not in reason and "\n" not in reason


def test_backtest_of_a_file_with_an_absurd_sample_completes(tmp_path: Path) -> None:
    rows = ["timestamp,target,cpu,memory"]
    for i in range(120):
        for target in ("absurd", "calm"):
            cpu = 1e308 if (target == "absurd" and i == 80) else 0.3 + 0.01 * math.sin(i / 7)
            rows.append(f"{1_700_000_000 + 60 * i},{target},{cpu!r},0.5")
    recording = tmp_path / "recording.csv"
    recording.write_text("\n".join(rows) + "\n")

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "exporter",
            "backtest",
            "--input",
            str(recording),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
    )

    assert done.returncode == 0, done.stderr[-2000:]
    assert "[bt]" not in done.stderr
    scored = np.genfromtxt(
        tmp_path / "out" / "backtest.csv", delimiter=",", names=True, dtype=None, encoding=None
    )
    assert len(scored) == 240
    assert np.isfinite(scored["failure_probability"]).all()


# 2. Bundles: activation and staging ----------------------------------------------------------


def versioned(bundle: ModelBundle, version: str) -> ModelBundle:
    return dataclasses.replace(bundle, manifest=dataclasses.replace(bundle.manifest, version=version))


def corrupt_classifier(path: Path) -> None:
    (path / CLASSIFIER_FILE).write_bytes(b"not a model")


def edit_features(path: Path) -> None:
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["features"] = manifest["features"][:-1]
    (path / MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize("damage", [corrupt_classifier, edit_features])
def test_models_activate_refuses_a_bundle_that_cannot_load_and_active_stays(
    bundle: ModelBundle, tmp_path: Path, damage: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    for version in ("v1", "v2"):
        save_bundle(versioned(bundle, version), tmp_path / version)
    activate(tmp_path, "v1")
    damage(tmp_path / "v2")

    code = main(["models", "activate", str(tmp_path), "v2"])

    assert code != 0
    assert "v2" in capsys.readouterr().err
    assert resolve(tmp_path) == (tmp_path / "v1").resolve()
    assert load_bundle(resolve(tmp_path)).manifest.version == "v1", "the next start still loads"


def test_train_stopped_while_writing_leaves_no_staging_directory(tmp_path: Path) -> None:
    """SIGTERM (what Kubernetes sends a CronJob pod) while the bundle is being written."""
    out = tmp_path / "models"
    out.mkdir()
    command = [
        "train",
        "--source",
        "simulate",
        "--targets",
        "12",
        "--days",
        "2",
        "--out",
        str(out / "bootstrap-x"),
    ]
    trainer = subprocess.Popen(
        [sys.executable, "-m", "exporter", *command],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while trainer.poll() is None and time.monotonic() < deadline:
            if any(name.startswith(".") for name in os.listdir(out)):
                trainer.send_signal(signal.SIGTERM)
                break
            time.sleep(0.001)
        else:
            pytest.fail("the trainer finished (or hung) before its staging directory was seen")
        code = trainer.wait(30)
    finally:
        trainer.kill()
        trainer.wait()

    assert code != 0
    assert os.listdir(out) == [], "a staging directory (or a half bundle) was left behind"


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_next_save_removes_staging_directories_that_killed_writers_left(
    bundle: ModelBundle, tmp_path: Path
) -> None:
    """What SIGKILL or an OOM kill leaves (no handler runs), then a save into the same directory."""
    from exporter.models.staging import STALE_AFTER, _host

    ours = tmp_path / f".v0.staging-{_host()}-{dead_pid()}-abcd1234"
    foreign_old = tmp_path / ".v0.staging-trainerpod-7-efgh5678"
    foreign_new = tmp_path / ".v0.staging-trainerpod-8-ijkl9012"
    for leftover in (ours, foreign_old, foreign_new):
        leftover.mkdir()
        (leftover / CLASSIFIER_FILE).write_bytes(b"half written")
    hour_ago = time.time() - STALE_AFTER - 60
    os.utime(foreign_old, (hour_ago, hour_ago))

    save_bundle(versioned(bundle, "v1"), tmp_path / "v1")

    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["v1", foreign_new.name]), (
        "a live write of another host (a trainer pod on the shared volume) must be left alone"
    )


# 4. Deadlines and shutdown -----------------------------------------------------------------


def test_a_dripping_proxy_is_cut_off_at_the_query_deadline_counted_and_logged(
    fault_prometheus: PrometheusServer,
    exporter: TextExporter,
    bundle: ModelBundle,
    caplog: pytest.LogCaptureFixture,
) -> None:
    publish(fault_prometheus, exporter, gauges("drip_memory", CALM), f"count(drip_memory) == {len(CALM)}")
    drip = DripProxy(fault_prometheus.url, interval=0.2)
    timing = {"timeout": "1s", "deadline": "2500ms", "retries": 2, "backoff": "100ms"}
    settings = fault_settings(drip.url, {"memory": "drip_memory", "cpu": "drip_memory"}, prometheus=timing)
    daemon = in_process(settings, bundle)
    caplog.set_level(logging.WARNING)
    try:
        cycle = threading.Thread(target=daemon.cycle, daemon=True)
        started = time.monotonic()
        cycle.start()
        cycle.join(timeout=15)
        elapsed = time.monotonic() - started
        assert not cycle.is_alive(), "the dripping proxy still holds the cycle"
    finally:
        drip.close()

    assert drip.dripping >= 2, "the proxy did drip"
    assert elapsed < 2.5 + 1.5, f"the cycle took {elapsed:.1f}s with a 2.5s query deadline"
    for signal_name in ("cpu", "memory"):
        assert (
            metric(daemon, "failure_predictor_query_errors_total", signal=signal_name, reason="deadline") == 1
        )
    logged = [
        r
        for r in caplog.records
        if r.getMessage() == "query failed" and getattr(r, "reason", "") == "deadline"
    ]
    assert len(logged) == 2 and "2.5s query deadline" in logged[0].error


def test_sigterm_with_a_hung_prometheus_exits_within_seconds(tmp_path: Path) -> None:
    """At the shipped query settings (timeout 10s, 2 retries) a hung Prometheus used to hold
    SIGTERM for ~31s, past Kubernetes' default 30s grace period."""
    silent = SilentServer()
    daemon = DaemonServer(tmp_path, {**TEST_SPEED, "prometheus": {"url": silent.url}})
    try:
        daemon.start()
        deadline = time.monotonic() + 20
        while not silent.connections and time.monotonic() < deadline:
            time.sleep(0.05)
        assert silent.connections, "the daemon never queried"
        time.sleep(0.5)
        seconds = daemon.seconds_to_exit(signal.SIGTERM, timeout=20)
    finally:
        daemon.stop()
        silent.close()

    assert seconds < 5, f"SIGTERM took {seconds:.1f}s with queries in flight\n{daemon.log_tail()}"
    log_text = daemon.log_path.read_text()
    assert "Traceback" not in log_text


# 5. max_targets --------------------------------------------------------------------------------


def test_vanished_pods_take_no_slots_and_targets_over_max_targets_are_counted_and_warned(
    fault_prometheus: PrometheusServer,
    exporter: TextExporter,
    bundle: ModelBundle,
    caplog: pytest.LogCaptureFixture,
) -> None:
    vanished = {"a-gone-1": 0.3, "a-gone-2": 0.3}  # sort first: on main they took the slots
    live = {"b-1": 0.4, "b-2": 0.4, "b-3": 0.4}
    publish(
        fault_prometheus, exporter, gauges("slots_memory", {**vanished, **live}), "count(slots_memory) == 5"
    )
    publish(fault_prometheus, exporter, gauges("slots_memory", live), "count(slots_memory) == 3")
    daemon = in_process(
        fault_settings(fault_prometheus.url, {"memory": "slots_memory"}, max_targets=3), bundle
    )
    caplog.set_level(logging.WARNING)

    daemon.cycle()

    assert pods_of(daemon) == set(live)
    assert metric(daemon, "failure_predictor_targets_dropped") == 0
    assert not [r for r in caplog.records if "max_targets" in r.getMessage()]

    publish(
        fault_prometheus, exporter, gauges("slots_memory", {**live, "c-4": 0.4}), "count(slots_memory) == 4"
    )
    daemon.cycle()
    daemon.cycle()

    assert len(pods_of(daemon)) == 3
    assert metric(daemon, "failure_predictor_targets_dropped") == 1
    assert metric(daemon, "failure_predictor_targets") == 3
    warned = [r for r in caplog.records if r.getMessage() == "targets over max_targets are not scored"]
    assert len(warned) == 1, "warned once per change, not every cycle"
    assert warned[0].dropped == 1 and warned[0].max_targets == 3


# 6. Silent clashes -----------------------------------------------------------------------------


def test_label_clashes_are_logged_once_per_change_with_the_query_and_an_example(
    fault_prometheus: PrometheusServer,
    exporter: TextExporter,
    bundle: ModelBundle,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A memory query selecting limits by pod alone also gets the CPU limit (the fault matrix's case)."""
    text = (
        gauges("clash_limit", CALM, resource="cpu")
        + gauges("clash_limit", CALM, resource="memory").split("\n", 1)[1]
    )
    publish(fault_prometheus, exporter, text, f"count(clash_limit) == {2 * len(CALM)}")
    flat = "sum by (namespace) (clash_limit)"
    daemon = in_process(fault_settings(fault_prometheus.url, {"memory": "clash_limit", "cpu": flat}), bundle)
    caplog.set_level(logging.INFO)

    for _ in range(3):
        daemon.cycle()

    duplicates = [r for r in caplog.records if r.getMessage().startswith("several series per target")]
    assert len(duplicates) == 1
    assert duplicates[0].signal == "memory" and duplicates[0].query == "clash_limit"
    assert {example["resource"] for example in duplicates[0].example} == {"cpu", "memory"}
    unlabelled = [r for r in caplog.records if r.getMessage().startswith("series without every target label")]
    assert len(unlabelled) == 1
    assert unlabelled[0].query == flat and unlabelled[0].example == {"namespace": NAMESPACE}
    assert (
        metric(daemon, "failure_predictor_query_errors_total", signal="memory", reason="duplicate_series")
        == 3
    )
    assert metric(daemon, "failure_predictor_query_errors_total", signal="cpu", reason="missing_labels") == 3


def test_a_selector_that_matches_nothing_says_ready_with_0_targets(
    fault_prometheus: PrometheusServer, bundle: ModelBundle
) -> None:
    daemon = in_process(
        fault_settings(fault_prometheus.url, {"memory": 'clash_limit{namespace="nowhere"}'}), bundle
    )

    with serving(app_server(daemon)) as url:
        daemon.cycle()
        ready = requests.get(f"{url}/readyz", timeout=10)
        exposition = requests.get(f"{url}/metrics", timeout=10).text

    assert ready.status_code == 200
    assert ready.json()["reason"].startswith("ready, 0 targets")
    assert ready.json()["targets"] == 0
    assert "\nfailure_predictor_targets 0.0\n" in exposition


# 7. Secrets ------------------------------------------------------------------------------------


def test_credentials_in_the_url_are_masked_in_the_start_log_errors_and_readyz(
    fault_prometheus: PrometheusServer, tmp_path: Path
) -> None:
    basic = base64.b64encode(f"reader:{SECRET_PASSWORD}".encode()).decode()
    proxy = AuthProxy(fault_prometheus.url, {"Authorization": f"Basic {basic}"})
    url = proxy.url.replace("http://", f"http://reader:{SECRET_PASSWORD}@")
    config = {**TEST_SPEED, "prometheus": {"url": url, "timeout": "1s", "retries": 0}}
    daemon = DaemonServer(tmp_path, config)
    try:
        with daemon:
            wait_until(lambda: daemon.get("/readyz").status_code == 200, "the credentials never worked")
            proxy.close()
            wait_until(lambda: daemon.get("/readyz").status_code == 503, "the outage was never noticed")
            reason = daemon.get("/readyz").json()["reason"]
    finally:
        proxy.close()

    assert SECRET_PASSWORD not in reason and "reader" not in reason
    assert "cannot connect to http://<secret>@127.0.0.1" in reason
    lines = [json.loads(line) for line in daemon.log_path.read_text().splitlines()]
    assert SECRET_PASSWORD not in json.dumps(lines)
    starting = next(line for line in lines if line["msg"] == "starting")
    assert starting["prometheus"] == f"http://<secret>@{proxy.url.removeprefix('http://')}"
    assert any(line["msg"] == "query failed" and "<secret>" in line["error"] for line in lines)


def test_check_config_masks_header_values_and_url_credentials(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.yaml"
    headers = {"Authorization": "Basic c2VjcmV0LXZhbHVl", "X-Scope-OrgID": "tenant-a"}
    url = f"http://reader:{SECRET_PASSWORD}@127.0.0.1:{free_port()}"
    config.write_text(yaml.safe_dump({"prometheus": {"url": url, "headers": headers}}))

    main(["check-config", str(config)])

    out, err = capsys.readouterr()
    for secret in (SECRET_PASSWORD, "c2VjcmV0LXZhbHVl", "tenant-a"):
        assert secret not in out and secret not in err
    printed = yaml.safe_load(out)["prometheus"]
    assert printed["headers"] == {"Authorization": "<secret>", "X-Scope-OrgID": "<secret>"}
    assert printed["url"].startswith("http://<secret>@127.0.0.1:")


# 8. TLS --------------------------------------------------------------------------------------


@pytest.fixture
def corporate_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """REQUESTS_CA_BUNDLE as corporate images set it: a CA that signed nothing we talk to."""
    corporate = Authority(tmp_path, "corporate")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(corporate.cert))
    return corporate.cert


def test_ca_file_wins_over_requests_ca_bundle_in_the_environment(
    fault_prometheus: PrometheusServer, exporter: TextExporter, tmp_path: Path, corporate_bundle: Path
) -> None:
    publish(fault_prometheus, exporter, gauges("tls_memory", CALM), f"count(tls_memory) == {len(CALM)}")
    ours = Authority(tmp_path, "ours")
    proxy = AuthProxy(fault_prometheus.url, tls=ours.server_context())
    try:
        trusted = fault_settings(proxy.url, {"memory": "tls_memory"}, prometheus={"ca_file": str(ours.cert)})
        fetch = PrometheusSource(trusted).fetch()
        by_environment = PrometheusSource(fault_settings(proxy.url, {"memory": "tls_memory"})).fetch()
    finally:
        proxy.close()

    assert fetch.errors == ()
    assert {t["pod"] for t in fetch.frame.targets} == set(CALM)
    assert [e.reason for e in by_environment.errors] == ["tls"], (
        "without ca_file the environment's CA applies"
    )


def test_insecure_skip_verify_wins_over_the_environment_and_logs_one_json_line(
    fault_prometheus: PrometheusServer, tmp_path: Path, corporate_bundle: Path
) -> None:
    proxy = AuthProxy(fault_prometheus.url, tls=Authority(tmp_path, "unknown").server_context())
    config = {**TEST_SPEED, "prometheus": {"url": proxy.url, "insecure_skip_verify": True, "retries": 0}}
    daemon = DaemonServer(tmp_path / "daemon", config)
    try:
        with daemon:
            wait_until(lambda: daemon.get("/readyz").status_code == 200, "insecure_skip_verify was ignored")
            served = len(proxy.requests)
            wait_until(lambda: len(proxy.requests) >= served + 8, "the daemon stopped querying")
    finally:
        proxy.close()

    lines = daemon.log_path.read_text().splitlines()
    entries = [json.loads(line) for line in lines]  # every line is JSON: no plain-text warnings
    assert not [line for line in lines if "InsecureRequestWarning" in line]
    assert len([e for e in entries if "verification is off" in e["msg"]]) == 1


def test_client_certificate_is_presented_for_mtls(
    fault_prometheus: PrometheusServer, exporter: TextExporter, tmp_path: Path
) -> None:
    publish(fault_prometheus, exporter, gauges("mtls_memory", CALM), f"count(mtls_memory) == {len(CALM)}")
    authority = Authority(tmp_path)
    client = authority.issue("client", client=True)
    proxy = AuthProxy(fault_prometheus.url, tls=authority.server_context(require_client_cert=True))
    tls = {"ca_file": str(authority.cert)}
    try:
        with_cert = fault_settings(
            proxy.url,
            {"memory": "mtls_memory"},
            prometheus={**tls, "cert_file": str(client.cert), "key_file": str(client.key)},
        )
        accepted = PrometheusSource(with_cert).fetch()
        refused = PrometheusSource(
            fault_settings(proxy.url, {"memory": "mtls_memory"}, prometheus=tls)
        ).fetch()
    finally:
        proxy.close()

    assert accepted.errors == ()
    assert {t["pod"] for t in accepted.frame.targets} == set(CALM)
    assert [e.reason for e in refused.errors] in (["tls"], ["connection"])


@pytest.mark.parametrize(
    ("prometheus", "message"),
    [
        ({"cert_file": "CERT"}, "set both cert_file and key_file"),
        ({"cert_file": "CERT", "key_file": "CERT"}, "not a usable PEM certificate and key"),
    ],
)
def test_client_certificate_settings_are_checked_at_start(
    tmp_path: Path, prometheus: dict, message: str
) -> None:
    cert = Authority(tmp_path).cert
    values = {key: str(cert) if value == "CERT" else value for key, value in prometheus.items()}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"prometheus": values}))
    with pytest.raises(ConfigError, match=message):
        load_settings(config, environ={})


# 9. check-config -------------------------------------------------------------------------------


def check_config(
    tmp_path: Path, config: dict, capsys: pytest.CaptureFixture[str], *flags: str
) -> tuple[int, str]:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    code = main(["check-config", *flags, str(path)])
    return code, capsys.readouterr().err


def test_check_config_rejects_promql_that_does_not_parse(
    fault_prometheus: PrometheusServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prometheus = {"url": fault_prometheus.url}
    code, err = check_config(tmp_path, {"prometheus": prometheus, "signals": {"errors": "rate(x["}}, capsys)

    assert code == 2
    assert "signals.errors: PromQL does not parse" in err and "parse error" in err
    assert "signals.cpu" not in err, "the default queries parse"

    code, err = check_config(tmp_path, {"prometheus": prometheus}, capsys)
    assert code == 0, err


def test_check_config_parses_the_owner_query_with_its_selector(
    fault_prometheus: PrometheusServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prometheus = {"url": fault_prometheus.url}
    broken = {"owners": {"query": "kube_pod_owner{{selector}} or", "selector": 'cluster="eu-1"'}}
    code, err = check_config(tmp_path, {"prometheus": prometheus, "anomaly": broken}, capsys)
    assert code == 2
    assert "anomaly.owners.query: PromQL does not parse" in err
    assert 'query: kube_pod_owner{cluster="eu-1",} or' in err

    unchecked = {"workload_source": "pattern", **broken}
    code, err = check_config(tmp_path, {"prometheus": prometheus, "anomaly": unchecked}, capsys)
    assert code == 0, "with workload_source pattern the owner query never runs"


def test_check_config_says_when_it_cannot_check_the_promql(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, err = check_config(tmp_path, {"prometheus": {"url": url}, "signals": {"errors": "rate(x["}}, capsys)

    assert code == 0
    assert f"the PromQL syntax was not checked: cannot ask Prometheus at {url}" in err


def test_check_config_rejects_a_model_path_that_does_not_load(
    bundle: ModelBundle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = check_config(tmp_path, {"model": {"path": str(tmp_path / "missing")}}, capsys, "--offline")
    assert code == 2 and "model.path:" in err

    save_bundle(bundle, tmp_path / "broken")
    corrupt_classifier(tmp_path / "broken")
    code, err = check_config(tmp_path, {"model": {"path": str(tmp_path / "broken")}}, capsys, "--offline")
    assert code == 2 and "model.path:" in err and CLASSIFIER_FILE in err

    code, err = check_config(tmp_path, {}, capsys, "--offline")
    assert code == 0, err


def wait_until(check: Any, message: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except requests.RequestException:
            pass
        time.sleep(0.25)
    pytest.fail(f"{message} within {timeout:g}s")
