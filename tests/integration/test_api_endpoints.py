"""The HTTP API's other endpoints and its edges (SPEC-API.md), against a real Postgres and
the real broker: API keys and permissions, product items, contracts, usage in and out
(through the real worker), health, readiness, metrics, and the error shape everywhere."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import httpx
import pytest
import structlog
from prometheus_client import CollectorRegistry

from tests.support.api import ALL_PERMISSIONS, PATCH_JSON, ApiWorld, add_key, unique, unique_int
from tests.support.settings import make_settings
from tests.support.worker import RunningWorker
from usage_ingest.api import keys as api_keys
from usage_ingest.api.app import create_app
from usage_ingest.api.keys import Permission
from usage_ingest.api.publisher import OnDemandProducer
from usage_ingest.dev.broker import EmbeddedBroker
from usage_ingest.dev.embedded import free_port
from usage_ingest.kafka.admin import ensure_topics
from usage_ingest.kafka.producer import OutputProducer
from usage_ingest.settings import Settings
from usage_ingest.store.store import Store

pytestmark = pytest.mark.integration


def codes(response: httpx.Response) -> list[tuple[str, str | None]]:
    return [(e["code"], e["field"]) for e in response.json()["errors"]]


def usage_event(reference: str, **fields: Any) -> dict[str, Any]:
    return {
        "externalReference": reference,
        "contractId": 1,
        "productIdent": "voice.uk",
        "startDate": "2026-11-22T10:00:00Z",
        "endDate": "2026-11-22T10:04:30Z",
        "unitQuantities": [{"unit": "minute", "quantity": "4.5"}],
        **fields,
    }


# --- API keys and permissions ---------------------------------------------------------

# Every operation, with a request that passes authentication and the permission it needs.
OPERATIONS: list[tuple[str, str, Permission, dict[str, Any]]] = [
    ("POST", "/usage-product-inventories", Permission.USAGE_PRODUCT_INVENTORY_CREATE, {"json": {}}),
    (
        "GET",
        "/usage-product-inventories?page=1&pageSize=1",
        Permission.USAGE_PRODUCT_INVENTORY_READ,
        {},
    ),
    ("GET", "/usage-product-inventories/1", Permission.USAGE_PRODUCT_INVENTORY_READ, {}),
    (
        "PATCH",
        "/usage-product-inventories/1",
        Permission.USAGE_PRODUCT_INVENTORY_UPDATE,
        {"json": [], "headers": PATCH_JSON},
    ),
    ("POST", "/v1/product-items", Permission.PRODUCT_ITEM_CREATE, {"json": {}}),
    ("PUT", "/contracts/1", Permission.CONTRACT_WRITE, {"json": {}}),
    ("POST", "/usages", Permission.USAGE_CREATE, {"json": {}}),
    ("GET", "/usages/nothing-here", Permission.USAGE_READ, {}),
    ("GET", "/usage-rejections?page=1&pageSize=1", Permission.USAGE_READ, {}),
    ("GET", "/usages?page=1&pageSize=1", Permission.USAGE_READ, {}),
    (
        "GET",
        "/usage-summaries?startDate=gte:2026-05-01T00:00:00Z&startDate=lt:2026-06-01T00:00:00Z",
        Permission.USAGE_READ,
        {},
    ),
]
OPERATION_IDS = [f"{method} {path.partition('?')[0]}" for method, path, _, _ in OPERATIONS]


@pytest.mark.parametrize(
    ("method", "path", "permission", "request_args"), OPERATIONS, ids=OPERATION_IDS
)
async def test_every_operation_needs_a_key_with_its_permission(
    api: ApiWorld,
    method: str,
    path: str,
    permission: Permission,
    request_args: dict[str, Any],
) -> None:
    headers = request_args.get("headers", {})
    args = {k: v for k, v in request_args.items() if k != "headers"}

    async def call(**credentials: str) -> httpx.Response:
        """Only the credentials given (the client's own X-API-KEY is blanked)."""
        sent = {**headers, "X-API-KEY": "", **credentials}
        return await api.client.request(method, path, headers=sent, **args)

    # No key, an unknown, a malformed, a revoked key: 401, with the challenge.
    unknown = api_keys.generate().key
    for response in (
        await call(),
        await call(Authorization="Bearer "),
        await call(**{"X-API-KEY": unknown}),
        await call(**{"X-API-KEY": "not-a-key"}),
        await call(**{"X-API-KEY": api.revoked_key}),
        await call(
            **{"X-API-KEY": api.admin_key[:-1] + ("A" if api.admin_key[-1] != "A" else "B")}
        ),
        await call(Authorization=f"Basic {api.admin_key}"),
        # Two different keys, even two valid ones: which one speaks is not guessed.
        await call(**{"X-API-KEY": api.admin_key, "Authorization": f"Bearer {api.reader_key}"}),
    ):
        assert response.status_code == 401, response.text
        assert codes(response) == [("UNAUTHORIZED", None)]
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    # Every permission but this one: 403.
    others = [p for p in ALL_PERMISSIONS if p is not permission]
    response = await call(**{"X-API-KEY": await add_key(api.store, *others)})
    assert response.status_code == 403
    assert codes(response) == [("FORBIDDEN", None)]
    assert permission.value in response.json()["errors"][0]["message"]
    # This permission alone, as X-API-KEY or as a bearer token: past the guard.
    only = await add_key(api.store, permission)
    for response in (
        await call(**{"X-API-KEY": only}),
        await call(Authorization=f"Bearer {only}"),
        await call(**{"X-API-KEY": only, "Authorization": f"Bearer {only}"}),
    ):
        assert response.status_code not in (401, 403), response.text


async def test_keys_are_stored_only_as_hashes(api: ApiWorld) -> None:
    key = await add_key(api.store, Permission.USAGE_READ, name="hash-check")
    key_id = api_keys.key_id_of(key)
    assert api.settings.database_url is not None
    conn = await asyncpg.connect(api.settings.database_url.get_secret_value())
    try:
        row = await conn.fetchrow("SELECT * FROM api_keys WHERE key_id = $1", key_id)
    finally:
        await conn.close()
    assert row is not None
    assert row["key_hash"] == hashlib.sha256(key.encode()).hexdigest()
    # uik_<key id>_<secret>: the secret itself may contain "_".
    secret = key.split("_", 2)[2]
    assert len(secret) == 43
    assert all(secret not in str(value) for value in row.values())


async def test_a_revoked_key_stops_working_at_once(api: ApiWorld) -> None:
    key = await add_key(api.store, Permission.USAGE_PRODUCT_INVENTORY_READ)
    path = "/usage-product-inventories?page=1&pageSize=1"
    assert (await api.client.get(path, headers={"X-API-KEY": key})).status_code == 200
    await api.store.revoke_api_key(str(api_keys.key_id_of(key)))
    assert (await api.client.get(path, headers={"X-API-KEY": key})).status_code == 401


async def test_keys_are_never_logged_and_the_platform_id_is(api: ApiWorld) -> None:
    with structlog.testing.capture_logs() as logs:
        await api.client.get(
            "/usage-product-inventories?page=1&pageSize=1",
            headers={"x-platform-id": "platform-42"},
        )
        await api.client.get("/usages/x", headers={"Authorization": f"Bearer {api.admin_key}"})
        await api.client.get("/usages/x", headers={"X-API-KEY": api.revoked_key})
    requests = [entry for entry in logs if entry["event"] == "api_request"]
    assert len(requests) == 3
    assert requests[0]["platform_id"] == "platform-42"
    assert requests[0]["route"] == "/usage-product-inventories"
    assert requests[0]["api_key_id"] == api_keys.key_id_of(api.admin_key)
    assert "platform_id" not in requests[1]
    text = json.dumps(logs, default=str)
    for key in (api.admin_key, api.revoked_key):
        assert key not in text
        assert key.split("_", 2)[2] not in text


# --- product items ---------------------------------------------------------------------


async def test_product_item_is_created_with_its_read_only_fields(api: ApiWorld) -> None:
    body = {
        "reference": unique("voice."),
        "name": "UK voice minutes",
        "description": "",
        "type": "USAGE_BASED",
        "tax_category": "standard",
        "display_order": 3,
        "unit_name": {"singular": "minute", "plural": "minutes"},
        "custom_fields": [{"key": "region", "value": ["uk", 1, 2.5, None, True]}],
    }
    response = await api.client.post("/v1/product-items", json=body)
    assert response.status_code == 201
    item = response.json()
    assert item == {**body, "id": item["id"], "object_type": "product_item", "status": "ACTIVE"}
    assert isinstance(item["id"], int)


async def test_duplicate_product_item_reference_is_409(api: ApiWorld) -> None:
    item = await api.product_item(name="first")
    response = await api.client.post(
        "/v1/product-items", json={"reference": item["reference"], "name": "second"}
    )
    assert response.status_code == 409
    assert codes(response) == [("DUPLICATE_REFERENCE", "reference")]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"name": "no reference"}, [("SCHEMA_VIOLATION", "reference")]),
        ({"reference": "has space"}, [("SCHEMA_VIOLATION", "reference")]),
        ({"reference": ""}, [("SCHEMA_VIOLATION", "reference")]),
        ({"reference": "x" * 257}, [("SCHEMA_VIOLATION", "reference")]),
        ({"reference": "{r}", "name": "two\nlines"}, [("SCHEMA_VIOLATION", "name")]),
        ({"reference": "{r}", "description": "x" * 257}, [("SCHEMA_VIOLATION", "description")]),
        ({"reference": "{r}", "type": "SUBSCRIPTION"}, [("SCHEMA_VIOLATION", "type")]),
        ({"reference": "{r}", "display_order": 2**40}, [("SCHEMA_VIOLATION", "display_order")]),
        ({"reference": "{r}", "tax_category": "a\x00b"}, [("SCHEMA_VIOLATION", "tax_category")]),
        (
            {"reference": "{r}", "custom_fields": [{"k": "\x00"}]},
            [("SCHEMA_VIOLATION", "custom_fields")],
        ),
        ({"reference": "{r}", "unit_name": "minute"}, [("SCHEMA_VIOLATION", "unit_name")]),
        ({"reference": "{r}", "status": "ACTIVE"}, [("READ_ONLY_FIELD", "status")]),
        ({"reference": "{r}", "id": 5}, [("READ_ONLY_FIELD", "id")]),
        ({"reference": "{r}", "colour": "red"}, [("SCHEMA_VIOLATION", "colour")]),
    ],
)
async def test_invalid_product_item_is_400(
    api: ApiWorld, body: dict[str, Any], expected: list[tuple[str, str]]
) -> None:
    if body.get("reference") == "{r}":
        body = {**body, "reference": unique("item.")}
    response = await api.client.post("/v1/product-items", json=body)
    assert response.status_code == 400, response.text
    assert codes(response) == expected


