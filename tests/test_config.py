"""Settings: YAML + environment overrides, validated with errors that name the key,
and the ``check-config`` command that reports them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from exporter.cli import main
from exporter.config import (
    CORE_SIGNALS,
    ConfigError,
    Settings,
    apply_env,
    effective_config,
    format_duration,
    load_settings,
    parse_duration,
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI reads os.environ: keep overrides from the outer shell out of these tests."""
    for key in list(os.environ):
        if key.startswith("FAILURE_PREDICTOR_"):
            monkeypatch.delenv(key)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def load(tmp_path: Path, text: str, **environ: str) -> Settings:
    return load_settings(write(tmp_path, text), environ=environ)


def check_config(path: Path | None, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["check-config", *([str(path)] if path else [])])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_defaults_are_valid_and_fill_the_four_default_queries():
    settings = load_settings(None, environ={})

    queries = settings.queries
    assert tuple(queries) == CORE_SIGNALS == ("cpu", "memory", "latency", "errors")
    for name, query in queries.items():
        assert "{by}" not in query and "{rate_window}" not in query, name
        assert "by (namespace,pod" in query, name
    assert "[5m]" in queries["cpu"]
    assert "[5m]" not in queries["memory"]  # a gauge ratio, no rate
    assert "by (namespace,pod, le)" in queries["latency"]


def test_rate_window_fills_the_queries():
    settings = load_settings(None, environ={"FAILURE_PREDICTOR_RATE_WINDOW": "90s"})

    assert "[90s]" in settings.queries["errors"]
    assert "[5m]" not in settings.queries["errors"]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90.0),
        ("1h30m", 5400.0),
        (45, 45.0),
        ("45", 45.0),
        ("500ms", 0.5),
        ("2d", 172800.0),
        (1.5, 1.5),
    ],
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["5 minutes", "1x", "m5", "", "5m garbage", 0, -5, "0s", True, None])
def test_bad_durations_are_rejected(text):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"), [(60, "1m"), (90, "90s"), (5400, "90m"), (86400, "1d"), (0.5, "500ms")]
)
def test_durations_format_back_to_the_shortest_form(seconds, text):
    assert format_duration(seconds) == text


def test_durations_in_the_config_file_become_seconds(tmp_path):
    settings = load(tmp_path, "interval: 90s\nlookback: 1h30m\nstep: 45\nprometheus:\n  timeout: 500ms\n")

    assert (settings.interval, settings.lookback, settings.step) == (90.0, 5400.0, 45.0)
    assert settings.prometheus.timeout == 0.5


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        ("intervall: 1m\n", "intervall", "unknown key"),
        ("prometheus:\n  urll: http://x:9090\n", "prometheus.urll", "unknown key"),
        ("interval: 5 minutes\n", "interval", "expected a duration"),
        ("prometheus:\n  url: ftp://x\n", "prometheus.url", "expected an http(s) URL"),
        ("prometheus:\n  url: not a url\n", "prometheus.url", "expected an http(s) URL"),
        (
            "prometheus:\n  bearer_token_file: /nonexistent/token\n",
            "prometheus.bearer_token_file",
            "does not exist",
        ),
        (
            "prometheus:\n  bearer_token: abc\n  basic_auth: {username: u, password: p}\n",
            "prometheus",
            "at most one of bearer_token",
        ),
        ("lookback: 1m\nstep: 1m\n", "(top level)", "lookback (60s) must cover at least 2 steps"),
        ("target_labels: [namespace, pod-name]\n", "target_labels", "'pod-name' is not a valid"),
        ("target_labels: [namespace, horizon]\n", "target_labels", "'horizon' is reserved"),
        ("target_labels: [signal]\n", "target_labels", "'signal' is reserved"),
        (
            "anomaly:\n  workload_source: owners\n",
            "anomaly.workload_source",
            "'auto', 'kube_pod_owner' or 'pattern'",
        ),
        ("anomaly:\n  owners: {query: ' '}\n", "anomaly.owners.query", "the owner query is empty"),
        ("anomaly:\n  owners: {selector: '{cluster=\"a\"}'}\n", "anomaly.owners.selector", "without braces"),
        ("anomaly:\n  owners: {refresh: soon}\n", "anomaly.owners.refresh", "expected a duration"),
        (
            "target_labels: [job, instance]\nanomaly:\n  workload_source: kube_pod_owner\n",
            "(top level)",
            "anomaly.workload_label ('pod') must be one of the target labels",
        ),
    ],
)
def test_invalid_settings_name_the_key(tmp_path, capsys, text, key, message):
    path = write(tmp_path, text)

    with pytest.raises(ConfigError) as error:
        load_settings(path, environ={})
    assert f"{key}: " in str(error.value)
    assert message in str(error.value)

    code, out, err = check_config(path, capsys)
    assert code == 2
    assert out == ""
    assert f"{key}: " in err
    assert message in err


