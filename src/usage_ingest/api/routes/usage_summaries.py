"""`/usage-summaries`: totals over the stored usages of a period, by group and unit."""

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
from usage_ingest.api.schemas import UsageSummary
from usage_ingest.api.security import SECURED, needs
from usage_ingest.api.summary_query import parse_summary_query

router = APIRouter(route_class=GuardedRoute)

_ID_FILTER = "Exact (1), or in:1,2 (any of)."
_TEXT_FILTER = "xyz (exact), in:x,y (any of) or like:xyz (contains, case-insensitive)."
_INSTANT_FILTER = (
    "An RFC 3339 instant with an operator: gte:, gt:, lt:, lte: (none: equal); repeat to combine."
)


@router.get(
    "/usage-summaries",
    response_model=list[UsageSummary],
    responses={
        200: {
            "description": "One page of groups, sorted by the group keys, then unit.",
            "headers": total_count_header("The number of groups matching the filters."),
        },
        **error_responses(400, 401, 403, 503),
    },
    dependencies=SECURED,
    openapi_extra=needs(Permission.USAGE_READ),
    summary="Totals of the stored usages of a period, by group and unit",
)
async def summarize_usages(
    request: Request,
    store: StoreDep,
    *,
    start_date: Annotated[
        list[str],
        Query(
            alias="startDate",
            description="Both bounds are required: startDate=gte:2026-05-01T00:00:00Z"
            "&startDate=lt:2026-06-01T00:00:00Z. " + _INSTANT_FILTER,
        ),
    ],
    group_by: Annotated[
        str | None,
        Query(
            alias="groupBy",
            description="Comma list of contractId, debtorId, inventoryId, productIdent, "
            "billable, day (UTC date of startDate, yyyy-MM-dd), month (yyyy-MM); "
            "unit is always a group key.",
        ),
    ] = None,
    page: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Page number, from 1.")] = 1,
    page_size: Annotated[
        int, Query(alias="pageSize", ge=1, le=MAX_PAGE_SIZE, description="Groups per page.")
    ] = MAX_PAGE_SIZE,
    contract_id: Annotated[
        list[str] | None, Query(alias="contractId", description=_ID_FILTER)
    ] = None,
    debtor_id: Annotated[list[str] | None, Query(alias="debtorId", description=_ID_FILTER)] = None,
    inventory_id: Annotated[
        list[str] | None, Query(alias="inventoryId", description=_ID_FILTER)
    ] = None,
    product_ident: Annotated[
        list[str] | None, Query(alias="productIdent", description=_TEXT_FILTER)
    ] = None,
    external_reference: Annotated[
        list[str] | None, Query(alias="externalReference", description=_TEXT_FILTER)
    ] = None,
    billable: Annotated[list[str] | None, Query(description="true or false.")] = None,
    received_at: Annotated[
        list[str] | None, Query(alias="receivedAt", description=_INSTANT_FILTER)
    ] = None,
) -> JSONResponse:
    query = parse_summary_query(
        [name for name, _ in request.query_params.multi_items()],
        page=page,
        page_size=page_size,
        group_by=group_by,
        filters={
            "startDate": start_date,
            "contractId": contract_id,
            "debtorId": debtor_id,
            "inventoryId": inventory_id,
            "productIdent": product_ident,
            "externalReference": external_reference,
            "billable": billable,
            "receivedAt": received_at,
        },
    )
    total, items = await store.summarize_usages(query)
    return page_response(items, total)
