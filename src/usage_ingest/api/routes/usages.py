"""`/usages`: queue a usage event (or an array of them, `usage_batch`) for the worker,
and read a stored usage."""

import re
from typing import Annotated

import structlog
from fastapi import Path, Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRouter

from usage_ingest.api.deps import MetricsDep, PublisherDep, SettingsDep, StoreDep
from usage_ingest.api.errors import ApiError, ApiErrorItem, not_found
from usage_ingest.api.guard import JSON_MEDIA_TYPE, GuardedRoute
from usage_ingest.api.keys import Permission
from usage_ingest.api.openapi import error_responses
from usage_ingest.api.publisher import publish_acknowledged
from usage_ingest.api.schemas import Usage, UsageBatchQueued, UsageQueued
from usage_ingest.api.security import SECURED, needs
from usage_ingest.api.usage_batch import is_array, queue_batch
from usage_ingest.domain.messages import IDENT_PATTERN, Source
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
    source = Source(
        topic=found["source_topic"],
        partition=found["source_partition"],
        offset=found["source_offset"],
    )
    usage = Usage(**{**found, "source": source})
    return JSONResponse(usage.model_dump(mode="json", by_alias=True))
