"""Reference data: the worker's read of what a batch needs (§4), and the load of a whole
reference file (`reference load`): upserts of operating sites, product items, contracts and
inventory records with their product references.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import asyncpg

from usage_ingest.domain.reference import ContractIn, InventoryIn, ProductItemIn, ReferenceFile
from usage_ingest.domain.resolution import (
    Contract,
    Inventory,
    ProductItem,
    ReferenceKeys,
    ReferenceSnapshot,
)
from usage_ingest.errors import ReferenceDataError
from usage_ingest.store.connection import (
    QUERIES,
    PooledStore,
    _is_transient,
    _json_or_none,
    _translated_errors,
)

if TYPE_CHECKING:
    from usage_ingest.store.connection import Connection

T = TypeVar("T")


@dataclass(slots=True)
class LoadCounts:
    """What `reference load` did, per kind: inserted, updated (unchanged is the rest)."""

    inserted: dict[str, int] = field(default_factory=dict)
    updated: dict[str, int] = field(default_factory=dict)

    def count(self, kind: str, row: asyncpg.Record | None) -> None:
        if row is None:
            return
        bucket = self.inserted if row["inserted"] else self.updated
        bucket[kind] = bucket.get(kind, 0) + 1


class ReferenceStore(PooledStore):
    """Reference data as a whole: read for a batch, loaded from a file."""

    async def fetch_reference(self, keys: ReferenceKeys) -> ReferenceSnapshot:
        """The reference data a batch needs (§4), in one round trip."""
        by_contract, by_debtor = sorted(keys.contract_products), sorted(keys.debtor_products)
        async with _translated_errors("fetch reference data"):
            row = await self._pool.fetchrow(
                QUERIES["fetch_reference"],
                [contract for contract, _ in by_contract],
                [product for _, product in by_contract],
                [debtor for debtor, _ in by_debtor],
                [product for _, product in by_debtor],
                list(keys.operating_sites),
                keys.first_day,
                keys.last_day,
            )
        assert row is not None
        return ReferenceSnapshot.build(
            operating_sites=row["operating_sites"],
            products=_from_columns(
                ProductItem, row, "product_", ("ids", "references", "types", "statuses")
            ),
            contracts=_from_columns(
                Contract, row, "contract_", ("ids", "debtors", "sites", "starts", "ends")
            ),
            inventories=_from_columns(
                Inventory,
                row,
                "inventory_",
                ("ids", "sites", "products", "starts", "ends", "billable"),
            ),
        )

    async def load_reference(self, data: ReferenceFile) -> LoadCounts:
        """Upsert a whole reference file in one transaction: all of it or nothing."""
        counts = LoadCounts()
        async with (
            _translated_errors("load reference data"),
            self._pool.acquire() as conn,
            conn.transaction(),
        ):
            await conn.execute(QUERIES["lock_inventory_writes"])
            await conn.fetchrow(QUERIES["reserve_explicit_ids"], *_largest_explicit_ids(data))
            sites = await conn.fetch(QUERIES["upsert_operating_sites"], data.operating_sites)
            if sites:
                counts.inserted["operatingSites"] = len(sites)
            for index, item in enumerate(data.product_items):
                async with _located(f"productItems.{index}"):
                    counts.count("productItems", await _upsert_product_item(conn, item))
            for index, contract in enumerate(data.contracts):
                async with _located(f"contracts.{index}"):
                    counts.count("contracts", await upsert_contract(conn, contract))
            inventory_ids = []
            for index, inventory in enumerate(data.usage_product_inventories):
                async with _located(f"usageProductInventories.{index}"):
                    inventory_id = await upsert_inventory(conn, inventory, counts)
                    inventory_ids.append(inventory_id)
            await _refuse_overlaps(conn, inventory_ids)
        return counts


async def upsert_contract(conn: Connection, contract: ContractIn) -> asyncpg.Record | None:
    """Insert or replace one contract (the reference load and `PUT /contracts/{id}`)."""
    return await conn.fetchrow(
        QUERIES["upsert_contract"],
        contract.id,
        contract.debtor_id,
        contract.site_id,
        contract.start_date,
        contract.end_date,
    )


async def _upsert_product_item(conn: Connection, item: ProductItemIn) -> asyncpg.Record | None:
    values = (
        item.name,
        item.description,
        item.type,
        item.status,
        item.tax_category,
        item.display_order,
        _json_or_none(item.unit_name),
        _json_or_none(item.custom_fields),
    )
    if item.id is not None:
        return await conn.fetchrow(
            QUERIES["upsert_product_item_by_id"], item.id, item.reference, *values
        )
    return await conn.fetchrow(QUERIES["upsert_product_item_by_reference"], item.reference, *values)


async def upsert_inventory(conn: Connection, inventory: InventoryIn, counts: LoadCounts) -> int:
    """Insert or update one inventory record and its product references; returns its id."""
    inventory_id = inventory.id
    if inventory_id is None:
        inventory_id = await conn.fetchval(
            QUERIES["find_inventory_by_natural_key"],
            inventory.site_id,
            inventory.usage_product_id,
            inventory.start_date,
        )
    row = await conn.fetchrow(
        QUERIES["upsert_inventory"],
        inventory_id,
        inventory.site_id,
        inventory.usage_product_id,
        inventory.start_date,
        inventory.end_date,
        inventory.supplier_account_id,
        inventory.bill_by_service_id,
        inventory.service_id,
        inventory.billable,
        inventory.in_flight_order,
        inventory.external_order_reference,
        inventory.external_network_order_reference,
        inventory.pending_end_date,
        inventory.usage_cap_enabled,
        inventory.default_usage_cap,
        inventory.override_usage_cap,
        inventory.apply_surcharges,
    )
    counts.count("usageProductInventories", row)
    if row is not None:
        inventory_id = row["id"]
    assert inventory_id is not None
    references = [r.product_reference for r in inventory.product_references]
    removed = await conn.fetch(QUERIES["delete_other_product_references"], inventory_id, references)
    if removed:
        counts.updated["productReferences"] = counts.updated.get("productReferences", 0) + len(
            removed
        )
    for position, ref in enumerate(inventory.product_references):
        counts.count(
            "productReferences",
            await conn.fetchrow(
                QUERIES["upsert_product_reference"],
                ref.id,
                inventory_id,
                position,
                ref.product_reference,
                ref.primary,
                ref.label,
                ref.start_date,
                ref.end_date,
                ref.user_id,
                ref.user_email,
                ref.cost_centre_code,
                ref.department_code,
                ref.notes,
            ),
        )
    return int(inventory_id)


async def _refuse_overlaps(conn: Connection, inventory_ids: list[int]) -> None:
    overlap = await conn.fetchrow(QUERIES["find_overlapping_product_references"], inventory_ids)
    if overlap is not None:
        raise ReferenceDataError(
            f"product reference {overlap['product_reference']!r} is on inventory records "
            f"{overlap['inventory_id']} and {overlap['other_inventory_id']}, whose active periods "
            "overlap: the same number would be billed twice"
        )


@asynccontextmanager
async def _located(path: str) -> AsyncIterator[None]:
    """Name the file entry a database refusal came from."""
    try:
        yield
    except asyncpg.PostgresError as exc:
        if _is_transient(exc):
            raise
        raise ReferenceDataError(f"{path}: {_plain(exc)}") from exc


def _plain(exc: asyncpg.PostgresError) -> str:
    """The server's message and detail on one line."""
    message = getattr(exc, "message", None) or str(exc).splitlines()[0]
    detail = getattr(exc, "detail", None)
    return message + (f" ({detail})" if detail else "")


def _largest_explicit_ids(data: ReferenceFile) -> tuple[int, int, int]:
    def largest(ids: Iterable[int | None]) -> int:
        return max((i for i in ids if i is not None), default=0)

    inventories = data.usage_product_inventories
    return (
        largest(item.id for item in data.product_items),
        largest(inventory.id for inventory in inventories),
        largest(ref.id for inventory in inventories for ref in inventory.product_references),
    )


def _from_columns(
    make: Callable[..., T], row: asyncpg.Record, prefix: str, names: Sequence[str]
) -> Iterator[T]:
    """Objects from parallel array columns (`array_agg` of no rows is NULL). asyncpg
    decodes Postgres' infinite dates as date.max and date.min."""
    columns = [row[prefix + name] or () for name in names]
    return (make(*values) for values in zip(*columns, strict=True))
