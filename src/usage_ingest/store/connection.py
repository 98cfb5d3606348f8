"""The store's shared machinery: the pool, the named queries, and driver-error translation.

Every concern of the store (`migrations`, `usages`, `usage_summaries`, `reference`, `inventories`,
`product_items`, `contracts`, `api_keys`) is a `PooledStore` working on the one pool
opened here. The names with a leading underscore are private to the `store` package.

Driver errors leave the store as the project's own: `StoreUnavailable`
(retryable: connection lost, timeout, serialization failure, deadlock) or
`StoreRefusedData` (the values of a row cannot be stored; retrying won't help).
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import asyncpg

from usage_ingest.errors import (
    DependencyUnavailable,
    StatementTimedOut,
    StoreRefusedData,
    StoreUnavailable,
)

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    # A connection as the pool lends it.
    Connection = PoolConnectionProxy[asyncpg.Record]

SQL_DIR = Path(__file__).parent / "sql"

# SQLSTATE classes worth retrying: connection (08), transaction rollback such as
# serialization failure and deadlock (40), insufficient resources (53), operator
# intervention such as statement timeout or shutdown (57), system error (58).
_TRANSIENT_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "57", "58"})


def load_queries(path: Path) -> dict[str, str]:
    """Named blocks of a .sql file: each starts with a `-- name: NAME` line."""
    queries: dict[str, str] = {}
    name: str | None = None
    for line in path.read_text().splitlines():
        if line.startswith("-- name:"):
            name = line.removeprefix("-- name:").strip()
            queries[name] = ""
        elif name is not None:
            queries[name] += line + "\n"
    return queries


QUERIES = load_queries(SQL_DIR / "queries.sql")


# What the driver raises: the server's errors, and its own about the connection. An
# InternalClientError ("cannot switch to state 15; another operation (2) is in progress",
# asyncpg issue #784) leaves one connection unusable: the pool closes it, and the work is
# retried on another, like any lost connection.
_DRIVER_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)


def _is_transient(exc: BaseException) -> bool:
    """A server error of a transient class (a lost connection is class 08), or any error
    of the driver itself: every one of those is about a connection, not the data."""
    if isinstance(exc, asyncpg.PostgresError):
        return str(exc.sqlstate or "")[:2] in _TRANSIENT_SQLSTATE_CLASSES
    return isinstance(exc, _DRIVER_ERRORS)


@asynccontextmanager
async def _translated_errors(action: str) -> AsyncIterator[None]:
    try:
        yield
    except _DRIVER_ERRORS as exc:
        detail = f"{action}: {type(exc).__name__}: {exc}".strip()
        # 57014 is also an operator's pg_cancel_backend: only its own budget is a timeout.
        if isinstance(exc, asyncpg.QueryCanceledError) and "statement timeout" in str(exc):
            raise StatementTimedOut(detail) from exc
        if _is_transient(exc):
            raise StoreUnavailable(detail) from exc
        raise StoreRefusedData(detail) from exc


def _json_or_none(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


async def _prepare_connection(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    """Each new connection gets its staging table for `store_usages` (a session's temporary
    table outlives the pool's reset between uses)."""
    await conn.execute(QUERIES["prepare_usage_batch"])


class PooledStore:
    """A store on an asyncpg pool: opening and closing the pool, and its ping."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        max_size: int = 4,
        statement_timeout_s: float = 30.0,
        statement_budget_s: float | None = None,
        custom_plans: bool = False,
    ) -> Self:
        """A pool that connects lazily: a database that is down is retried, not fatal.

        `statement_timeout_s` is how long the client waits for a statement; with a
        `statement_budget_s`, Postgres itself cancels a statement that runs longer
        (`StatementTimedOut`), before the client would give up on the connection.

        `custom_plans`: plan every statement for its values. asyncpg prepares each
        statement, and after five runs Postgres may switch to a generic plan that ignores
        them; for the API's lists, whose selectivity is all in the values (a period, a
        contract, the CSV export's keyset position), that plan can be 50 times slower (a
        month's export: 34 s instead of 1.3 s on a million usages)."""
        server_settings = {"application_name": "usage-ingest", "jit": "off"}
        if custom_plans:
            server_settings["plan_cache_mode"] = "force_custom_plan"
        if statement_budget_s is not None:
            server_settings["statement_timeout"] = str(math.ceil(statement_budget_s * 1000))
            statement_timeout_s = max(statement_timeout_s, statement_budget_s + 1)
        pool = await asyncpg.create_pool(
            url,
            init=_prepare_connection,
            min_size=0,
            max_size=max_size,
            command_timeout=statement_timeout_s,
            server_settings=server_settings,
        )
        return cls(pool)

    async def close(self) -> None:
        await self._pool.close()

    async def ping(self) -> None:
        async with _translated_errors("ping"):
            await self._pool.fetchval("SELECT 1")

    async def answers(self, timeout_s: float) -> bool:
        """Whether the database answers `SELECT 1` within `timeout_s`: the readiness
        check of the worker, the API and the console."""
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
            # that lands as the ping completes, and a stop would then wait for no reason.
            async with asyncio.timeout(timeout_s):
                await self.ping()
        except (DependencyUnavailable, TimeoutError):
            return False
        return True
