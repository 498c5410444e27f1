"""Bearer-token protection of the API (from config, env or a rotating file), optional
protection of /metrics and the health checks, HTTPS with a certificate made here,
and the config errors for each of them."""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml
from apiserver import FixedSource, app_server, observation, serving, settings_with
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from helpers import Tiny
from servers import free_port

from exporter.config import ConfigError, load_settings
from exporter.frame import Frame
from exporter.service.api import make_server
from exporter.service.daemon import Daemon

TOKEN = "s3cret-token"
API_ROUTES = ("/api/v1/targets", "/api/v1/targets/shop/risky-0", "/api/v1/model")
OPERATIONS = ("/metrics", "/healthz", "/readyz")


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("FAILURE_PREDICTOR_"):
            monkeypatch.delenv(key)


def served(tiny: Tiny, frame: Frame, **api: object) -> Iterator[str]:
    daemon = Daemon(settings_with(**api), FixedSource(frame), tiny.bundle)
    with serving(app_server(daemon)) as url:
        daemon.cycle()
        yield url


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def get(url: str, token: str | None = None) -> requests.Response:
    return requests.get(url, headers=bearer(token) if token else {}, timeout=30)


def test_without_a_token_everything_is_open(tiny, frame):
    for base in served(tiny, frame):
        for path in (*API_ROUTES, *OPERATIONS):
            assert get(f"{base}{path}").status_code == 200, path


def test_token_protects_the_api_but_not_metrics_or_health(tiny, frame):
    for base in served(tiny, frame, token=TOKEN):
        for path in API_ROUTES:
            refused = get(f"{base}{path}")
            assert refused.status_code == 401, path
            assert refused.headers["WWW-Authenticate"] == "Bearer"
            assert get(f"{base}{path}", "wrong").status_code == 401, path
            assert get(f"{base}{path}", TOKEN).status_code == 200, path
        for path in (*OPERATIONS, "/docs", "/openapi.json"):
            assert get(f"{base}{path}").status_code == 200, path
        predict = f"{base}/api/v1/predict"
        assert requests.post(predict, json=observation(frame, 0), timeout=30).status_code == 401
        answer = requests.post(predict, json=observation(frame, 0), headers=bearer(TOKEN), timeout=30)
        assert answer.status_code == 200
        basic = requests.get(f"{base}/api/v1/targets", auth=("user", TOKEN), timeout=30)
        assert basic.status_code == 401
        exposition = get(f"{base}/metrics").text
        assert 'failure_predictor_api_requests_total{code="401",route="/api/v1/targets"}' in exposition


def test_protect_metrics_covers_metrics_and_health_too(tiny, frame):
    for base in served(tiny, frame, token=TOKEN, protect_metrics=True):
        for path in OPERATIONS:
            assert get(f"{base}{path}").status_code == 401, path
            assert get(f"{base}{path}", TOKEN).status_code == 200, path
        assert get(f"{base}/docs").status_code == 200


def test_token_file_is_reread_when_it_is_rotated(tiny, frame, tmp_path):
    path = tmp_path / "token"
    path.write_text("first-token\n")
    for base in served(tiny, frame, token_file=path):
        assert get(f"{base}/api/v1/model", "first-token").status_code == 200
        path.write_text("second-token-after-rotation\n")
        assert get(f"{base}/api/v1/model", "first-token").status_code == 401
        assert get(f"{base}/api/v1/model", "second-token-after-rotation").status_code == 200
        path.unlink()  # a vanished file keeps the last token rather than opening the API
        assert get(f"{base}/api/v1/model", "second-token-after-rotation").status_code == 200
        assert get(f"{base}/api/v1/model").status_code == 401


def test_token_from_the_environment(clean_environment, tmp_path):
    settings = load_settings(None, environ={"FAILURE_PREDICTOR_API__TOKEN": TOKEN})

    assert settings.api.token == TOKEN


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def test_tls_serves_https_with_the_configured_certificate(tiny, frame, tmp_path):
    cert, key = self_signed(tmp_path)
    daemon = Daemon(
        settings_with(tls_cert_file=cert, tls_key_file=key, token=TOKEN), FixedSource(frame), tiny.bundle
    )
    port = free_port()
    with serving(make_server(daemon, "127.0.0.1", port)) as base:
        assert base == f"https://127.0.0.1:{port}"
        assert requests.get(f"{base}/healthz", verify=str(cert), timeout=30).status_code == 200
        answer = requests.post(
            f"{base}/api/v1/predict",
            json=observation(frame, 0),
            headers=bearer(TOKEN),
            verify=str(cert),
            timeout=30,
        )
        assert answer.status_code == 200
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(f"{base}/healthz", timeout=30)  # not trusted without the certificate
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(f"http://127.0.0.1:{port}/healthz", timeout=30)  # no plain HTTP on that port


@pytest.mark.parametrize(
    ("api", "message"),
    [
        ({"protect_metrics": True}, "protect_metrics needs a token or token_file"),
        ({"token": TOKEN, "token_file": "TOKEN_FILE"}, "set at most one of token, token_file"),
        ({"token": " padded "}, "no surrounding whitespace"),
        ({"token_file": "/nonexistent/token"}, "does not exist"),
        ({"token_file": "EMPTY_FILE"}, "is empty"),
        ({"tls_cert_file": "CERT"}, "set both tls_cert_file and tls_key_file"),
        (
            {"tls_cert_file": "TOKEN_FILE", "tls_key_file": "TOKEN_FILE"},
            "not a usable PEM certificate and key",
        ),
        ({"max_batch": 0}, "api.max_batch"),
        ({"max_body_bytes": 10}, "api.max_body_bytes"),
        ({"tokn": TOKEN}, "api.tokn: unknown key"),
    ],
)
def test_bad_api_settings_name_the_key(clean_environment, tmp_path, api, message):
    cert, _ = self_signed(tmp_path)
    (tmp_path / "token").write_text(TOKEN)
    (tmp_path / "empty").write_text("\n")
    files = {"TOKEN_FILE": tmp_path / "token", "EMPTY_FILE": tmp_path / "empty", "CERT": cert}
    api = {
        key: str(files.get(value, value)) if isinstance(value, str) else value for key, value in api.items()
    }
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"api": api}))

    with pytest.raises(ConfigError) as raised:
        load_settings(config, environ={})

    assert message in str(raised.value)
