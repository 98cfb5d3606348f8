"""Contracts the HTTP API creates or replaces one at a time."""

from __future__ import annotations

import json
from typing import Any

from usage_ingest.domain.reference import ContractIn
from usage_ingest.store.connection import QUERIES, PooledStore, _translated_errors
from usage_ingest.store.reference import upsert_contract


class ContractStore(PooledStore):
    """The HTTP API's writes of contracts."""

    async def put_contract(self, contract: ContractIn) -> dict[str, Any]:
        """Create or replace a contract; returns its JSON form."""
        async with (
            _translated_errors("write contract"),
            self._pool.acquire() as conn,
            conn.transaction(),
        ):
            await upsert_contract(conn, contract)
            record = await conn.fetchval(QUERIES["fetch_contract"], contract.id)
        return dict(json.loads(record))