async def test_product_item_custom_fields_too_deep_or_not_finite_are_400(api: ApiWorld) -> None:
    deep: Any = "leaf"
    for _ in range(40):
        deep = {"d": deep}
    for custom in ([deep], '[{"n": 1e400}]', '[{"n": NaN}]'):
        reference = unique("item.")
        content = (
            json.dumps({"reference": reference, "custom_fields": custom})
            if not isinstance(custom, str)
            else f'{{"reference": "{reference}", "custom_fields": {custom}}}'
        )
        response = await api.client.post(
            "/v1/product-items", content=content, headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 400, response.text
        assert codes(response) == [("SCHEMA_VIOLATION", "custom_fields")]


# --- contracts ---------------------------------------------------------------------------


async def test_put_contract_creates_then_replaces(api: ApiWorld) -> None:
    contract_id = unique_int()
    first = {"debtorId": 3, "siteId": 100, "startDate": "2026-01-01", "endDate": "2026-12-31"}
    response = await api.client.put(f"/contracts/{contract_id}", json=first)
    assert response.status_code == 200
    assert response.json() == {"id": contract_id, **first}
    second = {"debtorId": 4, "siteId": 101, "startDate": "2026-02-01"}
    response = await api.client.put(f"/contracts/{contract_id}", json=second)
    assert response.status_code == 200
    assert response.json() == {"id": contract_id, **second, "endDate": None}
    assert api.settings.database_url is not None
    conn = await asyncpg.connect(api.settings.database_url.get_secret_value())
    try:
        rows = await conn.fetch("SELECT * FROM contracts WHERE id = $1", contract_id)
    finally:
        await conn.close()
    assert [(r["debtor_id"], r["site_id"], r["end_date"]) for r in rows] == [(4, 101, None)]


@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [
        (
            "/contracts/1",
            {"siteId": 1, "startDate": "2026-01-01"},
            [("SCHEMA_VIOLATION", "debtorId")],
        ),
        (
            "/contracts/1",
            {"debtorId": "3", "siteId": 1, "startDate": "2026-01-01"},
            [("SCHEMA_VIOLATION", "debtorId")],
        ),
        (
            "/contracts/1",
            {"debtorId": 3, "siteId": 1, "startDate": "2026-01-01", "endDate": "2025-01-01"},
            [("SCHEMA_VIOLATION", "endDate")],
        ),
        (
            "/contracts/1",
            {"debtorId": 3, "siteId": 1, "startDate": "Jan 1"},
            [("SCHEMA_VIOLATION", "startDate")],
        ),
        (
            "/contracts/1",
            {"id": 1, "debtorId": 3, "siteId": 1, "startDate": "2026-01-01"},
            [("READ_ONLY_FIELD", "id")],
        ),
        (
            "/contracts/one",
            {"debtorId": 3, "siteId": 1, "startDate": "2026-01-01"},
            [("INVALID_PARAMETER", "id")],
        ),
        (
            "/contracts/99999999999999999999",
            {"debtorId": 3, "siteId": 1, "startDate": "2026-01-01"},
            [("INVALID_PARAMETER", "id")],
        ),
        # Ids are positive (README, "Ids").
        (
            "/contracts/-5",
            {"debtorId": 3, "siteId": 1, "startDate": "2026-01-01"},
            [("INVALID_PARAMETER", "id")],
        ),
        (
            "/contracts/0",
            {"debtorId": 3, "siteId": 1, "startDate": "2026-01-01"},
            [("INVALID_PARAMETER", "id")],
        ),
        (
            "/contracts/5",
            {"debtorId": -3, "siteId": 0, "startDate": "2026-01-01"},
            [("SCHEMA_VIOLATION", "debtorId"), ("SCHEMA_VIOLATION", "siteId")],
        ),
    ],
)
async def test_invalid_contract_is_400(
    api: ApiWorld, path: str, body: dict[str, Any], expected: list[tuple[str, str]]
) -> None:
    response = await api.client.put(path, json=body)
    assert response.status_code == 400, response.text
    assert codes(response) == expected


