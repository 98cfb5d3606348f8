"""`/v1/product-items`: create a product item."""

import structlog
from fastapi.responses import JSONResponse
from fastapi.routing import APIRouter

from usage_ingest.api.deps import StoreDep
from usage_ingest.api.errors import ApiError, ApiErrorCode
from usage_ingest.api.guard import GuardedRoute
from usage_ingest.api.keys import Permission
from usage_ingest.api.openapi import error_responses
from usage_ingest.api.schemas import ProductItem, ProductItemInput
from usage_ingest.api.security import SECURED, needs
from usage_ingest.domain.reference import ProductItemIn

log = structlog.get_logger("usage_ingest.api")

router = APIRouter(route_class=GuardedRoute)


@router.post(
    "/v1/product-items",
    status_code=201,
    response_model=ProductItem,
    responses=error_responses(400, 401, 403, 409, 413, 415, 503),
    dependencies=SECURED,
    openapi_extra=needs(Permission.PRODUCT_ITEM_CREATE),
    summary="Create a product item",
)
async def create_product_item(body: ProductItemInput, store: StoreDep) -> JSONResponse:
    item = ProductItemIn.model_validate(body.model_dump())
    record = await store.create_product_item(item)
    if record is None:
        raise ApiError.one(
            409,
            ApiErrorCode.DUPLICATE_REFERENCE,
            f"a product item with reference {body.reference!r} exists",
            field="reference",
        )
    log.info("product_item_created", product_item_id=record["id"])
    return JSONResponse(record, status_code=201)
