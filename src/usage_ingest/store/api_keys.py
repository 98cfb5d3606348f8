"""API key records: created and revoked by the CLI, looked up by the HTTP API."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from usage_ingest.store.connection import QUERIES, PooledStore, _translated_errors


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    """A stored API key: never the key itself, only its hash."""

    key_id: str
    name: str
    key_hash: str
    permissions: tuple[str, ...]
    created_at: datetime
    revoked_at: datetime | None


def _api_key(row: asyncpg.Record) -> ApiKeyRecord:
    return ApiKeyRecord(
        row["key_id"],
        row["name"],
        row["key_hash"],
        tuple(row["permissions"]),
        row["created_at"],
        row["revoked_at"],
    )


class ApiKeyStore(PooledStore):
    """The `api_keys` table: only hashes of keys, never the keys."""

    async def create_api_key(
        self, key_id: str, name: str, key_hash: str, permissions: Sequence[str]
    ) -> bool:
        """Store a key's hash; False when the key id is taken (draw another)."""
        async with _translated_errors("create API key"):
            created = await self._pool.fetchval(
                QUERIES["insert_api_key"], key_id, name, key_hash, list(permissions)
            )
        return created is not None

    async def find_api_key(self, key_id: str) -> ApiKeyRecord | None:
        async with _translated_errors("read API key"):
            row = await self._pool.fetchrow(QUERIES["find_api_key"], key_id)
        return None if row is None else _api_key(row)

    async def list_api_keys(self) -> list[ApiKeyRecord]:
        async with _translated_errors("list API keys"):
            rows = await self._pool.fetch(QUERIES["list_api_keys"])
        return [_api_key(row) for row in rows]

    async def revoke_api_key(self, key_id: str) -> ApiKeyRecord | None:
        """Revoke a key (at once, for every later request); None when there is no such key."""
        async with _translated_errors("revoke API key"):
            row = await self._pool.fetchrow(QUERIES["revoke_api_key"], key_id)
        return None if row is None else _api_key(row)
