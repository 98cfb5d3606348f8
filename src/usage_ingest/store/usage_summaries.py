"""Totals over the stored usages (GET /usage-summaries): per group and unit, how many
usages and the exact sum of their quantities, summed by Postgres in `numeric`.

The statement is composed here from whitelists (group keys, and the filters of the
usages' list with their conditions, `usage_list`); every value is a bound parameter.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from usage_ingest.store.connection import QUERIES, PooledStore, _translated_errors
from usage_ingest.store.list_sql import and_all, filter_condition
from usage_ingest.store.usage_list import (
    USAGE_CONDITIONS,
    USAGE_FILTER_KINDS,
    UsageFilterKind,
    UsageFilterOp,
)


def _camel(name: str) -> str:
    """`contract_id` → `contractId`: the API's name of a field of `usages`."""
    first, *rest = name.split("_")
    return first + "".join(word.capitalize() for word in rest)


# The filters are those of the usages' list (`usage_list`), under the API's names.
SummaryFilterKind = UsageFilterKind
SummaryFilterOp = UsageFilterOp
SUMMARY_FILTER_KINDS: Final[dict[str, UsageFilterKind]] = {
    _camel(name): kind for name, kind in USAGE_FILTER_KINDS.items()
}
_SUMMARY_CONDITIONS: Final = {
    _camel(name): conditions for name, conditions in USAGE_CONDITIONS.items()
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
    conditions = [
        filter_condition(item.field, item.op, item.value, _SUMMARY_CONDITIONS, params)
        for item in query.filters
    ]
    if len(set(query.group_by)) != len(query.group_by):
        raise ValueError("a group key is named twice")
    for key in query.group_by:
        if key not in SUMMARY_GROUP_KEYS:
            raise ValueError(f"{key!r} is not a group key")
    names = [f'"{key}"' for key in query.group_by]
    sql = (
        QUERIES["summarize_usages"]
        .replace("/*where*/", and_all(conditions, "      "))
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
