"""How the console answers: its Jinja2 templates (package data), the headers every
answer carries (a strict Content-Security-Policy, no framing, no sniffing, no caching of
pages; `edge.ConsoleHeaders` puts them on), and `ConsoleRoute`, which turns the
console's own exceptions into pages.

A view answers a whole page, or only its fragment when htmx asks (`HX-Request`): the
same URL serves both, so every view works without script and htmx only swaps parts.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from datetime import UTC, datetime
from typing import Any, Final

import structlog
from fastapi import Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from usage_ingest.errors import (
    DependencyUnavailable,
    StatementTimedOut,
    StoreRefusedData,
    StoreUnavailable,
)

log = structlog.get_logger("usage_ingest.api.console")

SIGN_IN_PATH: Final = "/console/sign-in"
PAGE_HEADERS: Final = {
    # No inline script or style anywhere: htmx is configured by a meta tag.
    "Content-Security-Policy": (
        "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
    "Vary": "HX-Request, Cookie",
}


class ConsoleProblem(Exception):
    """A page that says what went wrong, with its status (400, 403, 404, 409...)."""

    def __init__(self, status: int, title: str, message: str, user: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.title = title
        self.message = message
        self.user = user


class SignInRequired(Exception):
    """No live session: the browser goes to the sign-in page (`reason` says why)."""

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason


def _instant(value: datetime | str | None) -> str:
    """An instant as an operator reads it, in UTC to the second."""
    if value is None:
        return "-"
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(seconds: float) -> str:
    if seconds < 60:  # noqa: PLR2004
        return f"{seconds:.1f} s"
    if seconds < 3600:  # noqa: PLR2004
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


TEMPLATES = Environment(
    loader=PackageLoader("usage_ingest.api.console", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
TEMPLATES.filters["instant"] = _instant
TEMPLATES.filters["duration"] = _duration


def wants_fragment(request: Request) -> bool:
    """htmx asked for the view's fragment (a poll, a filter, a page of a table)."""
    return request.headers.get("hx-request") == "true"


def render(
    request: Request, template: str, context: Mapping[str, Any], status: int = 200
) -> HTMLResponse:
    body = TEMPLATES.get_template(template).render(request_path=request.url.path, **context)
    return HTMLResponse(body, status_code=status)


def render_view(
    request: Request, page: str, fragment: str, context: Mapping[str, Any], status: int = 200
) -> HTMLResponse:
    """The whole page, or only its fragment for htmx."""
    return render(request, fragment if wants_fragment(request) else page, context, status)


def see_other(request: Request, path: str) -> Response:
    """After a POST, or to sign in: a 303 for a browser, `HX-Redirect` for htmx (which
    would otherwise swap the next page into a fragment)."""
    if wants_fragment(request):
        return Response(status_code=204, headers={"HX-Redirect": path})
    return RedirectResponse(path, status_code=303)


def problem_page(request: Request, problem: ConsoleProblem) -> Response:
    user = problem.user or getattr(request.state, "user", None)
    context = {"user": user, "title": problem.title, "message": problem.message}
    return render(request, "problem.html", context, problem.status)


def _unavailable_page(request: Request, exc: DependencyUnavailable) -> Response:
    log.warning("console_dependency_unavailable", error=str(exc), path=request.url.path)
    if isinstance(exc, StatementTimedOut):
        message = "the query ran past its time budget: narrow the filters"
    elif isinstance(exc, StoreUnavailable):
        message = "the database is unavailable; try again in a moment"
    else:
        message = "the broker is unavailable; try again in a moment"
    return problem_page(request, ConsoleProblem(503, "Unavailable", message))


def _refused_page(request: Request, exc: StoreRefusedData) -> Response:
    """A value the database refuses (a text it cannot hold, a number past bigint): the
    request's mistake, which the views' own checks should have caught first."""
    log.warning("console_value_refused", error=str(exc), path=request.url.path)
    message = "the database refused a value of this request: check what was typed"
    return problem_page(request, ConsoleProblem(400, "Refused", message))


class ConsoleRoute(APIRoute):
    """A console route: its exceptions become pages (the headers are `ConsoleHeaders`')."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def answered(request: Request) -> Response:
            try:
                return await handler(request)
            except ConsoleProblem as problem:
                return problem_page(request, problem)
            except SignInRequired as exc:
                path = SIGN_IN_PATH + (f"?ended={exc.reason}" if exc.reason else "")
                return see_other(request, path)
            except StoreRefusedData as exc:
                return _refused_page(request, exc)
            except DependencyUnavailable as exc:
                return _unavailable_page(request, exc)

        return answered
