"""The control plane's ASGI app: the REST API under /api/v1, /healthz, /readyz, /metrics."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from urllib.parse import quote

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.routing import Match

from zgate_control import adminlog, console, problems, wakeup
from zgate_control.api import ROUTERS
from zgate_control.console.session import SignInRequired
from zgate_control.db import Database, DatabaseError
from zgate_control.metrics import ControlMetrics
from zgate_control.settings import ControlSettings

__all__ = ["API_PREFIX", "create_app", "software_version"]

API_PREFIX = "/api/v1"


def software_version() -> str:
    """The installed zgate-control version."""
    try:
        return version("zgate-control")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0+unknown"


def _route_template(request: Request) -> str:
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match is Match.FULL:
            return str(getattr(route, "path", "other"))
    return "unmatched"


def create_app(settings: ControlSettings, database: Database) -> FastAPI:
    """The app over `database` (already migrated); the caller owns and disposes it."""
    metrics = ControlMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        metrics.up.set(1)
        try:
            yield
        finally:
            metrics.up.set(0)
            wakeups = getattr(app.state, "wakeups", None)
            if wakeups is not None:
                await wakeups.close()

    app = FastAPI(
        title="zgate control plane",
        version=software_version(),
        description="Policies with history, clients and their certificates, connectors, relays "
        "that follow the change log, and the audit trail of a zgate network.",
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=f"{API_PREFIX}/docs",
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.db = database
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.wakeups = wakeup.Wakeups(database, metrics=metrics)
    problems.install(app)
    adminlog.install(app)
    for router in ROUTERS:
        app.include_router(router, prefix=API_PREFIX)
    console.install(app)

    @app.exception_handler(SignInRequired)
    async def _sign_in(request: Request, exc: SignInRequired) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/console/sign-in?next={quote(target)}", status_code=303)

    @app.middleware("http")
    async def _measure(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = _route_template(request)
        metrics.requests.labels(route, request.method, f"{response.status_code // 100}xx").inc()
        if not route.endswith("/changes"):
            metrics.latency.labels(route).observe(time.perf_counter() - started)
        return response

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        try:
            await run_in_threadpool(database.check)
        except DatabaseError as exc:
            return JSONResponse({"status": "unavailable", "detail": str(exc)}, status_code=503)
        return JSONResponse({"status": "ready"})

    @app.get("/metrics", include_in_schema=False)
    def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
