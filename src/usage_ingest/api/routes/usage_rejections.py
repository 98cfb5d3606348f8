"""`/usage-rejections`: every refusal the worker decided, and whether it is resolved."""

from typing import Annotated

from fastapi import Query, Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRouter

from usage_ingest.api.deps import StoreDep
from usage_ingest.api.guard import GuardedRoute
from usage_ingest.api.keys import Permission
from usage_ingest.api.limits import MAX_PAGE, MAX_PAGE_SIZE
from usage_ingest.api.list_response import page_response, total_count_header
from usage_ingest.api.openapi import error_responses
from usage_ingest.api.rejection_query import parse_rejection_query
from usage_ingest.api.rejection_schemas import UsageRejectionFields
from usage_ingest.api.security import SECURED, needs

router = APIRouter(route_class=GuardedRoute)

_INSTANT_FILTER = (
    "An RFC 3339 instant: bare (equal), gte:, gt:, lt: or lte:; repeat to combine, e.g. "
    "failedAt=gte:2026-05-01T00:00:00Z&failedAt=lt:2026-06-01T00:00:00Z"
)


@router.get(
    "/usage-rejections",
    response_model=None,
    responses={
        200: {
            "model": list[UsageRejectionFields],
            "description": "One page of refusals, with only the `fields` asked for.",
            "headers": total_count_header("The number of refusals matching the filters."),
        },
        **error_responses(400, 401, 403, 503),
    },
    dependencies=SECURED,
    openapi_extra=needs(Permission.USAGE_READ),
    summary="List the refused usage records, newest first",
)
async def list_usage_rejections(
    request: Request,
    store: StoreDep,
    *,
    page: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Page number, from 1.")],
    page_size: Annotated[
        int,
        Query(alias="pageSize", ge=1, le=MAX_PAGE_SIZE, description="Refusals per page."),
    ],
    sort: Annotated[
        str | None,
        Query(
            description="Comma list of fields, `:desc` for descending, e.g. failedAt,id. "
            "Default: failedAt:desc,id:desc (newest first)."
        ),
    ] = None,
    fields: Annotated[str | None, Query(description="Comma list of the fields to return.")] = None,
    external_reference: Annotated[
        list[str] | None,
        Query(
            alias="externalReference",
            description="xyz (exact), in:x,y (any of) or like:xyz (contains, case-insensitive)",
        ),
    ] = None,
    code: Annotated[
        list[str] | None,
        Query(description="An error code (exact) or in:X,Y: any of the record's errors has it."),
    ] = None,
    retryable: Annotated[list[str] | None, Query(description="true or false.")] = None,
    resolved: Annotated[
        list[str] | None,
        Query(description="true: a usage is now stored under the externalReference; or false."),
    ] = None,
    failed_at: Annotated[
        list[str] | None, Query(alias="failedAt", description=_INSTANT_FILTER)
    ] = None,
) -> JSONResponse:
    query, projection = parse_rejection_query(
        [name for name, _ in request.query_params.multi_items()],
        page=page,
        page_size=page_size,
        sort=sort,
        fields=fields,
        filters={
            "externalReference": external_reference,
            "code": code,
            "retryable": retryable,
            "resolved": resolved,
            "failedAt": failed_at,
        },
    )
    total, rejections = await store.list_rejections(query)
    return page_response(rejections, total, projection)