def test_owner_selector_fills_every_owner_selector_and_auto_needs_pod_targets():
    settings = Settings.model_validate({"anomaly": {"owners": {"selector": 'cluster="eu-1",'}}})
    assert settings.reads_owners
    assert settings.owner_query == (
        'kube_pod_owner{cluster="eu-1",} or kube_replicaset_owner{cluster="eu-1",} or kube_job_owner{cluster="eu-1",}'
    )
    assert not Settings.model_validate({"target_labels": ["job", "instance"]}).reads_owners
    assert not Settings.model_validate({"anomaly": {"workload_source": "pattern"}}).reads_owners


def test_every_bad_key_is_reported_at_once(tmp_path):
    with pytest.raises(ConfigError) as error:
        load(tmp_path, "intervall: 1m\nprometheus:\n  url: ftp://x\n")

    assert "intervall: unknown key" in str(error.value)
    assert "prometheus.url: " in str(error.value)


def test_reserved_labels_are_rejected_from_the_environment_too():
    with pytest.raises(ConfigError, match=r"target_labels: 'horizon' is reserved"):
        load_settings(None, environ={"FAILURE_PREDICTOR_TARGET_LABELS": "[job, horizon]"})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- a\n- b\n", "must hold a mapping, got list"),
        ("just a string\n", "must hold a mapping, got str"),
        ("interval: [1m\n", "is not valid YAML"),
    ],
)
def test_config_file_that_is_not_a_mapping_is_rejected(tmp_path, capsys, text, message):
    path = write(tmp_path, text)

    with pytest.raises(ConfigError, match=message):
        load_settings(path, environ={})
    code, _, err = check_config(path, capsys)
    assert code == 2
    assert message in err
    assert str(path) in err


def test_missing_config_file_is_a_clear_error(tmp_path, capsys):
    code, _, err = check_config(tmp_path / "nope.yaml", capsys)

    assert code == 2
    assert "cannot read config file" in err
    assert "nope.yaml" in err


def test_empty_config_file_means_defaults(tmp_path):
    assert load(tmp_path, "") == load_settings(None, environ={})


def test_environment_overrides_the_file(tmp_path):
    settings = load(
        tmp_path,
        "prometheus:\n  url: http://prometheus:9090\n  timeout: 5s\n",
        FAILURE_PREDICTOR_PROMETHEUS__URL="http://thanos-query:10902/",
    )

    assert settings.prometheus.url == "http://thanos-query:10902"
    assert settings.prometheus.timeout == 5.0  # sibling keys from the file survive


def test_the_nab_corpus_variable_is_not_read_as_a_setting():
    settings = load_settings(None, environ={"FAILURE_PREDICTOR_NAB_DIR": "/data/nab"})

    assert settings == load_settings(None, environ={})


def test_target_labels_from_the_environment_drive_the_aggregation():
    settings = load_settings(None, environ={"FAILURE_PREDICTOR_TARGET_LABELS": "[job, instance]"})

    assert settings.target_labels == ("job", "instance")
    for name, query in settings.queries.items():
        assert "by (job,instance" in query, name
        assert "namespace" not in query, name


def test_empty_environment_value_disables_a_signal():
    settings = load_settings(None, environ={"FAILURE_PREDICTOR_SIGNALS__LATENCY": ""})

    assert set(settings.queries) == {"cpu", "memory", "errors"}


