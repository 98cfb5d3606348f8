"""The replay's lock (`replay.guard`): one replay per replay group at a time, across
processes, as a Postgres session-level advisory lock.

The lock lives on one pooled connection kept for the whole run: a session-level lock
belongs to its session, so it must be the same connection that takes it, checks it and
releases it. When the run ends it is released (and the pool's reset on release unlocks
everything its session held, should the unlock itself fail); when the process dies,
Postgres ends the session and so releases the lock. A run holds one connection of its
process's pool while it runs.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import TYPE_CHECKING

from usage_ingest.errors import ReplayRunning, StoreUnavailable
from usage_ingest.store.connection import (
    _DRIVER_ERRORS,
    QUERIES,
    PooledStore,
    _translated_errors,
)

if TYPE_CHECKING:
    from usage_ingest.store.connection import Connection

_NAMESPACE = "usage-ingest.replay-group:"


def replay_lock_key(group_id: str) -> int:
    """The advisory lock key of a replay group: a signed 64-bit hash of its name. Two
    names with the same key would only wait for each other: never a double replay."""
    digest = hashlib.blake2b((_NAMESPACE + group_id).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class HeldReplayLock:
    """The lock of one group on the connection that holds it."""

    def __init__(self, conn: Connection, group_id: str, key: int) -> None:
        self._conn = conn
        self.group_id = group_id
        self._key = key

    async def held(self) -> bool:
        """Asks Postgres whether this session still holds the lock; a connection that
        fails to answer has lost it (its session, and so its lock, is gone or going)."""
        unsigned = self._key & 0xFFFF_FFFF_FFFF_FFFF
        try:
            async with _translated_errors(f"check the lock of replay group {self.group_id!r}"):
                held = await self._conn.fetchval(
                    QUERIES["replay_lock_held"], unsigned >> 32, unsigned & 0xFFFF_FFFF
                )
        except StoreUnavailable:
            return False
        return bool(held)

    async def release(self) -> None:
        with suppress(StoreUnavailable):
            async with _translated_errors(f"unlock replay group {self.group_id!r}"):
                await self._conn.fetchval(QUERIES["replay_unlock"], self._key)


class ReplayLockStore(PooledStore):
    @asynccontextmanager
    async def hold_replay_lock(self, group_id: str) -> AsyncIterator[HeldReplayLock]:
        """Hold the lock of replay group `group_id` for the block, or raise `ReplayRunning`
        at once when another session holds it (`StoreUnavailable`: no database)."""
        key = replay_lock_key(group_id)
        async with _translated_errors(
            f"cannot reach the database to lock replay group {group_id!r} "
            "(a replay that is not a dry run needs it)"
        ):
            conn = await self._pool.acquire()
        try:
            async with _translated_errors(f"lock replay group {group_id!r}"):
                taken = await conn.fetchval(QUERIES["try_replay_lock"], key)
            if not taken:
                raise ReplayRunning(group_id)
            lock = HeldReplayLock(conn, group_id, key)
            try:
                yield lock
            finally:
                await lock.release()
        finally:
            with suppress(*_DRIVER_ERRORS):  # a lost connection: the pool discards it
                await self._pool.release(conn)
