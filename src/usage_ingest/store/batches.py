"""One batch's writes in one transaction: its usages, then every refusal (SPEC.md §6, §7).

The worker opens `Store.batch()` once per batch and makes two kinds of call in it on
one connection: `store_usages`, then `store_rejections`. The refusals that only
storage can decide (a conflicting payload, a value the database refuses) are known
after the first call, and still go in the same transaction: the usages and the
refusals are committed together, or neither is.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from usage_ingest.domain.records import RejectionRow, StoredUsage, UsageRow
from usage_ingest.store.connection import QUERIES, PooledStore, _translated_errors
from usage_ingest.store.rejections import insert_rejections
from usage_ingest.store.usages import insert_usages

if TYPE_CHECKING:
    from usage_ingest.store.connection import Connection


class BatchWrite:
    """The writes of one batch, on the connection of its open transaction."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._staged = False  # whether the staging table holds rows of an earlier call

    async def store_usages(self, rows: Sequence[UsageRow]) -> dict[str, StoredUsage]:
        """Insert the rows whose external reference is new; per reference, the row that
        holds it now. In a savepoint: when the database refuses a value, only this
        call's writes are undone and the transaction goes on."""
        if not rows:
            return {}
        async with _translated_errors("store usages"), self._conn.transaction():
            if self._staged:
                await self._conn.execute(QUERIES["clear_usage_batch"])
            stored = await insert_usages(self._conn, rows)
        self._staged = True
        return stored

    async def store_rejections(self, rows: Sequence[RejectionRow], failed_at: str) -> None:
        """Keep the refusals, in one statement; a source record kept before adds no row."""
        async with _translated_errors("store rejections"):
            await insert_rejections(self._conn, rows, failed_at)


class BatchStore(PooledStore):
    """The transaction of one batch's writes."""

    @asynccontextmanager
    async def batch(self) -> AsyncIterator[BatchWrite]:
        """Committed when the block ends normally, rolled back when it raises."""
        async with (
            _translated_errors("store batch"),
            self._pool.acquire() as conn,
            conn.transaction(),
        ):
            yield BatchWrite(conn)
