"""The daemon's one HTTP port: metrics, health, current scores, predictions and the model.

Handlers only read: the current Snapshot and bundle from ``daemon.state``, the
probability history a cycle listener keeps. Everything a client sends is
validated where it enters (``predict.py`` for prediction bodies, FastAPI query
models here), so bad input is a 4xx naming the field, never a 500.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hmac
import logging
import math
import re
import time
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import unquote

import numpy as np
import orjson
import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi import Path as PathParameter
from fastapi.concurrency import run_in_threadpool
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi_offline import FastAPIOffline
from prometheus_client import CollectorRegistry, Counter, Histogram
from pydantic import BeforeValidator
from uvicorn.protocols.http.h11_impl import H11Protocol

from exporter import __version__
from exporter.config import ApiSettings, format_duration
from exporter.memory import collection_paused
from exporter.models.bundle import ModelBundle
from exporter.service.daemon import Daemon, check_compatibility, served_horizon
from exporter.service.history import ProbabilityHistory, TargetKey, target_key
from exporter.service.predict import (
    DEFAULT_TOP_FEATURES,
    MIN_POINTS,
    ApiError,
    Explained,
    ParsedBody,
    Scorer,
    describe,
    parse_request,
    problem,
    request_adapter,
    request_schema,
)
from exporter.snapshot import RISK_NAMES, Snapshot, risk_levels, top_shares

log = logging.getLogger(__name__)

TARGETS_PREFIX = "/api/v1/targets/"
OFFLOAD_BYTES = 64 * 1024  # bodies larger than this are parsed in a worker thread, off the event loop
OFFLOAD_ROWS = 64
SHUTDOWN_GRACE = 5.0  # seconds in-flight requests get to finish when the daemon stops
DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
DOCS_ASSETS = "/static-offline-docs"  # fastapi-offline's mount for the Swagger UI / ReDoc files
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)

LANDING = """<!doctype html>
<html><head><title>failure-predictor</title></head><body>
<h1>failure-predictor</h1>
<p>Predicts workload failures from Prometheus series and re-exports them as metrics.</p>
<ul>
<li><a href="/metrics">/metrics</a>: failure_probability and friends, for Prometheus to scrape</li>
<li><a href="/api/v1/targets">/api/v1/targets</a>: current scores per target (JSON)</li>
<li><a href="/api/v1/model">/api/v1/model</a>: the serving model's manifest</li>
<li>POST /api/v1/predict: score raw recent values or look up a target</li>
<li><a href="/healthz">/healthz</a>: alive</li>
<li><a href="/readyz">/readyz</a>: model loaded and a recent cycle succeeded</li>
<li><a href="/docs">/docs</a>: API documentation</li>
</ul></body></html>
"""

PREDICTION_EXAMPLE = {
    "target": None,
    "failure_probability": 0.87,
    "risk_level": "CRITICAL",
    "anomaly_score": 0.97,
    "horizon": "30m",
    "model_version": "2024-05-01T12-00-00Z-3f2a",
    "timestamp": 1714564800.0,
    "explanation": {
        "base_value": -3.1,
        "margin": 2.4,
        "signals": [{"signal": "memory", "contribution": 5.2, "share": 1.0}],
        "unattributed": 0.05,
        "top_features": [{"feature": "memory_exhaustion_steps", "value": 6.0, "contribution": 2.9}],
    },
    "recommendations": ["Memory is at 84% of its limit, growing 2.6 points per minute ..."],
}


class FastJSONResponse(JSONResponse):
    """JSON by orjson: a batch of 1,000 answers encodes in a fraction of ``json.dumps``' time
    (answers hold no NaN: ``predict.describe`` turned them into null already)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


UNAUTHORIZED: dict[int | str, dict[str, Any]] = {401: {"description": "missing or wrong bearer token"}}
UNAVAILABLE: dict[int | str, dict[str, Any]] = {503: {"description": "no model is loaded"}}


