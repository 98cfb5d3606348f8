"""Property-based test of the HTTP API against its own OpenAPI document (schemathesis).

`usage-ingest api` runs as a real process over a real Postgres and the real broker;
for every operation, schemathesis generates valid (positive) and invalid (negative)
requests from `/openapi.json`, sends them with a key holding every permission, and
checks that no answer is a 5xx and that every answer matches the document: status
documented, media type, body schema. Bounded (examples per operation and mode) so the
whole test runs in seconds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support.api import ALL_PERMISSIONS, add_key
from tests.support.cli import ApiProcess, cli_env
from tests.support.database import create_database
from tests.support.settings import create_topics, make_settings
from usage_ingest.domain.reference import ContractIn, InventoryIn, ProductItemIn
from usage_ingest.store.store import Store

pytestmark = pytest.mark.integration

EXAMPLES_PER_OPERATION_AND_MODE = 30
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@dataclass
class Served:
    base_url: str
    key: str


@pytest.fixture(scope="module")
async def served(kafka_bootstrap: str, postgres_admin_url: str) -> AsyncIterator[Served]:
    settings = make_settings(kafka_bootstrap, await create_database(postgres_admin_url))
    await create_topics(settings)
    assert settings.database_url is not None
    store = await Store.open(settings.database_url.get_secret_value())
    try:
        key = await add_key(store, *ALL_PERMISSIONS)
        # Something for the generated ids to find (ids 1 and 2 are the likeliest).
        await store.create_product_item(ProductItemIn(reference="voice.uk", type="USAGE_BASED"))
        await store.put_contract(
            ContractIn.model_validate(
                {"id": 1, "debtorId": 1, "siteId": 1, "startDate": "2026-01-01"}
            )
        )
        for site in (1, 2):
            await store.create_inventory(
                InventoryIn.model_validate(
                    {
                        "siteId": site,
                        "usageProductId": 1,
                        "startDate": "2026-01-01",
                        "productReferences": [{"productReference": f"44100000000{site}"}],
                    }
                )
            )
    finally:
        await store.close()
    await _refusals(settings.database_url.get_secret_value())
    server = await ApiProcess(cli_env(settings)).start()
    yield Served(server.base_url, key)
    assert await server.stop() == 0
    assert b"api_request_failed" not in server.stderr, server.stderr.decode()[-3000:]


async def _refusals(database_url: str) -> None:
    """Refusals for GET /usage-rejections to list, one resolved by a usage."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "INSERT INTO usage_rejections (external_reference, errors, codes, retryable,"
            " source_topic, source_partition, source_offset, source_timestamp, failed_at)"
            " VALUES ('ref-1', $1::jsonb, '{NO_INVENTORY}', true, 'usage.events', 0, 1, now(),"
            " now()), (NULL, $2::jsonb, '{MALFORMED_MESSAGE}', false, 'usage.events', 0, 2,"
            " NULL, now())",
            '[{"code": "NO_INVENTORY", "field": "productIdent", "message": "none"}]',
            '[{"code": "MALFORMED_MESSAGE", "field": null, "message": "not JSON"}]',
        )
        await conn.execute(
            "INSERT INTO usages (external_reference, contract_id, debtor_id, inventory_id,"
            " product_item_id, product_ident, start_date, end_date, billable, payload_hash,"
            " raw_payload, source_topic, source_partition, source_offset)"
            " VALUES ('ref-1', 1, 1, 1, 1, 'voice.uk', now(), now(), true, 'h', '{}',"
            " 'usage.events', 0, 3)"
        )
    finally:
        await conn.close()


def exchanges(served: Served, operation: Any, mode: GenerationMode, tried: set[str]) -> Any:
    """The property for one operation and mode: every generated request is answered
    without a 5xx, as the document says."""

    @hypothesis.settings(
        max_examples=EXAMPLES_PER_OPERATION_AND_MODE,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        # No shrinking: each example is a network round trip; a failure is reported
        # as generated, with the curl command that reproduces it.
        phases=[Phase.explicit, Phase.generate],
    )
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    def exchange(case: Any) -> None:
        response = case.call(
            base_url=served.base_url, headers={"X-API-KEY": served.key}, timeout=10
        )
        case.validate_response(response, checks=CHECKS)
        tried.add(operation.label)

    return exchange


def test_no_5xx_and_every_response_matches_the_openapi_document(served: Served) -> None:
    schema = schemathesis.openapi.from_url(f"{served.base_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 14
    tried: set[str] = set()
    for operation in operations:
        takes_input = any(operation.definition.raw.get(k) for k in ("parameters", "requestBody"))
        # Invalid input needs some input: /healthz, /readyz and /metrics take none.
        modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if takes_input else [])
        for mode in modes:
            exchanges(served, operation, mode, tried)()
    assert tried == {operation.label for operation in operations}
