"""The schema's migrations: the ordered `sql/` files, `migrate`, and what is not applied yet."""

from __future__ import annotations

import re
from pathlib import Path

from usage_ingest.store.connection import QUERIES, SQL_DIR, PooledStore, _translated_errors

MIGRATION_FILE = re.compile(r"^\d{4}_[a-z0-9_]+\.sql$")
# Serialises concurrent `migrate` runs (an arbitrary constant, the same everywhere).
MIGRATION_LOCK_KEY = 0x75736167


def migration_files() -> list[Path]:
    return sorted(p for p in SQL_DIR.iterdir() if MIGRATION_FILE.match(p.name))


class MigrationStore(PooledStore):
    """Applying the migrations (the CLI's `migrate`) and checking them (readiness)."""

    async def migrate(self) -> list[str]:
        """Apply the `sql/` migrations not applied yet, in order; returns their names."""
        applied_now: list[str] = []
        async with _translated_errors("migrate"), self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            for path in migration_files():
                if path.stem in done:
                    continue
                await conn.execute(path.read_text())
                await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", path.stem)
                applied_now.append(path.stem)
        return applied_now

    async def unapplied_migrations(self) -> list[str]:
        """The `sql/` migrations this database has not applied yet."""
        async with _translated_errors("read applied migrations"), self._pool.acquire() as conn:
            applied: set[str] = set()
            if await conn.fetchval(QUERIES["has_migrations_table"]):
                applied = set(await conn.fetchval(QUERIES["applied_migrations"]))
        return [path.stem for path in migration_files() if path.stem not in applied]