def test_disabling_every_signal_is_rejected():
    environ = {f"FAILURE_PREDICTOR_SIGNALS__{name.upper()}": "" for name in CORE_SIGNALS}

    with pytest.raises(ConfigError, match="at least one signal is needed"):
        load_settings(None, environ=environ)


@pytest.mark.parametrize(
    "query",
    [
        'sum by ({by}) (rate(http_requests_total{code=~"5.."}[{rate_window}]))',
        '{__name__="up", job="api"} == 0',
        '{__name__="up"}',
    ],
)
def test_promql_with_braces_from_the_environment_stays_a_string(query):
    settings = load_settings(None, environ={"FAILURE_PREDICTOR_SIGNALS__ERRORS": query})

    expected = query.replace("{by}", "namespace,pod").replace("{rate_window}", "5m")
    assert settings.queries["errors"] == expected


def test_environment_values_parse_as_yaml_scalars():
    merged = apply_env(
        {"prometheus": {"url": "http://a:9090"}},
        {
            "FAILURE_PREDICTOR_PROMETHEUS__RETRIES": "3",
            "FAILURE_PREDICTOR_PROMETHEUS__INSECURE_SKIP_VERIFY": "true",
            "FAILURE_PREDICTOR_INTERVAL": "5m",
            "OTHER_PREFIX_INTERVAL": "1s",
        },
    )

    assert merged == {
        "prometheus": {"url": "http://a:9090", "retries": 3, "insecure_skip_verify": True},
        "interval": "5m",
    }


def test_unknown_environment_key_is_reported_like_a_file_key():
    with pytest.raises(ConfigError, match="intervall: unknown key"):
        load_settings(None, environ={"FAILURE_PREDICTOR_INTERVALL": "1m"})


def test_check_config_prints_the_effective_config_with_secrets_masked(tmp_path, capsys):
    path = write(
        tmp_path,
        "interval: 90s\nprometheus:\n  url: http://prometheus:9090\n  bearer_token: s3cr3t-t0ken\n",
    )

    code, out, err = check_config(path, capsys)

    assert code == 0, err
    assert "s3cr3t-t0ken" not in out
    printed = yaml.safe_load(out)
    assert printed["prometheus"]["bearer_token"] == "<secret>"
    assert printed["prometheus"]["url"] == "http://prometheus:9090"
    assert printed["interval"] == "90s"
    assert printed["lookback"] == "1h"
    assert set(printed["signals"]) == set(CORE_SIGNALS)
    assert "{by}" not in printed["signals"]["cpu"]


def test_check_config_masks_the_basic_auth_password(tmp_path, capsys):
    path = write(tmp_path, "prometheus:\n  basic_auth: {username: admin, password: hunter2}\n")

    code, out, _ = check_config(path, capsys)

    assert code == 0
    assert "hunter2" not in out
    assert yaml.safe_load(out)["prometheus"]["basic_auth"] == {
        "username": "admin",
        "password": "<secret>",
        "password_file": None,
    }


def test_check_config_applies_environment_overrides(capsys, monkeypatch):
    monkeypatch.setenv("FAILURE_PREDICTOR_TARGET_LABELS", "[job, instance]")

    code, out, _ = check_config(None, capsys)

    assert code == 0
    printed = yaml.safe_load(out)
    assert printed["target_labels"] == ["job", "instance"]
    assert "by (job,instance)" in printed["signals"]["memory"]


def test_scheduled_refits_need_a_models_directory_not_a_single_bundle(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"model\.path must be a models directory"):
        load_settings(None, environ={"FAILURE_PREDICTOR_ANOMALY__REFIT_EVERY": "6h"})
    settings = load_settings(
        None,
        environ={"FAILURE_PREDICTOR_RETRAIN__EVERY": "7d", "FAILURE_PREDICTOR_MODEL__PATH": str(tmp_path)},
    )
    assert settings.retrain.every == 7 * 86400
    assert effective_config(settings)["retrain"] == {"every": "1w", "window": "2w"}
