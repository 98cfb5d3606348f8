"""The console's edge, for the answers no console route makes: the router's 404 and 405
under /console are console pages, not the API's JSON; and every answer under /console,
whoever made it (a route, the router, the edge's 413 or 500), carries the console's
headers (`PAGE_HEADERS`). Nothing changes for the API's own paths."""

from __future__ import annotations

import inspect

from fastapi import FastAPI, Request, Response
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from usage_ingest.api.console.pages import PAGE_HEADERS, ConsoleProblem, problem_page
from usage_ingest.api.errors import ApiError
from usage_ingest.api.route_registry import allowed_methods

CONSOLE_PATH = "/console"


def is_console_path(path: str) -> bool:
    return path == CONSOLE_PATH or path.startswith(CONSOLE_PATH + "/")


class ConsoleHeaders:
    """Pure ASGI, outside the API's edge: under /console, each of `PAGE_HEADERS` the
    answer does not set itself (a static file keeps its own Cache-Control)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_console_path(scope["path"]):
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in PAGE_HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, with_headers)


def _router_page(request: Request, exc: StarletteHTTPException) -> Response:
    headers = {}
    if exc.status_code == 404:  # noqa: PLR2004 - no such route
        # The path is not echoed: the console's pages are reached by its links.
        problem = ConsoleProblem(404, "Not found", "there is no such page in the console")
    elif exc.status_code == 405:  # noqa: PLR2004 - e.g. a link to a form's POST
        headers["Allow"] = ", ".join(allowed_methods(request.scope))
        message = f"{request.method} is not allowed here; this address takes {headers['Allow']}"
        problem = ConsoleProblem(405, "Not allowed", message)
    else:
        problem = ConsoleProblem(exc.status_code, "Refused", str(exc.detail))
    response = problem_page(request, problem)
    response.headers.update(headers)
    return response


def install_console_error_pages(app: FastAPI) -> None:
    """Under /console, the router's errors (404, 405) become console pages; elsewhere
    the handler installed before (the API's envelope) answers, as it did."""
    api_handler = app.exception_handlers[StarletteHTTPException]

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if not is_console_path(request.url.path) or isinstance(exc, ApiError):
            answer = api_handler(request, exc)
            return await answer if inspect.isawaitable(answer) else answer
        return _router_page(request, exc)

    app.add_exception_handler(StarletteHTTPException, on_http_error)
