"""`/contracts/{id}`: create or replace a contract."""

from typing import Annotated

import structlog
from fastapi.responses import JSONResponse
from fastapi.routing import APIRouter

from usage_ingest.api.deps import StoreDep, id_path
from usage_ingest.api.guard import GuardedRoute
from usage_ingest.api.keys import Permission
from usage_ingest.api.openapi import error_responses
from usage_ingest.api.schemas import Contract, ContractInput
from usage_ingest.api.security import SECURED, needs
from usage_ingest.domain.reference import ContractIn

log = structlog.get_logger("usage_ingest.api")

router = APIRouter(route_class=GuardedRoute)


@router.put(
    "/contracts/{id}",
    response_model=Contract,
    responses=error_responses(400, 401, 403, 413, 415, 503),
    dependencies=SECURED,
    openapi_extra=needs(Permission.CONTRACT_WRITE),
    summary="Create or replace a contract",
)
async def put_contract(
    contract_id: Annotated[int, id_path()], body: ContractInput, store: StoreDep
) -> JSONResponse:
    contract = ContractIn(id=contract_id, **body.model_dump())
    record = await store.put_contract(contract)
    log.info("contract_written", contract_id=contract_id)
    return JSONResponse(record)