# --- usage ------------------------------------------------------------------------------


async def read_until(
    bootstrap: str, topic: str, found: Callable[[dict[str, Any]], bool], timeout: float = 30
) -> dict[str, Any]:
    """The first outcome on `topic` (from the beginning) for which `found` holds."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        async with asyncio.timeout(timeout):
            while True:
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    for record in records:
                        value = json.loads(record.value or b"null")
                        if isinstance(value, dict) and found(value):
                            return value
    finally:
        await consumer.stop()


async def test_post_usage_is_published_keyed_by_reference_after_the_ack(api: ApiWorld) -> None:
    reference = unique("call-")
    content = json.dumps({**usage_event(reference), "futureField": {"x": 1}}).encode()
    response = await api.client.post(
        "/usages", content=content, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 202
    assert response.json() == {"externalReference": reference, "status": "queued"}
    messages = await api_support_read(api.settings, reference)
    assert [(m.key, m.value) for m in messages] == [(reference.encode(), content)]


async def api_support_read(settings: Settings, reference: str) -> list[Any]:
    from tests.support.broker import read_topic

    messages = await read_topic(settings.kafka_bootstrap_servers, settings.topic_events, 1)
    return [m for m in messages if m.key == reference.encode()]


async def test_post_usage_applies_the_workers_schema_rules(api: ApiWorld) -> None:
    body = usage_event(
        "bad ref!",
        contractId=None,
        startDate="2026-11-22T10:00:00Z",
        endDate="2026-11-22T09:00:00Z",
        unitQuantities=[{"unit": "minute", "quantity": "-1"}],
        taxLocation={"country": "XX"},
    )
    response = await api.client.post("/usages", json=body)
    assert response.status_code == 400
    assert sorted(codes(response)) == [
        ("SCHEMA_VIOLATION", "externalReference"),
        ("SCHEMA_VIOLATION", "taxLocation.country"),
        ("SCHEMA_VIOLATION", "unitQuantities.0.quantity"),
    ]
    # Cross-field rules, as the worker reports them.
    body = usage_event(unique("call-"), contractId=None, endDate="2026-11-22T09:00:00Z")
    response = await api.client.post("/usages", json=body)
    assert response.status_code == 400
    assert sorted(codes(response)) == [
        ("SCHEMA_VIOLATION", "debtorId"),
        ("SCHEMA_VIOLATION", "endDate"),
    ]


@pytest.mark.parametrize(
    ("content", "status", "code"),
    [
        (b"", 400, "MALFORMED_MESSAGE"),
        (b"{not json", 400, "MALFORMED_MESSAGE"),
        (b'["a list"]', 400, "MALFORMED_MESSAGE"),
        (b'{"a": NaN}', 400, "MALFORMED_MESSAGE"),
        (b'{"externalReference": "a", "externalReference": "b"}', 400, "MALFORMED_MESSAGE"),
        (b'{"x": "' + b"y" * 70_000 + b'"}', 413, "MESSAGE_TOO_LARGE"),
    ],
)
async def test_post_usage_refuses_what_the_worker_would_refuse(
    api: ApiWorld, content: bytes, status: int, code: str
) -> None:
    response = await api.client.post(
        "/usages", content=content, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == status
    assert [e["code"] for e in response.json()["errors"]] == [code]


async def test_post_usage_without_a_broker_is_503(api: ApiWorld) -> None:
    dead = api.settings.model_copy(
        update={"kafka_bootstrap_servers": f"127.0.0.1:{free_port()}", "api_publish_timeout_s": 5}
    )
    producer = OnDemandProducer(dead)
    app = create_app(dead, api.store, producer, registry=CollectorRegistry())
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://api.test",
        headers={"X-API-KEY": api.admin_key},
    ) as client:
        response = await client.post("/usages", json=usage_event(unique("call-")))
        assert response.status_code == 503
        assert codes(response) == [("BROKER_UNAVAILABLE", None)]
        assert response.headers["Retry-After"]
        # Reference data is still served while the broker is away.
        response = await client.get("/usage-product-inventories?page=1&pageSize=1")
        assert response.status_code == 200
    await producer.stop()


async def test_post_usage_when_the_broker_goes_away_is_503(api: ApiWorld) -> None:
    with EmbeddedBroker() as broker:
        settings = api.settings.model_copy(
            update={"kafka_bootstrap_servers": broker.bootstrap_servers, "api_publish_timeout_s": 1}
        )
        await ensure_topics(settings, [settings.topic_events])
        producer = OutputProducer(settings)
        await producer.start()
        app = create_app(settings, api.store, producer, registry=CollectorRegistry())
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://api.test",
            headers={"X-API-KEY": api.admin_key},
        ) as client:
            response = await client.post("/usages", json=usage_event(unique("call-")))
            assert response.status_code == 202
            broker.kill()
            response = await client.post("/usages", json=usage_event(unique("call-")))
            assert response.status_code == 503
            assert codes(response) == [("BROKER_UNAVAILABLE", None)]
        # The broker returns; the producer may still deliver what timed out (at least
        # once: a client retrying after the 503 makes a duplicate, which is harmless).
        broker.start()
        await ensure_topics(settings, [settings.topic_events])
        await producer.stop()


async def test_get_usage_that_does_not_exist_is_404(api: ApiWorld) -> None:
    for reference in ("never-stored", "has%20space", "x" * 200, "nul%00"):
        response = await api.client.get(f"/usages/{reference}")
        assert response.status_code == 404
        assert codes(response) == [("NOT_FOUND", None)]


async def test_usage_posted_over_http_is_stored_against_the_inventory_posted_just_before(
    api: ApiWorld, start_worker: Callable[[Settings], RunningWorker]
) -> None:
    worker = start_worker(api.settings)
    product = await api.product_item(reference=unique("voice."))
    contract_id, site = unique_int(), unique_int()
    response = await api.client.put(
        f"/contracts/{contract_id}",
        json={"debtorId": 3, "siteId": site, "startDate": "2026-01-01"},
    )
    assert response.status_code == 200
    inventory = await api.inventory(siteId=site, usageProductId=product["id"])
    reference = unique("call-")
    event = usage_event(reference, contractId=contract_id, productIdent=product["reference"])
    response = await api.client.post("/usages", json=event)
    assert response.status_code == 202
    outcome = await read_until(
        api.settings.kafka_bootstrap_servers,
        api.settings.topic_accepted,
        lambda o: o.get("externalReference") == reference,
    )
    assert outcome["status"] == "created"
    assert (outcome["inventoryId"], outcome["contractId"], outcome["billable"]) == (
        inventory["id"],
        contract_id,
        True,
    )
    stored = await api.client.get(f"/usages/{reference}")
    assert stored.status_code == 200
    usage = stored.json()
    assert usage["id"] == outcome["usageId"]
    assert (usage["externalReference"], usage["inventoryId"], usage["productItemId"]) == (
        reference,
        inventory["id"],
        product["id"],
    )
    assert usage["unitQuantities"] == [{"unit": "minute", "quantity": "4.5"}]
    assert usage["startDate"] == "2026-11-22T10:00:00.000000Z"
    assert usage["source"]["topic"] == api.settings.topic_events
    # A PATCH over HTTP is what the next usage is resolved against.
    response = await api.client.patch(
        f"/usage-product-inventories/{inventory['id']}",
        json=[{"op": "replace", "path": "/billable", "value": False}],
        headers=PATCH_JSON,
    )
    assert response.status_code == 200
    second = unique("call-")
    event = usage_event(second, contractId=contract_id, productIdent=product["reference"])
    assert (await api.client.post("/usages", json=event)).status_code == 202
    outcome = await read_until(
        api.settings.kafka_bootstrap_servers,
        api.settings.topic_accepted,
        lambda o: o.get("externalReference") == second,
    )
    assert (outcome["status"], outcome["billable"]) == ("created", False)
    await worker.stop()


# --- operations --------------------------------------------------------------------------


async def test_health_and_readiness(api: ApiWorld) -> None:
    response = await api.client.get("/healthz", headers={"X-API-KEY": ""})
    assert (response.status_code, response.json()) == (200, {"status": "ok"})
    response = await api.client.get("/readyz", headers={"X-API-KEY": ""})
    assert response.status_code == 200
    # The worker's /readyz shape: ready, and each check's answer.
    assert response.json() == {"ready": True, "checks": {"database": True, "broker": True}}


@pytest.fixture
async def unreachable_world(api: ApiWorld) -> AsyncIterator[httpx.AsyncClient]:
    """An app whose database and broker both refuse connections."""
    settings = make_settings(
        f"127.0.0.1:{free_port()}", f"postgresql://postgres@127.0.0.1:{free_port()}/none"
    )
    assert settings.database_url is not None
    store = await Store.open(settings.database_url.get_secret_value())
    producer = OnDemandProducer(settings)
    app = create_app(settings, store, producer, registry=CollectorRegistry())
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://api.test",
        headers={"X-API-KEY": api.admin_key},
    ) as client:
        yield client
    await store.close()


async def test_readiness_and_requests_without_database_and_broker_are_503(
    unreachable_world: httpx.AsyncClient,
) -> None:
    response = await unreachable_world.get("/readyz")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    body = response.json()
    assert (body["ready"], body["checks"]) == (False, {"database": False, "broker": False})
    assert codes(response) == [("DATABASE_UNAVAILABLE", None), ("BROKER_UNAVAILABLE", None)]
    assert (await unreachable_world.get("/healthz")).status_code == 200
    response = await unreachable_world.get("/usage-product-inventories/1")
    assert response.status_code == 503
    assert codes(response) == [("DATABASE_UNAVAILABLE", None)]


async def test_metrics_count_requests_by_route_template_and_status(api: ApiWorld) -> None:
    await api.client.get("/usage-product-inventories/987654321")
    await api.client.get("/usage-product-inventories/987654322")
    await api.client.get("/no/such/route")
    response = await api.client.get("/metrics", headers={"X-API-KEY": ""})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    lines = response.text.splitlines()

    def value(prefix: str) -> float:
        [line] = [line for line in lines if line.startswith(prefix + " ")]
        return float(line.rsplit(" ", 1)[1])

    labels = 'method="GET",route="/usage-product-inventories/{id}",status="404"'
    assert value(f"usage_ingest_api_requests_total{{{labels}}}") >= 2
    assert value(f"usage_ingest_api_request_duration_seconds_count{{{labels}}}") >= 2
    assert (
        value('usage_ingest_api_requests_total{method="GET",route="unmatched",status="404"}') >= 1
    )
    assert any(line.startswith("usage_ingest_api_usages_queued_total") for line in lines)


# --- the error shape ------------------------------------------------------------------------


async def test_unknown_routes_and_methods_answer_in_the_error_shape(api: ApiWorld) -> None:
    response = await api.client.get("/v2/product-items")
    assert response.status_code == 404
    assert codes(response) == [("NOT_FOUND", None)]
    response = await api.client.delete("/usage-product-inventories/1")
    assert response.status_code == 405
    assert codes(response) == [("METHOD_NOT_ALLOWED", None)]
    # Every method of the path (RFC 9110), not only the first route's.
    assert response.headers["Allow"] == "GET, PATCH"
    response = await api.client.put("/usage-product-inventories")
    assert response.headers["Allow"] == "GET, POST"


async def test_a_413_is_counted_under_its_route(api: ApiWorld) -> None:
    too_big = b"[" + b"0," * 600_000 + b"0]"
    response = await api.client.post(
        "/usages", content=too_big, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413
    metrics = (await api.client.get("/metrics", headers={"X-API-KEY": ""})).text
    assert 'usage_ingest_api_requests_total{method="POST",route="/usages",status="413"}' in metrics


@pytest.mark.parametrize("path", ["/usages", "/v1/product-items", "/usage-product-inventories"])
async def test_bodies_over_the_limit_are_413(api: ApiWorld, path: str) -> None:
    too_big = b"[" + b"0," * 600_000 + b"0]"  # over the default 1 MiB
    response = await api.client.post(
        path, content=too_big, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert codes(response) == [("REQUEST_TOO_LARGE", None)]

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
        for _ in range(12):
            yield b" " * 100_000

    response = await api.client.post(
        path, content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert codes(response) == [("REQUEST_TOO_LARGE", None)]


async def test_an_unexpected_failure_is_500_without_details(
    api: ApiWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(inventory_id: int) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(api.store, "get_inventory", broken)
    with structlog.testing.capture_logs() as logs:
        response = await api.client.get("/usage-product-inventories/1")
    assert response.status_code == 500
    assert codes(response) == [("INTERNAL_ERROR", None)]
    assert "secret" not in response.text
    assert "Traceback" not in response.text
    failed = [entry for entry in logs if entry["event"] == "api_request_failed"]
    assert len(failed) == 1
    assert failed[0]["exc_info"] is True


@pytest.mark.parametrize(
    ("method", "path", "body", "content_type"),
    [
        ("POST", "/usage-product-inventories", '{"siteId": 1, "siteId": 2}', "application/json"),
        ("PUT", "/contracts/5", '{"debtorId": 1, "debtorId": 2}', "application/json"),
        ("POST", "/v1/product-items", '{"reference": "a", "reference": "b"}', "application/json"),
        (
            "PATCH",
            "/usage-product-inventories/1",
            '[{"op": "test", "path": "/id", "path": "/siteId", "value": 1}]',
            "application/json-patch+json",
        ),
        (
            "POST",
            "/usages",
            '{"externalReference": "a", "externalReference": "b"}',
            "application/json",
        ),
    ],
)
async def test_a_repeated_key_is_refused_everywhere_with_the_same_message(
    api: ApiWorld, method: str, path: str, body: str, content_type: str
) -> None:
    response = await api.client.request(
        method, path, content=body.encode(), headers={"Content-Type": content_type}
    )
    assert response.status_code == 400, response.text
    [error] = response.json()["errors"]
    assert error["code"] == "MALFORMED_MESSAGE"
    assert "duplicate key" in error["message"]
    assert error["message"].endswith("its value is ambiguous")


async def test_the_openapi_document_writes_integer_bounds_exactly(api: ApiWorld) -> None:
    response = await api.client.get("/openapi.json", headers={"X-API-KEY": ""})
    text = response.text
    assert "e+18" not in text  # 9.223372036854776e+18 is 2^63: one past the largest id
    schemas = response.json()["components"]["schemas"]
    site = schemas["ContractInput"]["properties"]["siteId"]
    assert (site["minimum"], site["maximum"]) == (1, 2**63 - 1)
    bounds = re.findall(r'"(?:minimum|maximum)":(-?[0-9][0-9.e+]*)', text.replace(" ", ""))
    assert bounds
    assert all("." not in b and "e" not in b for b in bounds), sorted(set(bounds))
