"""`Store.migrate` on a real Postgres: every file of sql/ applied once, in order;
a second run is a no-op; the `usages` table is what SPEC.md §7 promises."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from tests.support.database import create_database, with_database
from usage_ingest.store.connection import SQL_DIR
from usage_ingest.store.store import Store

pytestmark = pytest.mark.integration

# SPEC.md §7: the columns downstream billing reads, with their types
# (payload_hash has no type in the contract: any is fine).
SPEC_USAGE_COLUMNS: dict[str, str | None] = {
    "id": "bigint",
    "external_reference": "text",
    "contract_id": "bigint",
    "debtor_id": "bigint",
    "inventory_id": "bigint",
    "product_item_id": "bigint",
    "product_ident": "text",
    "start_date": "timestamp with time zone",
    "end_date": "timestamp with time zone",
    "unit_quantities": "jsonb",
    "billable": "boolean",
    "payload_hash": None,
    "source_topic": "text",
    "source_partition": "integer",
    "source_offset": "bigint",
    "received_at": "timestamp with time zone",
}


async def empty_database(admin_url: str) -> str:
    """A fresh database with nothing in it (create_database would migrate it)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return with_database(admin_url, name)


@pytest.fixture
async def empty_url(postgres_admin_url: str) -> str:
    return await empty_database(postgres_admin_url)


@pytest.fixture
async def store(empty_url: str) -> AsyncIterator[Store]:
    store = await Store.open(empty_url)
    yield store
    await store.close()


def expected_migrations() -> list[str]:
    """Names of the migration files in sql/, in the order they must apply."""
    names = sorted(p.name for p in SQL_DIR.glob("*.sql") if re.match(r"^\d{4}_", p.name))
    return [name.removesuffix(".sql") for name in names]


async def dump_schema(url: str) -> dict[str, Any]:
    """Everything a migration could change, in a comparable form."""
    conn = await asyncpg.connect(url)
    try:
        columns = await conn.fetch(
            "SELECT table_name, column_name, ordinal_position, data_type, is_nullable,"
            " column_default, is_identity"
            " FROM information_schema.columns WHERE table_schema = 'public'"
            " ORDER BY table_name, ordinal_position"
        )
        indexes = await conn.fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'"
            " ORDER BY indexname"
        )
        constraints = await conn.fetch(
            "SELECT conrelid::regclass::text AS table_name, conname,"
            " pg_get_constraintdef(oid) AS definition"
            " FROM pg_constraint WHERE connamespace = 'public'::regnamespace"
            " ORDER BY 1, 2"
        )
        migrations = await conn.fetch(
            "SELECT version, applied_at FROM schema_migrations ORDER BY version"
        )
    finally:
        await conn.close()
    return {
        "columns": [tuple(r) for r in columns],
        "indexes": [tuple(r) for r in indexes],
        "constraints": [tuple(r) for r in constraints],
        "migrations": [tuple(r) for r in migrations],
    }


async def usage_columns(url: str) -> dict[str, tuple[str, str]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT column_name, data_type, is_nullable FROM information_schema.columns"
            " WHERE table_schema = 'public' AND table_name = 'usages'"
        )
    finally:
        await conn.close()
    return {r["column_name"]: (r["data_type"], r["is_nullable"]) for r in rows}


def test_sql_directory_has_migrations() -> None:
    assert expected_migrations(), "sql/ holds no NNNN_*.sql migration"


async def test_migrate_applies_every_file_of_sql_in_order(store: Store, empty_url: str) -> None:
    applied = await store.migrate()
    assert applied == expected_migrations()
    conn = await asyncpg.connect(empty_url)
    try:
        recorded = [r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")]
        tables = {
            r["tablename"]
            for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        }
    finally:
        await conn.close()
    assert sorted(recorded) == expected_migrations()
    assert "usages" in tables


async def test_second_migrate_returns_nothing_and_changes_nothing(
    store: Store, empty_url: str
) -> None:
    assert await store.migrate() == expected_migrations()
    before = await dump_schema(empty_url)
    assert await store.migrate() == []
    after = await dump_schema(empty_url)
    assert after == before
    assert before["columns"], "the dump compared nothing"


async def test_concurrent_migrations_apply_each_file_once(empty_url: str) -> None:
    stores = [await Store.open(empty_url) for _ in range(3)]
    try:
        results = await asyncio.gather(*(s.migrate() for s in stores))
    finally:
        for s in stores:
            await s.close()
    applied = [name for result in results for name in result]
    assert sorted(applied) == expected_migrations()


async def test_database_from_create_database_is_already_migrated(
    postgres_admin_url: str,
) -> None:
    url = await create_database(postgres_admin_url)
    store = await Store.open(url)
    try:
        assert await store.migrate() == []
    finally:
        await store.close()


async def test_usages_has_every_column_of_the_spec(store: Store, empty_url: str) -> None:
    await store.migrate()
    columns = await usage_columns(empty_url)
    missing = set(SPEC_USAGE_COLUMNS) - set(columns)
    assert not missing, f"usages lacks {sorted(missing)}"
    for name, data_type in SPEC_USAGE_COLUMNS.items():
        if data_type is not None:
            assert columns[name][0] == data_type, name
    assert columns["external_reference"][1] == "NO"
    assert columns["id"][1] == "NO"


async def test_usages_id_is_the_primary_key(store: Store, empty_url: str) -> None:
    await store.migrate()
    conn = await asyncpg.connect(empty_url)
    try:
        key = await conn.fetchval(
            "SELECT array_agg(a.attname::text) FROM pg_index i"
            " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)"
            " WHERE i.indrelid = 'usages'::regclass AND i.indisprimary"
        )
    finally:
        await conn.close()
    assert key == ["id"]


async def test_external_reference_is_unique(store: Store, empty_url: str) -> None:
    await store.migrate()
    conn = await asyncpg.connect(empty_url)
    insert = (
        "INSERT INTO usages (external_reference, contract_id, debtor_id, inventory_id,"
        " product_item_id, product_ident, start_date, end_date, billable, payload_hash,"
        " raw_payload, source_topic, source_partition, source_offset)"
        " VALUES ($1, 1, 1, 1, 1, 'p', now(), now(), true, $2, '{}', 't', 0, $3)"
    )
    try:
        await conn.execute(insert, "ref-1", "h1", 1)
        await conn.execute(insert, "ref-2", "h1", 2)
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute(insert, "ref-1", "h2", 3)
        count = await conn.fetchval("SELECT count(*) FROM usages")
    finally:
        await conn.close()
    assert count == 2
