"""Bounded work per request, over HTTP against a real Postgres: the statement budget, and
the JSON Patch bounds (`request_limits`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from tests.support.api import ApiWorld, close_world, open_world
from tests.support.database import create_database
from usage_ingest.api.limits import MAX_PATCH_OPERATIONS
from usage_ingest.store.store import open_store

BUDGET_S = 0.5
PATCH = {"Content-Type": "application/json-patch+json"}


@pytest.fixture(scope="module")
async def limited(kafka_bootstrap: str, postgres_admin_url: str) -> AsyncIterator[ApiWorld]:
    url = await create_database(postgres_admin_url)
    world, producer = await open_world(kafka_bootstrap, url, api_statement_budget_s=BUDGET_S)
    yield world
    await close_world(world, producer)


async def test_a_statement_past_its_budget_is_cancelled_and_answered_504(
    limited: ApiWorld,
) -> None:
    record = await limited.inventory()
    url = limited.settings.require_database_url()
    # Another session holds the table: the list statement waits for it until Postgres
    # cancels it at the budget. That is a timeout, not an outage: no 503, no Retry-After.
    blocker = await asyncpg.connect(url)
    try:
        async with blocker.transaction():
            await blocker.execute("LOCK TABLE usage_product_inventories IN ACCESS EXCLUSIVE MODE")
            response = await limited.client.get("/usage-product-inventories?page=1&pageSize=10")
    finally:
        await blocker.close()
    assert response.status_code == 504, response.text
    [error] = response.json()["errors"]
    assert error["code"] == "STATEMENT_TIMEOUT"
    assert "Retry-After" not in response.headers
    # The connection went back to the pool in working order.
    again = await limited.client.get(f"/usage-product-inventories/{record['id']}")
    assert again.status_code == 200


async def test_a_doubling_patch_is_refused_and_changes_nothing(limited: ApiWorld) -> None:
    record = await limited.inventory()
    path = f"/usage-product-inventories/{record['id']}"
    bomb = [{"op": "copy", "from": "/productReferences", "path": "/productReferences/-"}] * 40
    response, health = await asyncio.gather(
        limited.client.patch(path, json=bomb, headers=PATCH), limited.client.get("/healthz")
    )
    assert response.status_code == 400, response.text
    [error] = response.json()["errors"]
    assert error["code"] == "PATCH_FAILED"
    assert "bytes" in error["message"]
    assert health.status_code == 200
    assert (await limited.client.get(path)).json() == record


async def test_a_patch_of_too_many_operations_is_refused(limited: ApiWorld) -> None:
    record = await limited.inventory()
    path = f"/usage-product-inventories/{record['id']}"
    operation = {"op": "test", "path": "/id", "value": record["id"]}
    fine = await limited.client.patch(path, json=[operation] * MAX_PATCH_OPERATIONS, headers=PATCH)
    assert fine.status_code == 200, fine.text
    response = await limited.client.patch(
        path, json=[operation] * (MAX_PATCH_OPERATIONS + 1), headers=PATCH
    )
    assert response.status_code == 400, response.text
    [error] = response.json()["errors"]
    assert error["code"] == "SCHEMA_VIOLATION"
    assert f"at most {MAX_PATCH_OPERATIONS}" in error["message"], error


async def test_the_api_plans_each_statement_for_its_values(limited: ApiWorld) -> None:
    """The lists' selectivity is all in their values: a generic plan, which Postgres may
    switch a prepared statement to after five runs, would ignore them."""
    store = await open_store(limited.settings, custom_plans=True)
    plain = await open_store(limited.settings)
    try:
        assert await store._pool.fetchval("SHOW plan_cache_mode") == "force_custom_plan"
        assert await plain._pool.fetchval("SHOW plan_cache_mode") == "auto"
    finally:
        await store.close()
        await plain.close()
