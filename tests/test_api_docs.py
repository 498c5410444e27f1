"""/docs and /redoc work without the internet: every asset they load is served by the daemon."""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import urljoin, urlparse

import pytest
import requests
from apiserver import FixedSource, app_server, history_frame, serving
from helpers import Tiny

from exporter.config import Settings
from exporter.service.daemon import Daemon


@pytest.fixture(scope="module")
def base(tiny: Tiny) -> Iterator[str]:
    daemon = Daemon(Settings(), FixedSource(history_frame(tiny)), tiny.bundle)
    with serving(app_server(daemon)) as url:
        yield url


def referenced(html: str) -> list[str]:
    """Everything a browser would fetch or follow: src/href attributes, url(...) and bare URLs."""
    found = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html)
    found += re.findall(r"""url:\s*["']([^"']+)["']""", html)
    found += re.findall(r"""spec-url\s*=\s*["']([^"']+)["']""", html)
    found += re.findall(r"https?://[^\s\"'<>)]+", html)
    return found


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_page_loads_nothing_from_another_host(base: str, page: str):
    response = requests.get(f"{base}{page}", timeout=5)
    assert response.status_code == 200
    urls = referenced(response.text)
    assert any(u.endswith(".js") for u in urls), "the page loads its script"
    for url in urls:
        assert not urlparse(url).netloc, f"{page} references {url}"
    for url in urls:
        asset = requests.get(urljoin(f"{base}{page}", url), timeout=5)
        assert asset.status_code == 200, url
        assert asset.content, url


def test_swagger_ui_is_told_not_to_call_the_online_validator(base: str):
    assert '"validatorUrl": null' in requests.get(f"{base}/docs", timeout=5).text


def test_docs_assets_are_counted_under_one_route(base: str):
    requests.get(f"{base}/docs", timeout=5)
    requests.get(f"{base}/static-offline-docs/swagger-ui.css", timeout=5)
    metrics = requests.get(f"{base}/metrics", timeout=5).text
    assert 'code="200",route="/static-offline-docs"' in metrics
    assert 'route="/static-offline-docs/swagger-ui.css"' not in metrics
