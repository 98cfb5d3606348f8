"""The exception handlers that answer every error in the envelope of `errors`:
FastAPI's validation errors (its 422, a 400 here), Starlette's 404 and 405, the
`ApiError`s routes raise, and the store's and the broker's unavailability and
statement timeouts (503, 504)."""

from collections.abc import Sequence
from typing import Any

import structlog
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from usage_ingest.api.errors import (
    RETRY_AFTER,
    ApiError,
    ApiErrorCode,
    ApiErrorItem,
    dotted_field,
    error_response,
    plain_message,
    read_only_error,
)
from usage_ingest.api.patch import PATCH_OPS
from usage_ingest.api.route_registry import allowed_methods
from usage_ingest.errors import DependencyUnavailable, StatementTimedOut, StoreUnavailable

log = structlog.get_logger("usage_ingest.api")

# Fields a client may copy from a response into a request, which the service assigns.
_READ_ONLY_NAMES = frozenset({"id", "object_type", "status"})
# FastAPI's body errors at the top level: the body is not the JSON value expected.
_NOT_THE_EXPECTED_JSON = frozenset(
    {"model_type", "model_attributes_type", "list_type", "dict_type"}
)


def _request_errors(exc: RequestValidationError) -> list[ApiErrorItem]:
    """FastAPI's validation errors (its 422) as the API's 400 errors."""
    items = []
    for error in exc.errors():
        loc = tuple(error.get("loc", ()))
        where, path = (loc[0], loc[1:]) if loc else (None, ())
        if error["type"] == "json_invalid":
            detail = (error.get("ctx") or {}).get("error", "invalid JSON")
            items.append(
                ApiErrorItem(
                    code=ApiErrorCode.MALFORMED_MESSAGE,
                    message=f"the body is not JSON: {detail} "
                    f"(at {dotted_field(path) or 'the start'})",
                )
            )
        elif where == "body" and not path and error["type"] == "missing":
            items.append(
                ApiErrorItem(code=ApiErrorCode.MALFORMED_MESSAGE, message="a JSON body is required")
            )
        elif where == "body" and not path and error["type"] in _NOT_THE_EXPECTED_JSON:
            items.append(
                ApiErrorItem(code=ApiErrorCode.MALFORMED_MESSAGE, message=plain_message(error))
            )
        elif where == "body" and len(path) == 1 and error["type"] == "extra_forbidden":
            name = str(path[0])
            items.append(
                read_only_error(name)
                if name in _READ_ONLY_NAMES
                else ApiErrorItem(
                    code=ApiErrorCode.SCHEMA_VIOLATION, field=name, message="is not a known field"
                )
            )
        elif where == "body":
            items.append(
                ApiErrorItem(
                    code=ApiErrorCode.SCHEMA_VIOLATION,
                    field=dotted_field(_without_union_tags(path, error["type"])),
                    message=plain_message(error),
                )
            )
        else:
            items.append(
                ApiErrorItem(
                    code=ApiErrorCode.INVALID_PARAMETER,
                    field=str(path[-1]) if path else None,
                    message=plain_message(error),
                )
            )
    return items


def _without_union_tags(path: Sequence[Any], error_type: str) -> list[Any]:
    """Drop the discriminator tags pydantic puts into the location of a patch operation
    (`0.add.value` is `0.value` to the client); a missing or unknown `op` is at `0.op`."""
    located = [part for part in path if part not in PATCH_OPS]
    if error_type in ("union_tag_invalid", "union_tag_not_found"):
        located.append("op")
    return located


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if isinstance(exc, ApiError):
        return error_response(exc.status_code, exc.errors, exc.headers)
    if exc.status_code == 404:  # noqa: PLR2004 - the router's "no such route"
        code, message = ApiErrorCode.NOT_FOUND, f"no such resource: {request.url.path}"
    elif exc.status_code == 405:  # noqa: PLR2004
        # The router names the methods of one route; the path may have several.
        allowed = ", ".join(allowed_methods(request.scope))
        headers = {**(exc.headers or {}), "Allow": allowed}
        code = ApiErrorCode.METHOD_NOT_ALLOWED
        message = f"{request.method} is not allowed here; allowed: {allowed}"
        item = ApiErrorItem(code=code, message=message)
        return error_response(405, [item], headers)
    else:  # FastAPI's own 400 "There was an error parsing the body", and the like
        code, message = ApiErrorCode.MALFORMED_MESSAGE, str(exc.detail)
    item = ApiErrorItem(code=code, message=message)
    return error_response(exc.status_code, [item], exc.headers)


async def _on_validation_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return error_response(400, _request_errors(exc))


async def _on_unavailable(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DependencyUnavailable)
    log.warning("api_dependency_unavailable", error=str(exc), path=request.url.path)
    if isinstance(exc, StoreUnavailable):
        code, message = ApiErrorCode.DATABASE_UNAVAILABLE, "the database is unavailable"
    else:
        code, message = ApiErrorCode.BROKER_UNAVAILABLE, "the broker is unavailable"
    item = ApiErrorItem(code=code, message=f"{message}; try again later")
    return error_response(503, [item], RETRY_AFTER)


async def _on_statement_timeout(request: Request, exc: Exception) -> Response:
    log.warning("api_statement_timed_out", error=str(exc), path=request.url.path)
    item = ApiErrorItem(
        code=ApiErrorCode.STATEMENT_TIMEOUT,
        message="the request's database work ran past its budget and was cancelled; "
        "narrow the query (fewer or more selective filters) rather than repeating it",
    )
    return error_response(504, [item])


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(StatementTimedOut, _on_statement_timeout)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(DependencyUnavailable, _on_unavailable)
