"""`/usages`: queue a usage event (or an array of them, `usage_batch`) for the worker,
read a stored usage, and list the stored usages (as JSON pages, or as CSV)."""

import re
from typing import Annotated, Any

import structlog
from fastapi import Header, Path, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.routing import APIRouter

from usage_ingest.api.csv_export import (
    CSV_CONTENT_TYPE,
    CSV_MEDIA_TYPE,
    csv_text,
    first_chunk,
    stream_csv,
    wants_csv,
)
from usage_ingest.api.deps import MetricsDep, PublisherDep, SettingsDep, StoreDep
from usage_ingest.api.errors import ApiError, ApiErrorItem, not_found
from usage_ingest.api.guard import JSON_MEDIA_TYPE, GuardedRoute
from usage_ingest.api.keys import Permission
from usage_ingest.api.limits import MAX_PAGE, MAX_PAGE_SIZE
from usage_ingest.api.list_response import TOTAL_HEADER, page_response
from usage_ingest.api.openapi import error_responses
from usage_ingest.api.publisher import publish_acknowledged
from usage_ingest.api.schemas import Usage, UsageBatchQueued, UsageQueued
from usage_ingest.api.security import SECURED, needs
from usage_ingest.api.usage_batch import is_array, queue_batch
from usage_ingest.api.usage_query import UsageFilterParameters, parse_usage_list
from usage_ingest.domain.messages import IDENT_PATTERN
from usage_ingest.domain.records import OutputRecord
from usage_ingest.domain.validation import InvalidEvent, validate_record
from usage_ingest.errors import ErrorCode

log = structlog.get_logger("usage_ingest.api")

router = APIRouter(route_class=GuardedRoute)


@router.post(
    "/usages",
    status_code=202,
    response_model=UsageQueued | UsageBatchQueued,
    responses=error_responses(400, 401, 403, 413, 415, 503),
    dependencies=SECURED,
    openapi_extra={
        **needs(Permission.USAGE_CREATE),
        "requestBody": {
            "required": True,
            "content": {
                JSON_MEDIA_TYPE: {
                    "schema": {
                        "oneOf": [
                            {"$ref": "#/components/schemas/UsageEvent"},
                            {
                                "type": "array",
                                "items": {"$ref": "#/components/schemas/UsageEvent"},
                                "minItems": 1,
                                "description": "At most USAGE_INGEST_API_MAX_BATCH events "
                                "(default 1000), all or nothing.",
                            },
                        ]
                    }
                }
            },
        },
    },
    summary="Queue a usage event, or an array of them, for the worker",
)
async def post_usage(
    request: Request, settings: SettingsDep, producer: PublisherDep, metrics: MetricsDep
) -> JSONResponse:
    body = await request.body()
    if is_array(body):
        return await queue_batch(body, settings, producer, metrics)
    verdict = validate_record(body, settings.max_message_bytes)
    if isinstance(verdict, InvalidEvent):
        too_large = any(e.code is ErrorCode.MESSAGE_TOO_LARGE for e in verdict.errors)
        raise ApiError(
            413 if too_large else 400,
            [
                ApiErrorItem(code=e.code.value, field=e.field, message=e.message)
                for e in verdict.errors
            ],
        )
    reference = verdict.event.external_reference
    record = OutputRecord(settings.topic_events, reference.encode(), body)
    await publish_acknowledged(producer, [record], settings.api_publish_timeout_s)
    metrics.usages_queued.inc()
    log.info("usage_queued", external_reference=reference, topic=settings.topic_events)
    return JSONResponse({"externalReference": reference, "status": "queued"}, status_code=202)


@router.get(
    "/usages/{externalReference}",
    response_model=Usage,
    responses=error_responses(401, 403, 404, 503),
    dependencies=SECURED,
    openapi_extra=needs(Permission.USAGE_READ),
    summary="Read a stored usage",
)
async def get_usage(
    external_reference: Annotated[str, Path(alias="externalReference")],
    store: StoreDep,
) -> JSONResponse:
    # A reference that breaks §3's pattern cannot have been stored.
    found = (
        await store.get_usage(external_reference)
        if re.match(IDENT_PATTERN, external_reference)
        else None
    )
    if found is None:
        raise not_found(f"usage {external_reference!r}")
    return JSONResponse(Usage.from_stored(found).as_json())


_LIST_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "One page of stored usages as JSON, each as `GET "
        "/usages/{externalReference}` answers it (only the `fields` asked for); or, with "
        "`Accept: text/csv`, the page or every match as CSV, one line per unit quantity.",
        "headers": {
            "X-Total-Count": {
                "description": "The number of usages matching the filters (not sent with "
                "a CSV export of every match).",
                "schema": {"type": "integer", "minimum": 0},
            }
        },
        "content": {
            JSON_MEDIA_TYPE: {
                "schema": {"type": "array", "items": {"$ref": "#/components/schemas/UsageFields"}}
            },
            CSV_MEDIA_TYPE: {
                "schema": {"type": "string"},
                "example": "externalReference,usageId,contractId,debtorId,inventoryId,"
                "productIdent,startDate,endDate,unit,quantity,billable,receivedAt\r\n"
                "call-1,7,1,1,3,voice.uk,2026-05-01T10:00:00.000000Z,"
                "2026-05-01T10:04:30.000000Z,minute,4.5,true,2026-05-01T10:04:31.120000Z\r\n",
            },
        },
    },
}


@router.get(
    "/usages",
    response_model=None,
    responses={**_LIST_RESPONSES, **error_responses(400, 401, 403, 503)},
    dependencies=SECURED,
    openapi_extra=needs(Permission.USAGE_READ),
    summary="List stored usages, as JSON pages or as CSV",
)
async def list_usages(
    request: Request,
    store: StoreDep,
    filters: UsageFilterParameters,
    *,
    page: Annotated[
        int | None,
        Query(
            ge=1,
            le=MAX_PAGE,
            description="Page number, from 1. Required for JSON; optional for CSV, where "
            "without page and pageSize every match is exported.",
        ),
    ] = None,
    page_size: Annotated[
        int | None,
        Query(
            alias="pageSize",
            ge=1,
            le=MAX_PAGE_SIZE,
            description="Usages per page. Required for JSON, with page for CSV.",
        ),
    ] = None,
    sort: Annotated[
        str | None,
        Query(
            description="Comma list of scalar fields, `:desc` for descending: "
            "startDate:desc,id. The id breaks ties."
        ),
    ] = None,
    fields: Annotated[
        str | None, Query(description="Comma list of the fields to return (JSON only).")
    ] = None,
    accept: Annotated[
        str | None,
        Header(description="`text/csv` for CSV; JSON otherwise.", include_in_schema=False),
    ] = None,
) -> Response:
    csv = wants_csv(accept)
    query, projection = parse_usage_list(
        [name for name, _ in request.query_params.multi_items()],
        csv=csv,
        page=page,
        page_size=page_size,
        sort=sort,
        fields=fields,
        filters=filters,
    )
    if csv:
        first = await first_chunk(store, query)
        if query.limit is not None:  # a page: one chunk, and the total as for JSON
            total = await store.count_usages(query.selection)
            return Response(
                csv_text(first.lines, header=True),
                media_type=CSV_CONTENT_TYPE,
                headers={TOTAL_HEADER: str(total)},
            )
        return StreamingResponse(stream_csv(store, query, first), media_type=CSV_CONTENT_TYPE)
    total, found = await store.list_usages(query)
    records = [Usage.from_stored(usage).as_json() for usage in found]
    return page_response(records, total, projection)
