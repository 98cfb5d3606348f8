"""The HTTP API's inventory records: one by id, a filtered and sorted list page, and writes.

The list query is composed here from a whitelist of fields, every value a bound parameter.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Final

from usage_ingest.domain.reference import InventoryIn
from usage_ingest.errors import (
    DuplicateRecord,
    OverlappingProductReference,
    UnknownReferencedRecord,
)
from usage_ingest.store.connection import QUERIES, PooledStore, _translated_errors
from usage_ingest.store.list_sql import and_all, column_conditions, filter_condition, order_by
from usage_ingest.store.reference import LoadCounts, upsert_inventory

if TYPE_CHECKING:
    from usage_ingest.store.connection import Connection

# --- the HTTP API's inventory list: a whitelist, and values as parameters --------


class FilterKind(StrEnum):
    ID = "id"  # exact
    DATE = "date"  # eq, lt, gt, gtn
    TEXT = "text"  # eq, in, like


class FilterOp(StrEnum):
    EQ = "eq"
    LT = "lt"
    GT = "gt"
    GTN = "gtn"  # greater than, or null
    IN = "in"
    LIKE = "like"  # case-insensitive contains


FILTER_OPS: Final[dict[FilterKind, frozenset[FilterOp]]] = {
    FilterKind.ID: frozenset({FilterOp.EQ}),
    FilterKind.DATE: frozenset({FilterOp.EQ, FilterOp.LT, FilterOp.GT, FilterOp.GTN}),
    FilterKind.TEXT: frozenset({FilterOp.EQ, FilterOp.IN, FilterOp.LIKE}),
}

# Filterable fields of usage product inventories: kind, column, and whether the column
# is on the record's product references (then "any of its product references").
_INVENTORY_FILTERS: Final[dict[str, tuple[FilterKind, str, bool]]] = {
    "usage_product_id": (FilterKind.ID, "i.usage_product_id", False),
    "site_id": (FilterKind.ID, "i.site_id", False),
    "start_date": (FilterKind.DATE, "i.start_date", False),
    "end_date": (FilterKind.DATE, "i.end_date", False),
    "service_id": (FilterKind.TEXT, "i.service_id", False),
    "product_reference": (FilterKind.TEXT, "r.product_reference", True),
    "label": (FilterKind.TEXT, "r.label", True),
}
INVENTORY_FILTER_KINDS: Final[dict[str, FilterKind]] = {
    name: kind for name, (kind, _, _) in _INVENTORY_FILTERS.items()
}
_CONDITIONS: Final[dict[FilterOp, str]] = {
    FilterOp.EQ: "{column} = ${n}",
    FilterOp.LT: "{column} < ${n}",
    FilterOp.GT: "{column} > ${n}",
    FilterOp.GTN: "({column} > ${n} OR {column} IS NULL)",
    FilterOp.IN: "{column} = ANY(${n}::text[])",
    FilterOp.LIKE: "strpos(lower({column}), lower(${n}::text)) > 0",
}
_FILTER_CONDITIONS: Final = column_conditions(
    {name: (kind, column) for name, (kind, column, _) in _INVENTORY_FILTERS.items()},
    FILTER_OPS,
    _CONDITIONS,
)
_ON_PRODUCT_REFERENCES = (
    "EXISTS (SELECT 1 FROM usage_product_references r WHERE r.inventory_id = i.id AND {condition})"
)
# Sortable fields, each a column of `list_inventory_ids`.
INVENTORY_SORT_FIELDS: Final[tuple[str, ...]] = (
    "id",
    "site_id",
    "usage_product_id",
    "start_date",
    "end_date",
    "supplier_account_id",
    "bill_by_service_id",
    "service_id",
    "billable",
    "in_flight_order",
    "external_order_reference",
    "external_network_order_reference",
    "pending_end_date",
    "usage_cap_enabled",
    "default_usage_cap",
    "override_usage_cap",
    "apply_surcharges",
)


@dataclass(frozen=True, slots=True)
class InventoryFilter:
    field: str
    op: FilterOp
    value: int | date | str | tuple[str, ...]


@dataclass(frozen=True, slots=True)
class InventoryListQuery:
    limit: int
    offset: int
    sort: tuple[tuple[str, bool], ...] = ()  # (field, descending)
    filters: tuple[InventoryFilter, ...] = ()


def compose_inventory_list(query: InventoryListQuery) -> tuple[str, list[Any]]:
    """The SQL and parameters of one list page.

    Only whitelisted column names and parameter numbers are put into the SQL text;
    every value goes in as a bound parameter. Unknown fields or operators raise
    ValueError (the API refuses them before they get here). The record id always
    ends the order, so pages are stable.
    """
    params: list[Any] = [query.limit, query.offset]
    conditions: list[str] = []
    on_one_reference: list[str] = []  # conditions on one product reference
    for item in query.filters:
        condition = filter_condition(item.field, item.op, item.value, _FILTER_CONDITIONS, params)
        on_references = _INVENTORY_FILTERS[item.field][2]
        (on_one_reference if on_references else conditions).append(condition)
    if on_one_reference:
        # One EXISTS for them all: one pass over each record's references, not one per
        # filter, and every condition holds for the same reference (its number and label).
        conditions.append(_ON_PRODUCT_REFERENCES.format(condition=" AND ".join(on_one_reference)))
    sql = (
        QUERIES["list_inventory_ids"]
        .replace("/*where*/", and_all(conditions, "      "))
        .replace("/*order by*/", order_by(query.sort, INVENTORY_SORT_FIELDS))
    )
    return sql, params


class InventoryStore(PooledStore):
    """Inventory records as the HTTP API reads and writes them, one at a time or a page."""

    async def get_inventory(self, inventory_id: int) -> dict[str, Any] | None:
        """One inventory record in the platform API's JSON form, or None."""
        async with _translated_errors("read inventory record"):
            rows = await self._pool.fetch(QUERIES["fetch_inventories"], [inventory_id])
        return json.loads(rows[0]["record"]) if rows else None

    async def list_inventories(self, query: InventoryListQuery) -> tuple[int, list[dict[str, Any]]]:
        """The number of matching inventory records and one page of them, one snapshot."""
        sql, params = compose_inventory_list(query)
        async with (
            _translated_errors("list inventory records"),
            self._pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            page = await conn.fetchrow(sql, *params)
            assert page is not None
            rows = await conn.fetch(QUERIES["fetch_inventories"], page["ids"])
        by_id = {row["id"]: json.loads(row["record"]) for row in rows}
        return int(page["total"]), [by_id[i] for i in page["ids"]]

    async def create_inventory(self, inventory: InventoryIn) -> dict[str, Any]:
        """Insert a new inventory record (ids assigned here); returns its JSON form.

        Raises `UnknownReferencedRecord` (no such product item), `DuplicateRecord`
        (a record with the same site, product and start date exists) or
        `OverlappingProductReference`; nothing is written then.
        """
        async with (
            _translated_errors("create inventory record"),
            self._pool.acquire() as conn,
            conn.transaction(),
        ):
            await conn.execute(QUERIES["lock_inventory_writes"])
            inventory_id = await _write_inventory(conn, inventory, None)
            return await _inventory_json(conn, inventory_id)

    async def patch_inventory(
        self, inventory_id: int, change: Callable[[dict[str, Any]], Awaitable[InventoryIn]]
    ) -> dict[str, Any] | None:
        """Replace a record by `change(its JSON form)`, atomically; None when it does not
        exist. Whatever `change` raises propagates and nothing is written; so do the
        errors of `create_inventory`."""
        async with (
            _translated_errors("update inventory record"),
            self._pool.acquire() as conn,
            conn.transaction(),
        ):
            await conn.execute(QUERIES["lock_inventory_writes"])
            rows = await conn.fetch(QUERIES["fetch_inventories"], [inventory_id])
            if not rows:
                return None
            changed = await change(json.loads(rows[0]["record"]))
            changed = changed.model_copy(update={"id": inventory_id})
            await _write_inventory(conn, changed, inventory_id)
            return await _inventory_json(conn, inventory_id)


async def _write_inventory(
    conn: Connection, inventory: InventoryIn, existing_id: int | None
) -> int:
    """The HTTP API's write of one inventory record, under `lock_inventory_writes`."""
    if not await conn.fetchval(QUERIES["product_item_exists"], inventory.usage_product_id):
        raise UnknownReferencedRecord(
            f"product item {inventory.usage_product_id} does not exist", field="usageProductId"
        )
    other = await conn.fetchval(
        QUERIES["find_other_inventory_by_natural_key"],
        inventory.site_id,
        inventory.usage_product_id,
        inventory.start_date,
        existing_id,
    )
    if other is not None:
        raise DuplicateRecord(
            f"inventory record {other} already has site {inventory.site_id}, product item "
            f"{inventory.usage_product_id} and start date {inventory.start_date}",
            field="startDate",
        )
    inventory_id = await upsert_inventory(conn, inventory, LoadCounts())
    overlap = await conn.fetchrow(QUERIES["find_overlapping_product_references"], [inventory_id])
    if overlap is not None:
        references = [ref.product_reference for ref in inventory.product_references]
        index = references.index(overlap["product_reference"])
        raise OverlappingProductReference(
            f"product reference {overlap['product_reference']!r} is already on inventory record "
            f"{overlap['other_inventory_id']}, whose active period overlaps this one's: the same "
            "number would be billed twice",
            field=f"productReferences.{index}.productReference",
        )
    return inventory_id


async def _inventory_json(conn: Connection, inventory_id: int) -> dict[str, Any]:
    rows = await conn.fetch(QUERIES["fetch_inventories"], [inventory_id])
    return dict(json.loads(rows[0]["record"]))
