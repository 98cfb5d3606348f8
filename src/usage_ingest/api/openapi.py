"""The OpenAPI document: the error answers each route declares (`error_responses`),
and FastAPI's document patched with what it cannot infer (`openapi_document`)."""

import copy
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from usage_ingest.api.errors import ErrorBody
from usage_ingest.domain.messages import INT64_MAX, INT64_MIN, UsageEvent

ERROR_DESCRIPTIONS = {
    400: "Invalid request: one error per offending field or parameter.",
    401: "No API key, or an unknown or revoked one.",
    403: "The API key lacks the permission this operation needs.",
    404: "Not found.",
    409: "Conflicts with a stored record.",
    412: "A product reference is already on another inventory record whose active period overlaps.",
    413: "The request body is too large.",
    415: "Wrong Content-Type.",
    500: "Unexpected failure (logged; no details are returned).",
    503: "The database or the broker is unavailable; try again later.",
    504: "The request's database work ran past its budget and was cancelled.",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The error answers of a route; one that may reach the database (503) may also
    run past the statement budget (504)."""
    every = (*statuses, 500, *((504,) if 503 in statuses else ()))  # noqa: PLR2004
    return {
        status: {"model": ErrorBody, "description": ERROR_DESCRIPTIONS[status]} for status in every
    }


def openapi_document(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, plus what it cannot infer: the usage event body (validated
    by the worker's own rules, not by FastAPI), the lists' projected records, and no
    422 responses (validation errors are 400 here)."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    document = get_openapi(
        title=app.title,
        version=app.version,
        summary=app.summary,
        description="The management and ingestion HTTP API of usage-ingest. Every error is "
        '`{"errors": [{"code", "field", "message"}]}`. Operations need an API key with the '
        "permission named by `x-required-permission`.",
        routes=app.routes,
    )
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    event = UsageEvent.model_json_schema(by_alias=True, ref_template="#/components/schemas/{model}")
    for name, definition in event.pop("$defs", {}).items():
        schemas.setdefault(name, definition)
    schemas["UsageEvent"] = event
    projected = copy.deepcopy(schemas["UsageProductInventory"])
    projected.pop("required", None)
    projected["title"] = "UsageProductInventoryFields"
    projected["description"] = "A usage product inventory record, limited to `fields`."
    schemas["UsageProductInventoryFields"] = projected
    usage = copy.deepcopy(schemas["Usage"])
    usage.pop("required", None)
    usage["title"] = "UsageFields"
    usage["description"] = "A stored usage, limited to `fields`."
    schemas["UsageFields"] = usage
    for path in document.get("paths", {}).values():
        for operation in path.values():
            operation.get("responses", {}).pop("422", None)
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    _exact_bounds(document)
    app.openapi_schema = document
    return document


_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
# FastAPI's OpenAPI model holds bounds as floats: the int64 limits come out as
# ±9.223372036854776e+18, which is 2^63, one past the largest id, so a client that
# trusts the document sends a value the API refuses.
_AS_FLOATS = {float(INT64_MAX): INT64_MAX, float(INT64_MIN): INT64_MIN}


def _exact_bounds(node: Any) -> None:
    """Write every integral bound of the document as an exact integer, in place."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _BOUNDS and isinstance(value, float) and value.is_integer():
                node[key] = _AS_FLOATS.get(value, int(value))
            else:
                _exact_bounds(value)
    elif isinstance(node, list):
        for item in node:
            _exact_bounds(item)
