"""The HTTP API in process: the real app (`create_app`) over a real Postgres and a real
producer on the real broker, through httpx's ASGI transport, in the test's own event
loop; with keys for it and values no other test uses.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from typing import Any

import httpx
from prometheus_client import CollectorRegistry

from tests.support.settings import create_topics, make_settings
from usage_ingest.api import keys as api_keys
from usage_ingest.api.app import create_app
from usage_ingest.api.keys import Permission
from usage_ingest.kafka.producer import OutputProducer
from usage_ingest.settings import Settings
from usage_ingest.store.store import Store

ALL_PERMISSIONS = tuple(Permission)
READ_PERMISSIONS = (Permission.USAGE_READ, Permission.USAGE_PRODUCT_INVENTORY_READ)
PATCH_JSON = {"Content-Type": "application/json-patch+json"}

_numbers = itertools.count(1)


def unique(prefix: str = "") -> str:
    """A value no other test of this run uses (product references, ids, names)."""
    return f"{prefix}{os.getpid() % 1000:03d}{next(_numbers):06d}"


def unique_int() -> int:
    return int(unique("9"))


async def add_key(store: Store, *permissions: Permission, name: str = "test") -> str:
    new = api_keys.generate()
    assert await store.create_api_key(
        new.key_id, name, new.key_hash, [p.value for p in permissions]
    )
    return new.key


@dataclass
class ApiWorld:
    """One database, one set of topics, one producer, one app, and keys for it."""

    settings: Settings
    store: Store
    client: httpx.AsyncClient
    registry: CollectorRegistry
    admin_key: str
    reader_key: str
    revoked_key: str

    def as_reader(self) -> dict[str, str]:
        return {"X-API-KEY": self.reader_key}

    async def product_item(self, **fields: Any) -> dict[str, Any]:
        body = {"reference": unique("product."), "type": "USAGE_BASED", **fields}
        response = await self.client.post("/v1/product-items", json=body)
        assert response.status_code == 201, response.text
        return dict(response.json())

    async def inventory(self, **fields: Any) -> dict[str, Any]:
        """Create an inventory record over HTTP (a new product item unless given)."""
        if "usageProductId" not in fields:
            fields["usageProductId"] = (await self.product_item())["id"]
        body = {
            "siteId": unique_int(),
            "startDate": "2026-01-01",
            "productReferences": [{"productReference": unique("44")}],
            **fields,
        }
        response = await self.client.post("/usage-product-inventories", json=body)
        assert response.status_code == 201, response.text
        return dict(response.json())


async def open_world(
    kafka_bootstrap: str, database_url: str, **overrides: Any
) -> tuple[ApiWorld, OutputProducer]:
    settings = make_settings(kafka_bootstrap, database_url, **overrides)
    await create_topics(settings)
    store = await Store.open(database_url, statement_budget_s=settings.api_statement_budget_s)
    producer = OutputProducer(settings)
    await producer.start()
    registry = CollectorRegistry()
    app = create_app(settings, store, producer, registry=registry)
    admin = await add_key(store, *ALL_PERMISSIONS, name="admin")
    reader = await add_key(store, *READ_PERMISSIONS, name="reader")
    revoked = await add_key(store, *ALL_PERMISSIONS, name="revoked")
    assert await store.revoke_api_key(str(api_keys.key_id_of(revoked))) is not None
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://api.test",
        headers={"X-API-KEY": admin},
        timeout=30,
    )
    world = ApiWorld(settings, store, client, registry, admin, reader, revoked)
    return world, producer


async def close_world(world: ApiWorld, producer: OutputProducer) -> None:
    await world.client.aclose()
    await producer.stop()
    await world.store.close()
