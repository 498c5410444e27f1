"""Session-wide real servers: one fake workload and one Prometheus scraping it.

Tests that disturb a server (stop it, remove pods or targets) should build their
own from ``servers``/``workload`` instead, so test order never matters.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from helpers import Tiny, train_tiny_bundle
from servers import PrometheusServer
from workload import Workload

from exporter.frame import Frame

if TYPE_CHECKING:
    from mixin import MonitoringStack


@pytest.fixture(scope="session")
def workload() -> Iterator[Workload]:
    """20 fake pods, one leaky and one erroring, served until the session ends."""
    with Workload() as served:
        yield served


@pytest.fixture(scope="session")
def prometheus(workload: Workload, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    """A real Prometheus that has scraped ``workload`` (job ``workload``) at least twice, so rates exist."""
    server = PrometheusServer(tmp_path_factory.mktemp("prometheus"))
    server.add_target("workload", workload.address)
    with server:
        selector = f'container_cpu_usage_seconds_total{{namespace="{workload.namespace}"}}'
        server.wait_for(f"count(rate({selector}[10s])) == {len(workload.pods)}", timeout=30)
        yield server


@pytest.fixture(scope="module")
def mixin_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MonitoringStack]:
    """The monitoring mixin running for real (see tests/mixin.py): Prometheus with the shipped
    rules, Alertmanager with the example routing, a webhook, and two real daemons. Per module,
    so that its daemons do not keep cycling while the rest of the suite runs."""
    from mixin import monitoring_stack  # imported here: only the mixin tests pay for it

    with monitoring_stack(tmp_path_factory.mktemp("mixin")) as running:
        yield running


@pytest.fixture(scope="session")
def tiny() -> Tiny:
    """A small bundle trained on two simulated days (tests/helpers.py), shared by model and service tests."""
    return train_tiny_bundle()


@pytest.fixture(scope="session")
def frame(tiny: Tiny) -> Frame:
    """A window of risky and healthy simulated targets for the API tests (tests/apiserver.py)."""
    from apiserver import history_frame

    return history_frame(tiny)
