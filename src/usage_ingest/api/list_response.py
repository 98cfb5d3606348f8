"""What the list endpoints answer alike: one page of items with the number of all that
match in `X-Total-Count`, each item cut to the `fields` asked for, and that header's
entry in the OpenAPI document."""

from collections.abc import Sequence
from typing import Any

from fastapi.responses import JSONResponse

TOTAL_HEADER = "X-Total-Count"


def total_count_header(description: str) -> dict[str, Any]:
    """The `headers` of a list's 200 response in the OpenAPI document."""
    return {TOTAL_HEADER: {"description": description, "schema": {"type": "integer", "minimum": 0}}}


def page_response(
    items: list[dict[str, Any]], total: int, projection: Sequence[str] | None = None
) -> JSONResponse:
    """One page of `items` (only the `projection`'s fields, unless None) and the total."""
    if projection is not None:
        items = [{name: item[name] for name in projection} for item in items]
    return JSONResponse(items, headers={TOTAL_HEADER: str(total)})
