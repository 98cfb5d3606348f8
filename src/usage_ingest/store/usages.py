"""Usages: the insert of a batch (§6), and the API's read of one stored usage."""

from __future__ import annotations

import json
from collections.abc import Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import asyncpg

from usage_ingest.domain.records import USAGE_COLUMNS, StoredUsage, UsageRow
from usage_ingest.errors import StoreUnavailable
from usage_ingest.store.connection import QUERIES, PooledStore, _translated_errors

if TYPE_CHECKING:
    from usage_ingest.store.connection import Connection


async def insert_usages(conn: Connection, rows: Sequence[UsageRow]) -> dict[str, StoredUsage]:
    """Insert the rows whose external reference is new (§6), in the caller's transaction.

    Returns, per external reference, the row that holds it now: the one just
    inserted, or the one stored before (whose hash tells duplicate from conflict).
    `rows` must not repeat an external reference, and the staging table must be empty.
    """
    # Staged by COPY (encoded in C, no array per column), then claimed and
    # written by one INSERT ... ON CONFLICT: never "claim, then write".
    await conn.copy_records_to_table("usage_batch", records=rows, columns=USAGE_COLUMNS)
    inserted = {
        r["external_reference"]: r["id"] for r in await conn.fetch(QUERIES["insert_usage_batch"])
    }
    held = [r.external_reference for r in rows if r.external_reference not in inserted]
    before = await conn.fetch(QUERIES["fetch_stored_usages"], held) if held else []
    stored = {
        row.external_reference: StoredUsage(
            inserted[row.external_reference],
            True,
            row.payload_hash,
            row.source_topic,
            row.source_partition,
            row.source_offset,
        )
        for row in rows
        if row.external_reference in inserted
    }
    for record in before:
        stored[record["external_reference"]] = StoredUsage(
            record["id"],
            False,
            record["payload_hash"],
            record["source_topic"],
            record["source_partition"],
            record["source_offset"],
        )
    if len(stored) != len(rows):
        raise StoreUnavailable("a concurrent writer hid a stored usage; the batch is retried")
    return stored


class UsageStore(PooledStore):
    """The `usages` table: written a batch at a time, read one usage at a time."""

    async def store_usages(self, rows: Sequence[UsageRow]) -> dict[str, StoredUsage]:
        """Insert the rows whose external reference is new (§6), in a transaction of
        their own (the worker writes its batches through `batch()`, with their refusals).
        """
        if not rows:
            return {}
        async with (
            _translated_errors("store usages"),
            self._pool.acquire() as conn,
            conn.transaction(),
        ):
            return await insert_usages(conn, rows)

    async def get_usage(self, external_reference: str) -> dict[str, Any] | None:
        """A stored usage by externalReference (columns by name; JSON parsed, decimals
        exact), or None."""
        async with _translated_errors("read usage"):
            row = await self._pool.fetchrow(QUERIES["fetch_usage"], external_reference)
        return None if row is None else decoded_usage(row)


_JSON_COLUMNS = ("tax_location", "performance_location", "unit_quantities", "properties")


def decoded_usage(row: asyncpg.Record) -> dict[str, Any]:
    """A row of `fetch_usage`'s columns as a dict: JSON parsed, decimals exact."""
    usage = dict(row)
    for column in _JSON_COLUMNS:
        if usage[column] is not None:
            usage[column] = json.loads(usage[column], parse_float=Decimal)
    return usage
