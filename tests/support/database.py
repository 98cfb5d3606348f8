"""Databases of a test's own, the demo reference data, and what the usages table holds."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from pydantic import SecretStr

from tests.support.events import SourceKey
from usage_ingest.dev.postgres import EmbeddedPostgres
from usage_ingest.domain.reference import read_reference_file
from usage_ingest.settings import Settings
from usage_ingest.store.store import Store, open_store

DEMO_REFERENCE = Path(__file__).parents[2] / "src" / "usage_ingest" / "dev" / "demo_reference.json"


def with_database(url: str, name: str) -> str:
    """`url` with its database replaced by `name`."""
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


async def create_database(admin_url: str) -> str:
    """A fresh, migrated database; returns its URL."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    url = with_database(admin_url, name)
    settings = Settings(database_url=SecretStr(url))
    store = await open_store(settings)
    try:
        await store.migrate()
    finally:
        await store.close()
    return url


async def load_demo_reference(url: str) -> None:
    store = await Store.open(url)
    try:
        await store.load_reference(read_reference_file(DEMO_REFERENCE))
    finally:
        await store.close()


async def prepared_database(server: EmbeddedPostgres) -> str:
    """On a Postgres of the test's own (to kill and restart): a migrated database with
    the demo reference data; returns its URL."""
    url = await asyncio.to_thread(server.create_database, "usage")
    store = await Store.open(url)
    try:
        await store.migrate()
        await store.load_reference(read_reference_file(DEMO_REFERENCE))
    finally:
        await store.close()
    return url


@dataclass(frozen=True)
class StoredRow:
    reference: str
    usage_id: int
    source: SourceKey


async def stored_rows(url: str) -> list[StoredRow]:
    """Every usage: its external reference, its id and the input record it came from."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT external_reference, id, source_partition, source_offset FROM usages"
        )
    finally:
        await conn.close()
    return [StoredRow(r[0], r[1], (r[2], r[3])) for r in rows]


async def count_usages(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM usages"))
    finally:
        await conn.close()


# Rows written straight into the tables, for the read side's tests (a refusal with its
# errors and source; a usage under a reference).
INSERT_REJECTION = """
INSERT INTO usage_rejections (external_reference, errors, codes, retryable, source_topic,
    source_partition, source_offset, source_timestamp, failed_at, replay_count)
VALUES ($1, $2::jsonb, $3, $4, $5, $6, $7, $8, $9, $10)
RETURNING id
"""
INSERT_USAGE = """
INSERT INTO usages (external_reference, contract_id, debtor_id, inventory_id, product_item_id,
    product_ident, start_date, end_date, billable, payload_hash, raw_payload, source_topic,
    source_partition, source_offset)
VALUES ($1, 1, 1, 1, 1, 'voice.uk', $2, $2, true, 'hash', '{}', $3, 0, $4)
RETURNING id
"""


# Reference data that arrives late, for the fix-and-replay tests: product 2 'late.usage'
# exists, and its inventory record is loaded once usages of it were refused.
LATE_PRODUCT = {
    "productItems": [
        {"id": 2, "reference": "late.usage", "type": "USAGE_BASED", "status": "ACTIVE"},
    ]
}
LATE_INVENTORY = {
    "usageProductInventories": [
        {
            "id": 2,
            "siteId": 1,
            "usageProductId": 2,
            "startDate": "2020-01-01",
            "productReferences": [{"productReference": "441200000002"}],
        }
    ]
}
