"""Sessions of the operations console: created when an API key signs in, read on every
console request with the key as it is now, deleted when the operator signs out.

Only the SHA-256 of a session's token is stored; the token lives in the browser's cookie."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from usage_ingest.store.connection import QUERIES, PooledStore, _translated_errors


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    """A live session and its key, read again for every request."""

    key_id: str
    key_name: str
    permissions: tuple[str, ...]
    key_revoked: bool
    expires_at: datetime


class ConsoleSessionStore(PooledStore):
    """The `console_sessions` table: hashes of session tokens, each naming its key."""

    async def create_console_session(self, token_hash: str, key_id: str, ttl_s: float) -> None:
        """Store a new session for `ttl_s` seconds; sessions past their expiry go too."""
        async with (
            _translated_errors("create console session"),
            self._pool.acquire() as conn,
            conn.transaction(),
        ):
            await conn.execute(QUERIES["delete_expired_console_sessions"])
            await conn.execute(QUERIES["insert_console_session"], token_hash, key_id, ttl_s)

    async def find_console_session(self, token_hash: str) -> ConsoleSession | None:
        """The session, unless unknown or expired."""
        async with _translated_errors("read console session"):
            row = await self._pool.fetchrow(QUERIES["find_console_session"], token_hash)
        if row is None:
            return None
        return ConsoleSession(
            row["key_id"],
            row["name"],
            tuple(row["permissions"]),
            row["revoked_at"] is not None,
            row["expires_at"],
        )

    async def delete_console_session(self, token_hash: str) -> None:
        async with _translated_errors("delete console session"):
            await self._pool.execute(QUERIES["delete_console_session"], token_hash)
