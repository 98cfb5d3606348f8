"""Totals over the stored usages (GET /usage-summaries): per group and unit, how many
usages and the exact sum of their quantities, summed by Postgres in `numeric`.

The statement is composed here from whitelists (group keys, filterable fields and their
operators); every value is a bound parameter.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Final

from usage_ingest.store.connection import QUERIES, PooledStore, _translated_errors


class SummaryFilterKind(StrEnum):
    ID = "id"  # exact, in
    TEXT = "text"  # exact, in, like
    BOOLEAN = "boolean"  # exact
    INSTANT = "instant"  # exact, gt, gte, lt, lte


class SummaryFilterOp(StrEnum):
    EQ = "eq"
    GT = "gt"
    GTE = "gte"
    LT = "lt"
    LTE = "lte"
    IN = "in"
    LIKE = "like"  # case-insensitive contains


SUMMARY_FILTER_OPS: Final[dict[SummaryFilterKind, frozenset[SummaryFilterOp]]] = {
    SummaryFilterKind.ID: frozenset({SummaryFilterOp.EQ, SummaryFilterOp.IN}),
    SummaryFilterKind.TEXT: frozenset(
        {SummaryFilterOp.EQ, SummaryFilterOp.IN, SummaryFilterOp.LIKE}
    ),
    SummaryFilterKind.BOOLEAN: frozenset({SummaryFilterOp.EQ}),
    SummaryFilterKind.INSTANT: frozenset(
        {
            SummaryFilterOp.EQ,
            SummaryFilterOp.GT,
            SummaryFilterOp.GTE,
            SummaryFilterOp.LT,
            SummaryFilterOp.LTE,
        }
    ),
}

# Filterable fields (the API's names): kind and column of `usages u`.
_SUMMARY_FILTERS: Final[dict[str, tuple[SummaryFilterKind, str]]] = {
    "contractId": (SummaryFilterKind.ID, "u.contract_id"),
    "debtorId": (SummaryFilterKind.ID, "u.debtor_id"),
    "inventoryId": (SummaryFilterKind.ID, "u.inventory_id"),
    "productIdent": (SummaryFilterKind.TEXT, "u.product_ident"),
    "externalReference": (SummaryFilterKind.TEXT, "u.external_reference"),
    "billable": (SummaryFilterKind.BOOLEAN, "u.billable"),
    "startDate": (SummaryFilterKind.INSTANT, "u.start_date"),
    "receivedAt": (SummaryFilterKind.INSTANT, "u.received_at"),
}
SUMMARY_FILTER_KINDS: Final[dict[str, SummaryFilterKind]] = {
    name: kind for name, (kind, _) in _SUMMARY_FILTERS.items()
}
_ARRAY_TYPES: Final[dict[SummaryFilterKind, str]] = {
    SummaryFilterKind.ID: "bigint[]",
    SummaryFilterKind.TEXT: "text[]",
}
_CONDITIONS: Final[dict[SummaryFilterOp, str]] = {
    SummaryFilterOp.EQ: "{column} = ${n}",
    SummaryFilterOp.GT: "{column} > ${n}",
    SummaryFilterOp.GTE: "{column} >= ${n}",
    SummaryFilterOp.LT: "{column} < ${n}",
    SummaryFilterOp.LTE: "{column} <= ${n}",
    SummaryFilterOp.IN: "{column} = ANY(${n}::{array})",
    SummaryFilterOp.LIKE: "strpos(lower({column}), lower(${n}::text)) > 0",
}

# The group keys (the API's names, also the items' keys): their expressions over the
# usages' columns. `day` and `month` are of startDate in UTC.
SUMMARY_GROUP_KEYS: Final[dict[str, str]] = {
    "contractId": "contract_id",
    "debtorId": "debtor_id",
    "inventoryId": "inventory_id",
    "productIdent": "product_ident",
    "billable": "billable",
    "day": "to_char(start_date AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
    "month": "to_char(start_date AT TIME ZONE 'UTC', 'YYYY-MM')",
}

FilterValue = int | str | bool | datetime | tuple[int, ...] | tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SummaryFilter:
    field: str  # the API's name, a key of SUMMARY_FILTER_KINDS
    op: SummaryFilterOp
    value: FilterValue


@dataclass(frozen=True, slots=True)
class SummaryQuery:
    limit: int
    offset: int
    group_by: tuple[str, ...] = ()  # keys of SUMMARY_GROUP_KEYS, in the order given
    filters: tuple[SummaryFilter, ...] = ()


def compose_usage_summary(query: SummaryQuery) -> tuple[str, list[Any]]:
    """The SQL and parameters of one page of totals.

    Only whitelisted expressions, names and parameter numbers go into the SQL text;
    every value is a bound parameter. An unknown group key, field or operator raises
    ValueError (the API refuses them before they get here). Groups are sorted by their
    keys in the order given, then by unit.
    """
    params: list[Any] = [query.limit, query.offset]
    conditions: list[str] = []
    for item in query.filters:
        if item.field not in _SUMMARY_FILTERS:
            raise ValueError(f"{item.field!r} cannot be filtered on")
        kind, column = _SUMMARY_FILTERS[item.field]
        if item.op not in SUMMARY_FILTER_OPS[kind]:
            raise ValueError(f"{item.field!r} cannot be filtered with {item.op}")
        params.append(list(item.value) if isinstance(item.value, tuple) else item.value)
        conditions.append(
            _CONDITIONS[item.op].format(
                column=column, n=len(params), array=_ARRAY_TYPES.get(kind, "")
            )
        )
    if len(set(query.group_by)) != len(query.group_by):
        raise ValueError("a group key is named twice")
    for key in query.group_by:
        if key not in SUMMARY_GROUP_KEYS:
            raise ValueError(f"{key!r} is not a group key")
    names = [f'"{key}"' for key in query.group_by]
    sql = (
        QUERIES["summarize_usages"]
        .replace("/*where*/", "".join(f"\n      AND {c}" for c in conditions))
        .replace(
            "/*group columns*/",
            "".join(
                f"{SUMMARY_GROUP_KEYS[key]} AS {name}, "
                for key, name in zip(query.group_by, names, strict=True)
            ),
        )
        .replace("/*group by*/", "".join(f"{SUMMARY_GROUP_KEYS[key]}, " for key in query.group_by))
        .replace("/*order by*/", ", ".join([*(f"{name} ASC" for name in names), "unit ASC"]))
    )
    return sql, params


class UsageSummaryStore(PooledStore):
    """Totals over the `usages` table, for the HTTP API."""

    async def summarize_usages(self, query: SummaryQuery) -> tuple[int, list[dict[str, Any]]]:
        """The number of groups matching `query` and one page of them, each
        `{<group keys>, "unit", "usages", "quantity"}` with `quantity` the exact sum as
        text; one statement, so one snapshot."""
        sql, params = compose_usage_summary(query)
        async with _translated_errors("summarize usages"):
            row = await self._pool.fetchrow(sql, *params)
        assert row is not None
        items: list[dict[str, Any]] = json.loads(row["items"])
        return int(row["total"]), items
