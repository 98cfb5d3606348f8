"""The read side's usages: a filtered, sorted page of stored usages, and the CSV export's
chunks (keyset pagination, one short statement per chunk).

Filters (`UsageFilters`) are shared with the other reads over `usages` (the totals):
`usage_conditions` turns them into SQL conditions. Only whitelisted column names and
parameter numbers are put into the SQL text; every value is a bound parameter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Final

from usage_ingest.store.connection import QUERIES, PooledStore, _translated_errors
from usage_ingest.store.list_sql import and_all, column_conditions, filter_condition
from usage_ingest.store.usages import decoded_usage


class UsageFilterKind(StrEnum):
    ID = "id"  # eq, in
    TEXT = "text"  # eq, in, like
    BOOLEAN = "boolean"  # eq
    INSTANT = "instant"  # eq, gt, gte, lt, lte


class UsageFilterOp(StrEnum):
    EQ = "eq"
    IN = "in"
    LIKE = "like"  # case-insensitive contains
    GT = "gt"
    GTE = "gte"
    LT = "lt"
    LTE = "lte"


USAGE_FILTER_OPS: Final[dict[UsageFilterKind, frozenset[UsageFilterOp]]] = {
    UsageFilterKind.ID: frozenset({UsageFilterOp.EQ, UsageFilterOp.IN}),
    UsageFilterKind.TEXT: frozenset({UsageFilterOp.EQ, UsageFilterOp.IN, UsageFilterOp.LIKE}),
    UsageFilterKind.BOOLEAN: frozenset({UsageFilterOp.EQ}),
    UsageFilterKind.INSTANT: frozenset(
        {
            UsageFilterOp.EQ,
            UsageFilterOp.GT,
            UsageFilterOp.GTE,
            UsageFilterOp.LT,
            UsageFilterOp.LTE,
        }
    ),
}

# Filterable fields of `usages` (the store's snake_case names): kind and column.
_USAGE_FILTERS: Final[dict[str, tuple[UsageFilterKind, str]]] = {
    "contract_id": (UsageFilterKind.ID, "u.contract_id"),
    "debtor_id": (UsageFilterKind.ID, "u.debtor_id"),
    "inventory_id": (UsageFilterKind.ID, "u.inventory_id"),
    "product_ident": (UsageFilterKind.TEXT, "u.product_ident"),
    "external_reference": (UsageFilterKind.TEXT, "u.external_reference"),
    "billable": (UsageFilterKind.BOOLEAN, "u.billable"),
    "start_date": (UsageFilterKind.INSTANT, "u.start_date"),
    "received_at": (UsageFilterKind.INSTANT, "u.received_at"),
}
USAGE_FILTER_KINDS: Final[dict[str, UsageFilterKind]] = {
    name: kind for name, (kind, _) in _USAGE_FILTERS.items()
}
_ARRAY_TYPES: Final[dict[UsageFilterKind, str]] = {
    UsageFilterKind.ID: "bigint[]",
    UsageFilterKind.TEXT: "text[]",
}
_CONDITIONS: Final[dict[UsageFilterOp, str]] = {
    UsageFilterOp.EQ: "{column} = ${n}",
    UsageFilterOp.IN: "{column} = ANY(${n}::{array})",
    UsageFilterOp.LIKE: "strpos(lower({column}), lower(${n}::text)) > 0",
    UsageFilterOp.GT: "{column} > ${n}",
    UsageFilterOp.GTE: "{column} >= ${n}",
    UsageFilterOp.LT: "{column} < ${n}",
    UsageFilterOp.LTE: "{column} <= ${n}",
}
# Each filterable field's condition, by operator (`{n}` its parameter's number).
USAGE_CONDITIONS: Final = column_conditions(
    _USAGE_FILTERS, USAGE_FILTER_OPS, _CONDITIONS, _ARRAY_TYPES
)

# Sortable fields (the scalar fields of a usage): column, Postgres type, nullable.
_USAGE_SORT_COLUMNS: Final[dict[str, tuple[str, str, bool]]] = {
    "id": ("id", "bigint", False),
    "external_reference": ("external_reference", "text", False),
    "contract_id": ("contract_id", "bigint", False),
    "debtor_id": ("debtor_id", "bigint", False),
    "inventory_id": ("inventory_id", "bigint", False),
    "product_item_id": ("product_item_id", "bigint", False),
    "product_ident": ("product_ident", "text", False),
    "description": ("description", "text", True),
    "start_date": ("start_date", "timestamptz", False),
    "end_date": ("end_date", "timestamptz", False),
    "operating_site": ("operating_site", "text", True),
    "service_country": ("service_country", "text", True),
    "billable": ("billable", "boolean", False),
    "payload_hash": ("payload_hash", "text", False),
    "received_at": ("received_at", "timestamptz", False),
}
USAGE_SORT_FIELDS: Final[tuple[str, ...]] = tuple(_USAGE_SORT_COLUMNS)

EXPORT_CHUNK_USAGES: Final = 2000


@dataclass(frozen=True, slots=True)
class UsageFilter:
    field: str  # a key of USAGE_FILTER_KINDS
    op: UsageFilterOp
    value: int | str | bool | datetime | tuple[int, ...] | tuple[str, ...]


@dataclass(frozen=True, slots=True)
class UsageFilters:
    """A selection of stored usages: every filter holds (repeated ones are AND-ed)."""

    filters: tuple[UsageFilter, ...] = ()


@dataclass(frozen=True, slots=True)
class UsageListQuery:
    selection: UsageFilters
    sort: tuple[tuple[str, bool], ...] = ()  # (field, descending); the id breaks ties
    limit: int | None = None  # None: every match (the export only)
    offset: int = 0


def usage_conditions(selection: UsageFilters, params: list[Any]) -> list[str]:
    """The SQL conditions on `usages u` of `selection`; their values are appended to
    `params` and named by their position there. Unknown fields or operators raise
    ValueError (the API refuses them before they get here)."""
    return [
        filter_condition(item.field, item.op, item.value, USAGE_CONDITIONS, params)
        for item in selection.filters
    ]


@dataclass(frozen=True, slots=True)
class _SortKey:
    expression: str  # on `usages`, from whitelisted names only
    type: str  # its Postgres type, to bind a position's value
    descending: bool


def _sort_keys(sort: Sequence[tuple[str, bool]]) -> list[_SortKey]:
    """The order as non-null key expressions, the id last. A nullable column sorts as
    Postgres sorts it (nulls last ascending, first descending) through two keys, whether
    it is null and its value, so that a position in the order is a plain comparison."""
    keys = []
    for name, descending in sort:
        if name not in _USAGE_SORT_COLUMNS:
            raise ValueError(f"{name!r} cannot be sorted on")
        column, type_, nullable = _USAGE_SORT_COLUMNS[name]
        if nullable:
            keys.append(_SortKey(f"({column} IS NULL)", "boolean", descending))
            keys.append(_SortKey(f"coalesce({column}, '')", type_, descending))
        else:
            keys.append(_SortKey(column, type_, descending))
    if "id" not in {name for name, _ in sort}:
        keys.append(_SortKey("id", "bigint", descending=False))
    return keys


def _order_by(keys: Sequence[_SortKey], expressions: Sequence[str]) -> str:
    return ", ".join(
        f"{e} {'DESC' if k.descending else 'ASC'}" for k, e in zip(keys, expressions, strict=True)
    )


def _after(keys: Sequence[_SortKey], first: int) -> str:
    """The condition "after the position $first, $first+1, ..." in the order of `keys`.

    One row comparison when every key runs the same way (an index on the keys serves
    it); otherwise, key by key: greater on this one, or equal and after on the rest."""
    placeholders = [f"${first + i}::{k.type}" for i, k in enumerate(keys)]
    if len({k.descending for k in keys}) == 1:
        op = "<" if keys[0].descending else ">"
        columns = ", ".join(k.expression for k in keys)
        return f"({columns}) {op} ({', '.join(placeholders)})"
    condition = ""
    for key, placeholder in reversed(list(zip(keys, placeholders, strict=True))):
        op = "<" if key.descending else ">"
        beyond = f"{key.expression} {op} {placeholder}"
        condition = (
            f"({beyond} OR ({key.expression} = {placeholder} AND {condition}))"
            if condition
            else beyond
        )
    return condition


def compose_usage_page(query: UsageListQuery) -> tuple[str, list[Any], str, list[Any]]:
    """The SQL and parameters of one list page ($1 limit, $2 offset), and of the count
    of every match."""
    params: list[Any] = [query.limit, query.offset]
    where = and_all(usage_conditions(query.selection, params), "  ")
    keys = _sort_keys(query.sort)
    page = (
        QUERIES["list_usages"]
        .replace("/*where*/", where)
        .replace("/*order by*/", _order_by(keys, [k.expression for k in keys]))
    )
    count_params: list[Any] = []
    count_where = and_all(usage_conditions(query.selection, count_params), "  ")
    count = QUERIES["count_usages"].replace("/*where*/", count_where)
    return page, params, count, count_params


def compose_usage_export(
    query: UsageListQuery, position: Sequence[Any] | None
) -> tuple[str, list[Any]]:
    """The SQL and parameters of one export chunk: `query.limit` usages (the chunk's
    size) from `query.offset`, after `position` (the sort keys of the last usage of the
    chunk before; None for the first). Each row carries its usage's keys as k0, k1, ..."""
    params: list[Any] = [query.limit, query.offset]
    conditions = usage_conditions(query.selection, params)
    keys = _sort_keys(query.sort)
    if position is not None:
        conditions.append(_after(keys, len(params) + 1))
        params.extend(position)
    names = [f"k{i}" for i in range(len(keys))]
    selected = "".join(f", {k.expression} AS {n}" for k, n in zip(keys, names, strict=True))
    sql = (
        QUERIES["export_usages"]
        .replace("/*keys*/", selected)
        .replace("/*where*/", and_all(conditions, "      "))
        .replace("/*order by*/", _order_by(keys, [k.expression for k in keys]))
        .replace("/*outer order by*/", _order_by(keys, names))
    )
    return sql, params


