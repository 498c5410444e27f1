"""The real HTTP server around a Daemon whose source is a fixed Frame, for the API tests.

The windows are real simulated series from the tiny bundle's history: some end
right before a failure starts (so there is risk to explain), some are healthy.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import uvicorn
from helpers import Tiny
from servers import free_port

from exporter.config import Settings
from exporter.frame import Frame
from exporter.service.api import create_app
from exporter.service.daemon import Daemon
from exporter.sources import Fetch

WINDOW = 60  # the tiny bundle's window, and the default lookback / step
SIGNALS = ("cpu", "memory", "latency", "errors")


class FixedSource:
    """Yields ``frame`` every cycle until a test replaces it."""

    signals = SIGNALS

    def __init__(self, frame: Frame) -> None:
        self.frame = frame

    def fetch(self) -> Fetch:
        return Fetch(frame=self.frame)


def history_frame(tiny: Tiny, risky: int = 6, healthy: int = 4) -> Frame:
    """Windows ending just before failures start, then windows of targets that stay healthy."""
    history = tiny.history
    starts = np.argwhere(history.failed[:, 1:] & ~history.failed[:, :-1])
    starts = starts[starts[:, 1] >= WINDOW][:risky]
    calm = [t for t in range(len(history.failed)) if not history.failed[t, -WINDOW * 2 :].any()][:healthy]
    windows = [history.frame.values[t, end - WINDOW + 1 : end + 1] for t, end in starts]
    windows += [history.frame.values[t, -WINDOW:] for t in calm]
    targets = tuple({"namespace": "shop", "pod": f"risky-{i}"} for i in range(len(starts)))
    targets += tuple({"namespace": "batch", "pod": f"calm-{i}"} for i in range(len(calm)))
    return Frame(np.stack(windows), targets, history.frame.timestamps[-WINDOW:], SIGNALS)


def observation(frame: Frame, row: int, **extra: Any) -> dict[str, Any]:
    """The raw-values body that describes row ``row`` of ``frame`` (NaN gaps as null)."""
    signals = {
        name: [None if np.isnan(v) else v for v in frame.values[row, :, i].tolist()]
        for i, name in enumerate(frame.signals)
    }
    return {"signals": signals, "timestamp": frame.end, **extra}


def settings_with(**api: Any) -> Settings:
    return Settings.model_validate({"api": api})


@contextmanager
def serving(server: uvicorn.Server) -> Iterator[str]:
    """Run ``server`` in a thread until the block ends; yields its base URL."""
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(500):
            if server.started or not thread.is_alive():
                break
            threading.Event().wait(0.01)
        assert server.started, "the API server did not start"
        config = server.config
        scheme = "https" if config.ssl_certfile else "http"
        yield f"{scheme}://{config.host}:{config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=2)
        server.force_exit = True  # the test's idle keep-alive TLS connections need not close first
        thread.join(timeout=10)


def app_server(daemon: Daemon, run_scheduler: bool = False) -> uvicorn.Server:
    """Like ``api.make_server`` but, by default, cycles only when the test calls ``daemon.cycle()``."""
    app = create_app(daemon, run_scheduler=run_scheduler)
    return uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning", access_log=False)
    )


def labels_of(item: Mapping[str, Any]) -> tuple[str, str]:
    return item["labels"]["namespace"], item["labels"]["pod"]
