"""The Postgres store: the only module that talks to asyncpg.

Driver errors leave this module as the project's own: `StoreUnavailable`
(retryable: connection lost, timeout, serialization failure, deadlock) or
`StoreRefusedData` (the values of a row cannot be stored; retrying won't help).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

import asyncpg

from usage_ingest.domain.records import USAGE_COLUMNS, StoredUsage, UsageRow
from usage_ingest.domain.reference import ContractIn, InventoryIn, ProductItemIn, ReferenceFile
from usage_ingest.domain.resolution import (
    Contract,
    Inventory,
    ProductItem,
    ReferenceKeys,
    ReferenceSnapshot,
)
from usage_ingest.errors import (
    DuplicateRecord,
    OverlappingProductReference,
    ReferenceDataError,
    StatementTimedOut,
    StoreRefusedData,
    StoreUnavailable,
    UnknownReferencedRecord,
)
from usage_ingest.settings import Settings

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    # A connection as the pool lends it.
    Connection = PoolConnectionProxy[asyncpg.Record]

SQL_DIR = Path(__file__).parent / "sql"
MIGRATION_FILE = re.compile(r"^\d{4}_[a-z0-9_]+\.sql$")
# Serialises concurrent `migrate` runs (an arbitrary constant, the same everywhere).
MIGRATION_LOCK_KEY = 0x75736167

# SQLSTATE classes worth retrying: connection (08), transaction rollback such as
# serialization failure and deadlock (40), insufficient resources (53), operator
# intervention such as statement timeout or shutdown (57), system error (58).
_TRANSIENT_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "57", "58"})

T = TypeVar("T")


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


def migration_files() -> list[Path]:
    return sorted(p for p in SQL_DIR.iterdir() if MIGRATION_FILE.match(p.name))


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
        if item.field not in _INVENTORY_FILTERS:
            raise ValueError(f"{item.field!r} cannot be filtered on")
        kind, column, on_references = _INVENTORY_FILTERS[item.field]
        if item.op not in FILTER_OPS[kind]:
            raise ValueError(f"{item.field!r} cannot be filtered with {item.op}")
        params.append(list(item.value) if isinstance(item.value, tuple) else item.value)
        condition = _CONDITIONS[item.op].format(column=column, n=len(params))
        (on_one_reference if on_references else conditions).append(condition)
    if on_one_reference:
        # One EXISTS for them all: one pass over each record's references, not one per
        # filter, and every condition holds for the same reference (its number and label).
        conditions.append(_ON_PRODUCT_REFERENCES.format(condition=" AND ".join(on_one_reference)))
    order = []
    for name, descending in query.sort:
        if name not in INVENTORY_SORT_FIELDS:
            raise ValueError(f"{name!r} cannot be sorted on")
        order.append(f"{name} {'DESC' if descending else 'ASC'}")
    if "id" not in {name for name, _ in query.sort}:
        order.append("id ASC")
    sql = (
        QUERIES["list_inventory_ids"]
        .replace("/*where*/", "".join(f"\n      AND {c}" for c in conditions))
        .replace("/*order by*/", ", ".join(order))
    )
    return sql, params


async def _prepare_connection(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    """Each new connection gets its staging table for `store_usages` (a session's temporary
    table outlives the pool's reset between uses)."""
    await conn.execute(QUERIES["prepare_usage_batch"])


class Store:
    """Usages and reference data in Postgres."""

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
    ) -> Store:
        """A pool that connects lazily: a database that is down is retried, not fatal.

        `statement_timeout_s` is how long the client waits for a statement; with a
        `statement_budget_s`, Postgres itself cancels a statement that runs longer
        (`StatementTimedOut`), before the client would give up on the connection."""
        server_settings = {"application_name": "usage-ingest", "jit": "off"}
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

    # --- migrations --------------------------------------------------------

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

    # --- the worker's two round trips --------------------------------------

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

    async def store_usages(self, rows: Sequence[UsageRow]) -> dict[str, StoredUsage]:
        """Insert the rows whose external reference is new (§6), in one transaction.

        Returns, per external reference, the row that holds it now: the one just
        inserted, or the one stored before (whose hash tells duplicate from conflict).
        `rows` must not repeat an external reference.
        """
        if not rows:
            return {}
        async with (
            _translated_errors("store usages"),
            self._pool.acquire() as conn,
            conn.transaction(),
        ):
            # Staged by COPY (encoded in C, no array per column), then claimed and
            # written by one INSERT ... ON CONFLICT: never "claim, then write".
            await conn.copy_records_to_table("usage_batch", records=rows, columns=USAGE_COLUMNS)
            inserted = {
                r["external_reference"]: r["id"]
                for r in await conn.fetch(QUERIES["insert_usage_batch"])
            }
            held = [r.external_reference for r in rows if r.external_reference not in inserted]
            before = await conn.fetch(QUERIES["fetch_stored_usages"], held) if held else []
        stored = {
            row.external_reference: StoredUsage(
                inserted[row.external_reference],
                True,
                row.payload_hash,
                row.source_topic,
                row.source_partition,
                row.source_offset,
            )
            for row in rows
            if row.external_reference in inserted
        }
        for record in before:
            stored[record["external_reference"]] = StoredUsage(
                record["id"],
                False,
                record["payload_hash"],
                record["source_topic"],
                record["source_partition"],
                record["source_offset"],
            )
        if len(stored) != len(rows):
            raise StoreUnavailable("a concurrent writer hid a stored usage; the batch is retried")
        return stored

    # --- reference data ----------------------------------------------------

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
                    counts.count(
                        "contracts",
                        await conn.fetchrow(
                            QUERIES["upsert_contract"],
                            contract.id,
                            contract.debtor_id,
                            contract.site_id,
                            contract.start_date,
                            contract.end_date,
                        ),
                    )
            inventory_ids = []
            for index, inventory in enumerate(data.usage_product_inventories):
                async with _located(f"usageProductInventories.{index}"):
                    inventory_id = await upsert_inventory(conn, inventory, counts)
                    inventory_ids.append(inventory_id)
            await _refuse_overlaps(conn, inventory_ids)
        return counts

    # --- the HTTP API --------------------------------------------------------

    async def unapplied_migrations(self) -> list[str]:
        """The `sql/` migrations this database has not applied yet."""
        async with _translated_errors("read applied migrations"), self._pool.acquire() as conn:
            applied: set[str] = set()
            if await conn.fetchval(QUERIES["has_migrations_table"]):
                applied = set(await conn.fetchval(QUERIES["applied_migrations"]))
        return [path.stem for path in migration_files() if path.stem not in applied]

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

    async def put_contract(self, contract: ContractIn) -> dict[str, Any]:
        """Create or replace a contract; returns its JSON form."""
        async with (
            _translated_errors("write contract"),
            self._pool.acquire() as conn,
            conn.transaction(),
        ):
            await conn.fetchrow(
                QUERIES["upsert_contract"],
                contract.id,
                contract.debtor_id,
                contract.site_id,
                contract.start_date,
                contract.end_date,
            )
            record = await conn.fetchval(QUERIES["fetch_contract"], contract.id)
        return dict(json.loads(record))

    async def get_usage(self, external_reference: str) -> dict[str, Any] | None:
        """A stored usage by externalReference (columns by name; JSON parsed, decimals
        exact), or None."""
        async with _translated_errors("read usage"):
            row = await self._pool.fetchrow(QUERIES["fetch_usage"], external_reference)
        if row is None:
            return None
        usage = dict(row)
        for column in ("tax_location", "performance_location", "unit_quantities", "properties"):
            if usage[column] is not None:
                usage[column] = json.loads(usage[column], parse_float=Decimal)
        return usage

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


def _json_or_none(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def _from_columns(
    make: Callable[..., T], row: asyncpg.Record, prefix: str, names: Sequence[str]
) -> Iterator[T]:
    """Objects from parallel array columns (`array_agg` of no rows is NULL). asyncpg
    decodes Postgres' infinite dates as date.max and date.min."""
    columns = [row[prefix + name] or () for name in names]
    return (make(*values) for values in zip(*columns, strict=True))


async def open_store(settings: Settings, *, statement_budget_s: float | None = None) -> Store:
    """The store of `settings`: its database, pool size and statement timeout."""
    return await Store.open(
        settings.require_database_url(),
        max_size=settings.db_pool_max_size,
        statement_timeout_s=settings.db_statement_timeout_s,
        statement_budget_s=statement_budget_s,
    )


@asynccontextmanager
async def store_session(
    settings: Settings, *, statement_budget_s: float | None = None
) -> AsyncIterator[Store]:
    """The store for the length of one command: closed however the block ends."""
    store = await open_store(settings, statement_budget_s=statement_budget_s)
    try:
        yield store
    finally:
        await store.close()