def _risk_name(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


RiskName = Annotated[Literal["MINIMAL", "LOW", "MEDIUM", "HIGH", "CRITICAL"], BeforeValidator(_risk_name)]
TopFeatures = Annotated[
    int,
    Query(ge=0, le=1000, description="how many features to list in each explanation, largest |SHAP| first"),
]


class ApiMetrics:
    """Request counts and latency by route template (bounded labels: never the raw path)."""

    _by_registry: ClassVar[weakref.WeakKeyDictionary[CollectorRegistry, ApiMetrics]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "failure_predictor_api_requests_total",
            "HTTP requests answered, by route template and status code.",
            ["route", "code"],
            registry=registry,
        )
        self.latency = Histogram(
            "failure_predictor_api_request_duration_seconds",
            "Time to answer an HTTP request, by route template.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )

    @classmethod
    def on(cls, registry: CollectorRegistry) -> ApiMetrics:
        """One set per registry, so several apps over one daemon do not register twice."""
        if registry not in cls._by_registry:
            cls._by_registry[registry] = cls(registry)
        return cls._by_registry[registry]


class RequestMetrics:
    """ASGI middleware: counts and times every request, auth failures and errors included."""

    def __init__(self, app: Any, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def record_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            template = getattr(scope.get("route"), "path", None)
            if template is None:  # FastAPI's own docs routes leave no route in the scope
                path = scope["path"]
                assets = path.startswith(f"{DOCS_ASSETS}/")
                template = path if path in DOCS_PATHS else DOCS_ASSETS if assets else "unmatched"
            template = template.replace(":path}", "}")
            self.metrics.requests.labels(template, str(status)).inc()
            self.metrics.latency.labels(template).observe(time.perf_counter() - start)


class BearerToken:
    """The expected token: fixed, or read from a file and re-read when the file changes (rotation)."""

    def __init__(self, token: str | None, path: Path | None) -> None:
        self._token, self._path, self._stamp = token, path, None
        if path is not None:
            self.current()

    def current(self) -> str:
        if self._path is None:
            return self._token or ""
        try:
            stat = self._path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp != self._stamp:
                self._token, self._stamp = self._path.read_text().strip(), stamp
        except OSError as exc:
            log.warning(
                "cannot re-read the API token file", extra={"path": str(self._path), "error": str(exc)}
            )
        return self._token or ""


# Module level: the annotations below are strings, resolved against this module's globals.
BEARER = HTTPBearer(auto_error=False, description="the token in api.token or api.token_file")


def token_guard(api: ApiSettings) -> list[Any]:
    """FastAPI dependencies that demand the bearer token; none when no token is configured."""
    if api.token is None and api.token_file is None:
        return []
    expected = BearerToken(api.token, api.token_file)

    # async: FastAPI runs a plain def dependency in a worker thread, a hop per request that also kept
    # concurrent predictions from being coalesced into one model call. A stat() (and, after a
    # rotation, one read) of a small secret file does not hold the event loop up.
    async def require_token(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
    ) -> None:
        token = expected.current().encode()
        given = credentials.credentials.encode() if credentials else b""
        if not token or not hmac.compare_digest(given, token):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    return [Depends(require_token)]


class TargetIndex:
    """Row of each target in the current Snapshot, built once per Snapshot."""

    def __init__(self) -> None:
        self._cached: tuple[Snapshot | None, dict[TargetKey, int]] = (None, {})

    def rows(self, snapshot: Snapshot) -> dict[TargetKey, int]:
        cached, rows = self._cached
        if cached is not snapshot:
            rows = {target_key(labels): row for row, labels in enumerate(snapshot.targets)}
            self._cached = (snapshot, rows)
        return rows


def create_app(daemon: Daemon, run_scheduler: bool = True) -> FastAPI:
    """The ASGI app; with ``run_scheduler`` the daemon's cycles start and stop with the server."""
    settings, api = daemon.settings, daemon.settings.api
    history = ProbabilityHistory(api.history_points)
    daemon.on_cycle.append(history.update)
    index = TargetIndex()
    scorer = Scorer(max_rows=api.max_batch)
    adapter = request_adapter(settings.target_labels)
    protected = token_guard(api)
    refusals = UNAUTHORIZED if protected else {}
    operations = protected if api.protect_metrics else []
    metrics = ApiMetrics.on(daemon.registry)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if run_scheduler:
            daemon.start()
        try:
            yield
        finally:
            daemon.stop()

    # /docs and /redoc serve Swagger UI and ReDoc from fastapi-offline's packaged copies, no CDN.
    app = FastAPIOffline(
        title="failure-predictor",
        summary="Predicts workload failures from Prometheus series.",
        version=__version__,
        swagger_ui_parameters={"validatorUrl": None},  # Swagger UI would ask validator.swagger.io
        lifespan=lifespan,
    )
    app.add_middleware(RequestMetrics, metrics=metrics)

    @app.exception_handler(ApiError)
    async def refused(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"detail": exc.errors}, status_code=exc.status)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def landing() -> str:
        return LANDING

    @app.get("/metrics", include_in_schema=False, dependencies=operations)
    def exposition(request: Request) -> Response:
        page, content_type = daemon.exposition.render(request.headers.get("accept", ""))
        return Response(page, media_type=content_type)

    @app.get("/healthz", dependencies=operations, responses=refusals if api.protect_metrics else {})
    def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get(
        "/readyz",
        dependencies=operations,
        responses={503: {"description": "not ready: no model, or no recent successful cycle (`reason`)"}}
        | (refusals if api.protect_metrics else {}),
    )
    def readyz() -> JSONResponse:
        ready, reason = daemon.readiness()
        snapshot = daemon.state.snapshot
        body = {"ready": ready, "reason": reason, "targets": 0 if snapshot is None else len(snapshot.targets)}
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/api/v1/targets", dependencies=protected, responses=refusals)
    def targets(
        sort: Annotated[Literal["probability", "anomaly", "labels"], Query()] = "probability",
        order: Annotated[
            Literal["asc", "desc"] | None,
            Query(description="default: desc for probability and anomaly, asc for labels"),
        ] = None,
        risk: Annotated[list[RiskName] | None, Query(description="only these risk levels")] = None,
        min_risk: Annotated[RiskName | None, Query(description="only this risk level and above")] = None,
        label: Annotated[
            list[str] | None,
            Query(description="target label matchers, `name=glob` or `name!=glob` (`*`, `?`, `[...]`)"),
        ] = None,
        limit: Annotated[int | None, Query(ge=1, description="at most this many targets")] = None,
    ) -> dict[str, Any]:
        """Current scores, riskiest first: probability, risk level, anomaly, top signals, advice."""
        matchers = parse_matchers(label or [], settings.target_labels)
        return targets_body(daemon, sort, order, risk, min_risk, matchers, limit)

    @app.get(
        "/api/v1/targets/{target:path}",
        dependencies=protected,
        responses=refusals
        | {
            404: {
                "description": "no such target in the latest fresh cycle, or not one value per target label"
            }
        },
    )
    def target_detail(
        request: Request,
        target: Annotated[
            str,
            PathParameter(
                description="the target's label values in the order of `target_labels`, joined by `/` "
                "(percent-encode a `/` inside a value)"
            ),
        ],
        top_features: TopFeatures = DEFAULT_TOP_FEATURES,
    ) -> dict[str, Any]:
        """One target, named by its target-label values in order (e.g. `/api/v1/targets/shop/cart-1`)."""
        raw = request.scope.get("raw_path") or request.url.path.encode()
        parts = raw.decode("latin-1").split(TARGETS_PREFIX, 1)[-1].split("/")
        labels = settings.target_labels
        if len(parts) != len(labels):
            expected = "/".join(f"<{name}>" for name in labels)
            raise ApiError(404, [problem(["path"], f"expected {TARGETS_PREFIX}{expected}", "not_found")])
        selector = dict(zip(labels, (unquote(part) for part in parts), strict=True))
        snapshot, rows = find_targets(daemon, index, [(["path"], selector)])
        body = answer_selectors(snapshot, rows, settings.step, top_features)[0]
        body["history"] = [
            {"timestamp": when, "failure_probability": probability}
            for when, probability in history.of(selector)
        ]
        return body

    @app.get("/api/v1/model", dependencies=protected, responses=refusals | UNAVAILABLE)
    def model() -> JSONResponse:
        """The serving bundle's manifest (version, training window, metrics, features) and how it is served."""
        bundle = daemon.state.bundle
        if bundle is None:
            raise ApiError(503, [problem([], "no model is loaded", "unavailable")])
        body = asdict(bundle.manifest)
        body["serving"] = {
            "horizon": format_duration(served_horizon(bundle, settings.step)),
            "step": format_duration(settings.step),
            "lookback": format_duration(settings.lookback),
            "signals": list(settings.queries),
            "differences": check_compatibility(bundle, settings),
        }
        return JSONResponse(_json_safe(body))

    @app.post(
        "/api/v1/predict",
        dependencies=protected,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}}},
            }
        },
        responses={
            200: {
                "description": 'one prediction for one observation, `{"predictions": [...]}` for a list',
                "content": {"application/json": {"example": PREDICTION_EXAMPLE}},
            },
            404: {"description": "a target selector names no target of the latest fresh cycle"},
            422: {"description": "the body is invalid; `detail` names each bad field"},
        }
        | refusals
        | UNAVAILABLE,
    )
    async def predict(request: Request, top_features: TopFeatures = DEFAULT_TOP_FEATURES) -> JSONResponse:
        """Score raw recent values per signal, or look up targets, one observation or a batch.

        Raw values go through the same window features and models as the scoring
        cycle; selectors (`{"namespace": ..., "pod": ...}`) are answered from the
        latest cycle. Each answer has the probability, risk level, anomaly score,
        SHAP explanation (log-odds: `base_value` + contributions = `margin`) and advice.
        """
        with scorer.reading():
            body = await read_body(request, api.max_body_bytes)
            bundle = daemon.state.bundle
            parse = partial(parse_request, body, adapter, bundle, api.max_batch, settings.step)
            parsed = await run_in_threadpool(parse) if len(body) > OFFLOAD_BYTES else parse()
        answers: list[Any] = [None] * parsed.size
        if parsed.selectors:
            located = [
                (["body"] if parsed.single else ["body", position], selector)
                for position, selector in parsed.selectors
            ]
            snapshot, rows = find_targets(daemon, index, located)
            found = answer_selectors(snapshot, rows, settings.step, top_features)
            for (position, _), answer in zip(parsed.selectors, found, strict=True):
                answers[position] = answer
        if parsed.values is None:
            return FastJSONResponse(answers[0] if parsed.single else {"predictions": answers})
        features, scores = await scorer.score(bundle, parsed.values, parsed.ends)
        explained = Explained.of_scores(bundle, features, scores)
        encode = partial(encoded_answers, answers, bundle, explained, parsed, top_features)
        content = await run_in_threadpool(encode) if len(parsed.values) > OFFLOAD_ROWS else encode()
        return Response(content, media_type="application/json")

    schemas: dict[Any, dict[str, Any]] = {}

    def openapi() -> dict[str, Any]:
        """The contract, exact for the serving model (its signals and window): rebuilt when a
        reload changes the bundle."""
        bundle = daemon.state.bundle
        manifest = bundle.manifest if bundle else None
        key = (manifest.signals, manifest.window_steps) if manifest else None
        if key not in schemas:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            signals, window = key or (tuple(settings.queries), MIN_POINTS)
            bodies = request_schema(settings.target_labels, signals, window, api.max_batch)
            schema.setdefault("components", {}).setdefault("schemas", {}).update(bodies)
            _document_matchers(schema, settings.target_labels)
            schemas.clear()
            schemas[key] = schema
        return schemas[key]

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _document_matchers(schema: dict[str, Any], target_labels: Sequence[str]) -> None:
    """``label`` matchers name a target label: say which in the schema (parse_matchers checks)."""
    pattern = f"^({'|'.join(re.escape(label) for label in target_labels)})!?="
    for parameter in schema["paths"]["/api/v1/targets"]["get"]["parameters"]:
        if parameter["name"] == "label":
            for option in parameter["schema"]["anyOf"]:
                if option.get("type") == "array":
                    option["items"] = {"type": "string", "pattern": pattern}


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with a 422 as soon as it is known to exceed ``limit`` bytes."""

    def too_large(size: str) -> ApiError:
        return ApiError(
            422,
            [
                problem(
                    ["body"],
                    f"the body is {size} bytes, over the limit of {limit} (api.max_body_bytes)",
                    "too_long",
                )
            ],
        )

    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(declared)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(f"more than {limit}")
        chunks.append(chunk)
    return b"".join(chunks)


def find_targets(
    daemon: Daemon, index: TargetIndex, selectors: Sequence[tuple[list[Any], dict[str, str]]]
) -> tuple[Snapshot, list[int]]:
    """The fresh Snapshot and the row of each ``(location, selector)`` in it, or a 404 saying why not."""
    snapshot = daemon.state.snapshot
    ready, reason = daemon.readiness()
    if snapshot is None or not ready:
        where = selectors[0][0]
        raise ApiError(404, [problem(where, f"no fresh scores to answer from: {reason}", "not_found")])
    known = index.rows(snapshot)
    rows, errors = [], []
    for where, selector in selectors:
        row = known.get(target_key(selector))
        if row is None:
            named = ",".join(f'{name}="{value}"' for name, value in selector.items())
            message = f"no target {{{named}}} in the latest cycle ({len(snapshot.targets)} targets)"
            errors.append(problem(where, message, "not_found"))
        rows.append(row)
    if errors:
        raise ApiError(404, errors)
    return snapshot, rows


def answer_selectors(snapshot: Snapshot, rows: Sequence[int], step: float, top: int) -> list[dict[str, Any]]:
    described = describe(Explained.of_snapshot(snapshot, rows), [step] * len(rows), top)
    model = snapshot.model.version
    return [
        _ordered(answer, dict(snapshot.targets[row]), snapshot.horizon, model, snapshot.data_time)
        for answer, row in zip(described, rows, strict=True)
    ]


def encoded_answers(
    answers: list[Any], bundle: ModelBundle, explained: Explained, parsed: ParsedBody, top: int
) -> bytes:
    """The JSON answer to ``parsed``: ``answers`` (the selectors' answers in place) with the raw
    observations' answers, scored as ``explained``, filled in.

    The garbage collector is paused meanwhile: a batch's answers are some ten containers each,
    alive until encoded, so building a thousand of them would set off full collections of every
    object the daemon holds (~200,000 here; 15-65 ms each, every few batches). They hold no
    cycles, and reference counting frees them, still within the pause, once encoded."""
    steps = parsed.steps.tolist()
    horizons = {step: format_duration(served_horizon(bundle, step)) for step in set(steps)}
    version = bundle.manifest.version
    with collection_paused():
        merged = list(answers)
        for position, answer, end, step in zip(
            parsed.raw_positions, describe(explained, steps, top), parsed.ends.tolist(), steps, strict=True
        ):
            merged[position] = _ordered(answer, None, horizons[step], version, end)
        content = orjson.dumps(merged[0] if parsed.single else {"predictions": merged})
        del merged, answer
    return content


def _ordered(
    answer: dict[str, Any], target: dict[str, str] | None, horizon: str, version: str, timestamp: float
) -> dict[str, Any]:
    return {
        "target": target,
        "failure_probability": answer["failure_probability"],
        "risk_level": answer["risk_level"],
        "anomaly_score": answer["anomaly_score"],
        "horizon": horizon,
        "model_version": version,
        "timestamp": timestamp,
        "explanation": answer["explanation"],
        "recommendations": answer["recommendations"],
    }


Matcher = tuple[str, bool, str]  # label, negated, glob


def parse_matchers(texts: Sequence[str], target_labels: Sequence[str]) -> list[Matcher]:
    matchers, errors = [], []
    for text in texts:
        found = re.fullmatch(r"([a-zA-Z_][a-zA-Z0-9_]*)(!=|=)(.*)", text, flags=re.DOTALL)
        if found is None:
            errors.append(problem(["query", "label"], f"expected name=glob or name!=glob, got {text!r}"))
        elif found[1] not in target_labels:
            errors.append(
                problem(
                    ["query", "label"],
                    f"{found[1]!r} is not a target label; targets have {list(target_labels)}",
                )
            )
        else:
            matchers.append((found[1], found[2] == "!=", found[3]))
    if errors:
        raise ApiError(422, errors)
    return matchers


def targets_body(
    daemon: Daemon,
    sort: str = "probability",
    order: str | None = None,
    risk: Sequence[str] | None = None,
    min_risk: str | None = None,
    matchers: Sequence[Matcher] = (),
    limit: int | None = None,
) -> dict[str, Any]:
    """Current scores, filtered and sorted; empty with a reason when there is no fresh snapshot."""
    snapshot = daemon.state.snapshot
    ready, reason = daemon.readiness()
    if snapshot is None or not ready:
        return {"ready": ready, "reason": reason, "total": 0, "targets": []}
    levels = risk_levels(snapshot.probability)
    keep = levels >= (RISK_NAMES.index(min_risk) if min_risk else 0)
    if risk:
        keep &= np.isin(levels, [RISK_NAMES.index(name) for name in risk])
    rows = [
        row
        for row in keep.nonzero()[0].tolist()
        if all(
            fnmatch.fnmatchcase(snapshot.targets[row].get(name, ""), glob) != negated
            for name, negated, glob in matchers
        )
    ]
    descending = (order or ("asc" if sort == "labels" else "desc")) == "desc"
    if sort == "labels":
        rows.sort(key=lambda row: tuple(snapshot.targets[row].values()), reverse=descending)
    else:
        score = (snapshot.probability if sort == "probability" else snapshot.anomaly)[rows]
        order_of = np.argsort(-score if descending else score, kind="stable")
        rows = np.asarray(rows, dtype=np.intp)[order_of].tolist()
    total, rows = len(rows), rows[:limit]
    explained = Explained.of_snapshot(snapshot, rows)
    advice = describe(explained, [daemon.settings.step] * len(rows), 0)
    return {
        "ready": True,
        "data_time": snapshot.data_time,
        "horizon": snapshot.horizon,
        "model_version": snapshot.model.version,
        "total": total,
        "targets": [
            {
                "labels": dict(snapshot.targets[row]),
                "failure_probability": round(float(snapshot.probability[row]), 6),
                "risk_level": RISK_NAMES[levels[row]],
                "anomaly_score": round(float(snapshot.anomaly[row]), 6),
                "top_signals": [
                    {"signal": signal, "share": round(share, 4)}
                    for signal, share in top_shares(snapshot.signals, shares)
                ],
                "recommendations": described["recommendations"],
            }
            for row, described, shares in zip(rows, advice, explained.shares, strict=True)
        ],
    }


def _json_safe(value: Any) -> Any:
    """NaN and infinities (e.g. an undefined training metric) become null: JSON has no spelling for them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return value


class _CoalescedWrites:
    """A transport that sends what one loop turn writes in one ``send``: uvicorn writes an
    answer's status line and headers, its body and its end separately, and with TCP_NODELAY
    each write is a packet and a wake-up of the client (on a loaded 2-core host ~0.7 ms per
    send for a lone client). Large writes go out at once, after what is pending."""

    LARGE = 64 * 1024

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if len(data) >= self.LARGE:
            self.flush()
            self._transport.write(data)
            return
        if not self._pending:
            asyncio.get_running_loop().call_soon(self.flush)
        self._pending.append(data)

    def flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CoalescingH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol over ``_CoalescedWrites``, which it flushes as soon as an
    answer is complete: the client has it while the handler's epilogue (middleware, metrics)
    still runs, instead of a loop turn later."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_CoalescedWrites(transport))  # type: ignore[arg-type]

    def on_response_complete(self) -> None:
        self.transport.flush()  # type: ignore[attr-defined]
        super().on_response_complete()


def make_server(daemon: Daemon, address: str, port: int) -> uvicorn.Server:
    """A uvicorn server for the app (HTTPS with api.tls_*); ``server.run()`` blocks, ``should_exit`` stops it."""
    api = daemon.settings.api
    config = uvicorn.Config(
        create_app(daemon),
        host=address,
        port=port,
        log_level="warning",
        access_log=False,
        http=CoalescingH11Protocol,
        ssl_certfile=str(api.tls_cert_file) if api.tls_cert_file else None,
        ssl_keyfile=str(api.tls_key_file) if api.tls_key_file else None,
        # Idle keep-alive TLS clients otherwise hold a shutdown for asyncio's 30 s close_notify wait.
        timeout_graceful_shutdown=SHUTDOWN_GRACE,
    )
    return uvicorn.Server(config)