@dataclass(frozen=True, slots=True)
class ExportChunk:
    """Up to one chunk's usages, as CSV lines' values (a usage per quantity), and the
    position after its last usage; `done` when no more follow."""

    lines: list[dict[str, Any]]
    position: tuple[Any, ...] | None
    usages: int
    done: bool


class UsageListStore(PooledStore):
    """Stored usages as the read side lists and exports them."""

    async def list_usages(self, query: UsageListQuery) -> tuple[int, list[dict[str, Any]]]:
        """The number of matching usages and one page of them (decoded as `get_usage`
        decodes one), in one snapshot."""
        page_sql, page_params, count_sql, count_params = compose_usage_page(query)
        async with (
            _translated_errors("list usages"),
            self._pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            total = await conn.fetchval(count_sql, *count_params)
            rows = await conn.fetch(page_sql, *page_params)
        return int(total), [decoded_usage(row) for row in rows]

    async def count_usages(self, selection: UsageFilters) -> int:
        """The number of stored usages matching `selection`."""
        params: list[Any] = []
        where = and_all(usage_conditions(selection, params), "  ")
        sql = QUERIES["count_usages"].replace("/*where*/", where)
        async with _translated_errors("count usages"):
            return int(await self._pool.fetchval(sql, *params))

    async def export_usages(
        self, query: UsageListQuery, position: Sequence[Any] | None
    ) -> ExportChunk:
        """One export chunk of `query.limit` usages after `position`: one statement, its
        connection back to the pool before the caller writes the chunk out."""
        assert query.limit is not None
        sql, params = compose_usage_export(query, position)
        async with _translated_errors("export usages"):
            rows = await self._pool.fetch(sql, *params)
        keys = [name for name in (rows[0].keys() if rows else ()) if _is_key(name)]
        usages = len({row["id"] for row in rows})
        last = tuple(rows[-1][name] for name in keys) if rows else None
        return ExportChunk([dict(row) for row in rows], last, usages, done=usages < query.limit)


def _is_key(name: str) -> bool:
    return name[0] == "k" and name[1:].isdigit()
