"""`/usage-product-inventories`: create, list, read and patch inventory records."""

import asyncio
from typing import Annotated

import structlog
from fastapi import Body, Query, Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRouter

from usage_ingest.api.deps import StoreDep, id_path
from usage_ingest.api.errors import ApiError, ApiErrorCode, not_found, read_only_error
from usage_ingest.api.guard import JSON_MEDIA_TYPE, GuardedRoute
from usage_ingest.api.keys import Permission
from usage_ingest.api.limits import MAX_PAGE, MAX_PAGE_SIZE, MAX_PATCH_OPERATIONS
from usage_ingest.api.list_response import page_response, total_count_header
from usage_ingest.api.openapi import error_responses
from usage_ingest.api.patch import PATCH_MEDIA_TYPE, PatchOperation, apply_patch
from usage_ingest.api.query import parse_list_query
from usage_ingest.api.schemas import UsageProductInventory, UsageProductInventoryInput
from usage_ingest.api.security import SECURED, needs
from usage_ingest.errors import (
    DuplicateRecord,
    OverlappingProductReference,
    ReferenceDataConflict,
    UnknownReferencedRecord,
)

log = structlog.get_logger("usage_ingest.api")

router = APIRouter(route_class=GuardedRoute)

_INVENTORY_PATH = "/usage-product-inventories"
_TEXT_FILTER = "xyz (exact), in:x,y (any of) or like:xyz (contains, case-insensitive)"


def _conflict(exc: ReferenceDataConflict) -> ApiError:
    if isinstance(exc, UnknownReferencedRecord):
        status, code = 404, ApiErrorCode.UNKNOWN_PRODUCT_ITEM
    elif isinstance(exc, DuplicateRecord):
        status, code = 409, ApiErrorCode.INVENTORY_EXISTS
    elif isinstance(exc, OverlappingProductReference):
        status, code = 412, ApiErrorCode.PRODUCT_REFERENCE_OVERLAP
    else:  # pragma: no cover - every subclass is mapped above
        status, code = 409, ApiErrorCode.SCHEMA_VIOLATION
    return ApiError.one(status, code, str(exc), field=exc.field)


@router.post(
    _INVENTORY_PATH,
    status_code=201,
    response_model=UsageProductInventory,
    responses=error_responses(400, 401, 403, 404, 409, 412, 413, 415, 503),
    dependencies=SECURED,
    openapi_extra=needs(Permission.USAGE_PRODUCT_INVENTORY_CREATE),
    summary="Create a usage product inventory record",
)
async def create_inventory(body: UsageProductInventoryInput, store: StoreDep) -> JSONResponse:
    read_only = [read_only_error("id")] if body.id is not None else []
    read_only += [
        read_only_error(f"productReferences.{index}.id")
        for index, ref in enumerate(body.product_references)
        if ref.id is not None
    ]
    if read_only:
        raise ApiError(400, read_only)
    try:
        record = await store.create_inventory(body)
    except ReferenceDataConflict as exc:
        raise _conflict(exc) from exc
    log.info("inventory_created", inventory_id=record["id"])
    return JSONResponse(record, status_code=201)


@router.get(
    _INVENTORY_PATH,
    response_model=None,
    responses={
        200: {
            "description": "One page of records, with only the `fields` asked for.",
            "headers": total_count_header("The number of records matching the filters."),
            "content": {
                JSON_MEDIA_TYPE: {
                    "schema": {
                        "type": "array",
                        "items": {"$ref": "#/components/schemas/UsageProductInventoryFields"},
                    }
                }
            },
        },
        **error_responses(400, 401, 403, 503),
    },
    dependencies=SECURED,
    openapi_extra=needs(Permission.USAGE_PRODUCT_INVENTORY_READ),
    summary="List usage product inventory records",
)
async def list_inventories(
    request: Request,
    store: StoreDep,
    *,
    page: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Page number, from 1.")],
    page_size: Annotated[
        int,
        Query(alias="pageSize", ge=1, le=MAX_PAGE_SIZE, description="Records per page."),
    ],
    sort: Annotated[
        str | None,
        Query(description="Comma list of fields, `:desc` for descending: startDate:desc,id"),
    ] = None,
    fields: Annotated[str | None, Query(description="Comma list of the fields to return.")] = None,
    usage_product_id: Annotated[
        list[str] | None, Query(alias="usageProductId", description="Exact.")
    ] = None,
    site_id: Annotated[list[str] | None, Query(alias="siteId", description="Exact.")] = None,
    start_date: Annotated[
        list[str] | None,
        Query(
            alias="startDate",
            description="yyyy-MM-dd (equal), lt:…, gt:… or gtn:… (greater or null); "
            "repeat to combine, e.g. startDate=gt:2026-01-01&startDate=lt:2026-02-01",
        ),
    ] = None,
    end_date: Annotated[
        list[str] | None,
        Query(alias="endDate", description="As startDate; gtn: includes open-ended records."),
    ] = None,
    product_reference: Annotated[
        list[str] | None, Query(alias="productReference", description=_TEXT_FILTER)
    ] = None,
    service_id: Annotated[
        list[str] | None, Query(alias="serviceId", description=_TEXT_FILTER)
    ] = None,
    label: Annotated[
        list[str] | None,
        Query(description="A product reference's label: " + _TEXT_FILTER),
    ] = None,
) -> JSONResponse:
    query, projection = parse_list_query(
        [name for name, _ in request.query_params.multi_items()],
        page=page,
        page_size=page_size,
        sort=sort,
        fields=fields,
        filters={
            "usageProductId": usage_product_id,
            "siteId": site_id,
            "startDate": start_date,
            "endDate": end_date,
            "productReference": product_reference,
            "serviceId": service_id,
            "label": label,
        },
    )
    total, records = await store.list_inventories(query)
    return page_response(records, total, projection)


@router.get(
    _INVENTORY_PATH + "/{id}",
    response_model=UsageProductInventory,
    responses=error_responses(400, 401, 403, 404, 503),
    dependencies=SECURED,
    openapi_extra=needs(Permission.USAGE_PRODUCT_INVENTORY_READ),
    summary="Read a usage product inventory record",
)
async def get_inventory(inventory_id: Annotated[int, id_path()], store: StoreDep) -> JSONResponse:
    record = await store.get_inventory(inventory_id)
    if record is None:
        raise not_found(f"inventory record {inventory_id}")
    return JSONResponse(record)


@router.patch(
    _INVENTORY_PATH + "/{id}",
    response_model=UsageProductInventory,
    responses=error_responses(400, 401, 403, 404, 409, 412, 413, 415, 503),
    dependencies=SECURED,
    openapi_extra=needs(Permission.USAGE_PRODUCT_INVENTORY_UPDATE),
    summary="Change a usage product inventory record with a JSON Patch (RFC 6902)",
)
async def patch_inventory(
    inventory_id: Annotated[int, id_path()],
    operations: Annotated[
        list[PatchOperation],
        Body(media_type=PATCH_MEDIA_TYPE, max_length=MAX_PATCH_OPERATIONS),
    ],
    store: StoreDep,
) -> JSONResponse:
    try:
        # In a thread: even within its bounds, a patch may copy a megabyte several times.
        record = await store.patch_inventory(
            inventory_id, lambda current: asyncio.to_thread(apply_patch, current, operations)
        )
    except ReferenceDataConflict as exc:
        raise _conflict(exc) from exc
    if record is None:
        raise not_found(f"inventory record {inventory_id}")
    log.info("inventory_patched", inventory_id=inventory_id, operations=len(operations))
    return JSONResponse(record)
