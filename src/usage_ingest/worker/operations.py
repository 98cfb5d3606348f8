"""The worker's operations server: metrics, health and readiness.

Served on the metrics port (`--metrics-port`, default 9464) by a small HTTP
server running in the worker's own event loop, so an answer from `/healthz`
also proves the loop is not blocked:

* `/metrics`: Prometheus text format;
* `/healthz`: 200 while the process and its event loop are alive;
* `/readyz`: 200 when the database and the broker answer, 503 otherwise.

The server is a Starlette app served by `uvicorn.Server` as a task of that loop (no
thread). The worker keeps its own signal handlers, and uvicorn logs no line per request.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable

import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from usage_ingest.serving import QuietServer, listen
from usage_ingest.worker.metrics import WorkerMetrics

ReadinessCheck = Callable[[], Awaitable[dict[str, bool]]]

READINESS_INTERVAL_S = 10.0
# How long closing the server waits for requests still being answered.
_CLOSE_TIMEOUT_S = 5

_PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
_JSON = "application/json"
_TEXT = "text/plain"


async def watch_readiness(
    metrics: WorkerMetrics, readiness: ReadinessCheck, interval_s: float = READINESS_INTERVAL_S
) -> None:
    """Keep `usage_ingest_worker_ready` current even when nobody asks /readyz, and the
    checks' answers for the worker's reports (`worker.reports`)."""
    while True:
        metrics.note_readiness(await readiness())
        await asyncio.sleep(interval_s)


# --- the app -----------------------------------------------------------------------


def _answer(status: int, content_type: str, body: bytes) -> Response:
    """A response with exactly this content type (Starlette would add a charset to
    `text/plain`), closing the connection once it is sent."""
    return Response(body, status, headers={"Content-Type": content_type, "Connection": "close"})


async def _metrics(request: Request) -> Response:
    metrics: WorkerMetrics = request.app.state.metrics
    return _answer(200, _PROMETHEUS_TEXT, metrics.exposition())


async def _healthz(_request: Request) -> Response:
    return _answer(200, _JSON, b'{"status":"ok"}\n')


async def _readyz(request: Request) -> Response:
    metrics: WorkerMetrics = request.app.state.metrics
    readiness: ReadinessCheck = request.app.state.readiness
    checks = await readiness()
    ready = metrics.note_readiness(checks)
    body = json.dumps({"ready": ready, "checks": checks}).encode() + b"\n"
    return _answer(200 if ready else 503, _JSON, body)


async def _not_found(_request: Request, _exc: Exception) -> Response:
    return _answer(404, _TEXT, b"not found\n")


class _GetOnly:
    """Every path answers GET only: any other method is refused before the path is
    looked at (HEAD too, which Starlette would otherwise answer as GET)."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] != "GET":
            await _answer(405, _TEXT, b"only GET\n")(scope, receive, send)
            return
        await self._app(scope, receive, send)


def operations_app(metrics: WorkerMetrics, readiness: ReadinessCheck) -> Starlette:
    """The `/metrics`, `/healthz` and `/readyz` app."""
    app = Starlette(
        routes=[
            Route("/metrics", _metrics),
            Route("/healthz", _healthz),
            Route("/readyz", _readyz),
        ],
        middleware=[Middleware(_GetOnly)],
        exception_handlers={404: _not_found},
    )
    app.router.redirect_slashes = False  # a path is served as spelt: /metrics/ is not found
    app.state.metrics = metrics
    app.state.readiness = readiness
    return app


# --- serving it --------------------------------------------------------------------


class OperationsServer:
    """The server running in the worker's loop; `close` and `wait_closed` as on an
    `asyncio.Server`."""

    def __init__(self, server: uvicorn.Server, sockets: list[socket.socket]) -> None:
        self._server = server
        self._sockets = sockets
        self._serving = asyncio.create_task(server.serve(sockets=sockets))

    def close(self) -> None:
        """Stop serving; requests being answered get `_CLOSE_TIMEOUT_S` to finish."""
        self._server.should_exit = True

    async def wait_closed(self) -> None:
        try:
            await self._serving
        finally:
            for sock in self._sockets:
                sock.close()


async def serve_operations(
    host: str, port: int, metrics: WorkerMetrics, readiness: ReadinessCheck
) -> OperationsServer:
    """Start the `/metrics`, `/healthz`, `/readyz` server in the running loop."""
    sockets = listen(host, port)
    config = uvicorn.Config(
        operations_app(metrics, readiness),
        lifespan="off",
        ws="none",
        log_config=None,
        access_log=False,
        server_header=False,
        date_header=False,
        timeout_graceful_shutdown=_CLOSE_TIMEOUT_S,
    )
    return OperationsServer(QuietServer(config), sockets)
