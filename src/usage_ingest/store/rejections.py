"""Refusals: the insert of a batch's refused records (SPEC.md §7), and their retention.

The worker writes them in its batch's transaction (`store.batches`); `usage-ingest
rejections prune` deletes the old ones. The API's read of them is not here.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from usage_ingest.domain.records import RejectionRow
from usage_ingest.store.connection import QUERIES, PooledStore, _translated_errors

if TYPE_CHECKING:
    from usage_ingest.store.connection import Connection

PRUNE_CHUNK = 10_000
"""Rows deleted per transaction by `prune_rejections`: short transactions, however many."""


async def insert_rejections(conn: Connection, rows: Sequence[RejectionRow], failed_at: str) -> None:
    """Keep `rows` in one statement, in the caller's transaction; a source record kept
    before adds no second row. `failed_at` is RFC 3339 text, as in the dead letter."""
    if not rows:
        return
    await conn.execute(
        QUERIES["insert_rejection_batch"],
        [r.external_reference for r in rows],
        [r.errors for r in rows],
        [r.retryable for r in rows],
        [r.source_topic for r in rows],
        [r.source_partition for r in rows],
        [r.source_offset for r in rows],
        [r.source_timestamp_ms for r in rows],
        [r.replay_count for r in rows],
        failed_at,
    )


class RejectionStore(PooledStore):
    """The `usage_rejections` table's retention."""

    async def prune_rejections(self, failed_before: datetime, *, dry_run: bool = False) -> int:
        """Delete the refusals that failed before `failed_before` (or, with `dry_run`,
        only count them); how many. Deleted a chunk per transaction, oldest first: an
        interrupted prune keeps what it did, and running it again finishes it."""
        async with _translated_errors("prune rejections"):
            if dry_run:
                count: int = await self._pool.fetchval(
                    QUERIES["count_rejections_failed_before"], failed_before
                )
                return count
            total = 0
            while True:
                deleted: int = await self._pool.fetchval(
                    QUERIES["delete_rejections_failed_before"], failed_before, PRUNE_CHUNK
                )
                total += deleted
                if deleted < PRUNE_CHUNK:
                    return total
