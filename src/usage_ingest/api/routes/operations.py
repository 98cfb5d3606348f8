"""The operations endpoints, which need no key: `/healthz`, `/readyz` (the database
and the broker are reachable) and `/metrics` (Prometheus)."""

import asyncio

from fastapi import Response
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.routing import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from usage_ingest.api.deps import MetricsDep, SettingsDep, StoreDep
from usage_ingest.api.errors import RETRY_AFTER, ApiErrorCode, ApiErrorItem
from usage_ingest.api.guard import GuardedRoute
from usage_ingest.api.openapi import ERROR_DESCRIPTIONS
from usage_ingest.api.schemas import Health, NotReady, Readiness
from usage_ingest.kafka.connection import broker_answers

router = APIRouter(route_class=GuardedRoute)

# How long /readyz (and the console's overview) waits for each dependency to answer.
READINESS_TIMEOUT_S = 2.0


@router.get("/healthz", response_model=Health, summary="The process is alive")
async def healthz() -> JSONResponse:
    return JSONResponse({"status": "ok"})


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": NotReady, "description": ERROR_DESCRIPTIONS[503]}},
    summary="The database and the broker are reachable",
)
async def readyz(settings: SettingsDep, store: StoreDep) -> JSONResponse:
    database, broker = await asyncio.gather(
        store.answers(READINESS_TIMEOUT_S), broker_answers(settings)
    )
    problems = []
    if not database:
        problems.append(
            ApiErrorItem(
                code=ApiErrorCode.DATABASE_UNAVAILABLE, message="the database does not answer"
            )
        )
    if not broker:
        problems.append(
            ApiErrorItem(
                code=ApiErrorCode.BROKER_UNAVAILABLE,
                message="no bootstrap server answers",
            )
        )
    checks = {"database": database, "broker": broker}
    if problems:
        body = NotReady(ready=False, checks=checks, errors=problems)
        return JSONResponse(body.model_dump(mode="json"), status_code=503, headers=RETRY_AFTER)
    return JSONResponse(Readiness(ready=True, checks=checks).model_dump(mode="json"))


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    summary="Prometheus metrics",
)
async def prometheus_metrics(metrics: MetricsDep) -> Response:
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
