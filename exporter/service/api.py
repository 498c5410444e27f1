"""The daemon's one HTTP port: metrics, health, and the current scores as JSON."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from prometheus_client.exposition import choose_encoder

from exporter.service.daemon import Daemon
from exporter.snapshot import RISK_NAMES

LANDING = """<!doctype html>
<html><head><title>failure-predictor</title></head><body>
<h1>failure-predictor</h1>
<p>Predicts workload failures from Prometheus series and re-exports them as metrics.</p>
<ul>
<li><a href="/metrics">/metrics</a>: failure_probability and friends, for Prometheus to scrape</li>
<li><a href="/api/v1/targets">/api/v1/targets</a>: current scores per target (JSON)</li>
<li><a href="/healthz">/healthz</a>: alive</li>
<li><a href="/readyz">/readyz</a>: model loaded and a recent cycle succeeded</li>
<li><a href="/docs">/docs</a>: API documentation</li>
</ul></body></html>
"""


def create_app(daemon: Daemon, run_scheduler: bool = True) -> FastAPI:
    """The ASGI app; with ``run_scheduler`` the daemon's cycles start and stop with the server."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if run_scheduler:
            daemon.start()
        try:
            yield
        finally:
            daemon.stop()

    app = FastAPI(title="failure-predictor", lifespan=lifespan)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def landing() -> str:
        return LANDING

    @app.get("/metrics", include_in_schema=False)
    def metrics(request: Request) -> Response:
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encoder(daemon.registry), media_type=content_type)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        ready, reason = daemon.readiness()
        return JSONResponse({"ready": ready, "reason": reason}, status_code=200 if ready else 503)

    @app.get("/api/v1/targets")
    def targets() -> dict[str, Any]:
        return targets_body(daemon)

    return app


def targets_body(daemon: Daemon) -> dict[str, Any]:
    """Current scores, riskiest first; empty with a reason when there is no fresh snapshot."""
    snapshot = daemon.state.snapshot
    ready, reason = daemon.readiness()
    if snapshot is None or not ready:
        return {"ready": ready, "reason": reason, "targets": []}
    levels = snapshot.risk
    rows = sorted(range(len(snapshot.targets)), key=lambda row: -snapshot.probability[row])
    return {
        "ready": True,
        "data_time": snapshot.data_time,
        "horizon": snapshot.horizon,
        "model_version": snapshot.model.version,
        "targets": [
            {
                "labels": dict(snapshot.targets[row]),
                "failure_probability": round(float(snapshot.probability[row]), 6),
                "risk_level": RISK_NAMES[levels[row]],
                "anomaly_score": round(float(snapshot.anomaly[row]), 6),
                "top_signals": [
                    {"signal": signal, "share": round(share, 4)}
                    for signal, share in snapshot.top_signals(row)
                ],
            }
            for row in rows
        ],
    }


def make_server(daemon: Daemon, address: str, port: int) -> uvicorn.Server:
    """A uvicorn server for the app; ``server.run()`` blocks, ``should_exit`` stops it."""
    config = uvicorn.Config(
        create_app(daemon), host=address, port=port, log_level="warning", access_log=False
    )
    return uvicorn.Server(config)
