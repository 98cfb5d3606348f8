"""Product items the HTTP API creates one at a time."""

from __future__ import annotations

import json
from typing import Any

from usage_ingest.domain.reference import ProductItemIn
from usage_ingest.store.connection import QUERIES, PooledStore, _json_or_none, _translated_errors


class ProductItemStore(PooledStore):
    """The HTTP API's writes of product items."""

    async def create_product_item(self, item: ProductItemIn) -> dict[str, Any] | None:
        """Insert an ACTIVE product item; returns its JSON form, or None if the reference
        is taken."""
        async with _translated_errors("create product item"):
            record = await self._pool.fetchval(
                QUERIES["insert_product_item"],
                item.reference,
                item.name,
                item.description,
                item.type,
                item.tax_category,
                item.display_order,
                _json_or_none(item.unit_name),
                _json_or_none(item.custom_fields),
            )
        return None if record is None else dict(json.loads(record))
