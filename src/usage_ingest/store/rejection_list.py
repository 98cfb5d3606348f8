"""The HTTP API's list of refusals (`usage_rejections`): a filtered and sorted page, each
refusal with the usage now stored under its external reference, if any.

The list query is composed here from a whitelist of columns, every value a bound parameter.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Final

import asyncpg

from usage_ingest.store.connection import QUERIES, PooledStore, _translated_errors
from usage_ingest.store.list_sql import and_all, filter_condition, order_by
from usage_ingest.times import format_utc_millis


class RejectionFilterOp(StrEnum):
    EQ = "eq"
    IN = "in"
    LIKE = "like"  # case-insensitive contains
    GTE = "gte"
    GT = "gt"
    LT = "lt"
    LTE = "lte"


_EQ, _IN, _LIKE = RejectionFilterOp.EQ, RejectionFilterOp.IN, RejectionFilterOp.LIKE

# Each filterable field: the condition of each operator it takes, `{n}` its parameter.
# `j` is the refusal, `u` the usage stored under its external reference (or NULLs).
_FILTERS: Final[dict[str, dict[RejectionFilterOp, str]]] = {
    "external_reference": {
        _EQ: "j.external_reference = ${n}",
        _IN: "j.external_reference = ANY(${n}::text[])",
        _LIKE: "strpos(lower(j.external_reference), lower(${n}::text)) > 0",
    },
    # Any of the record's errors: both forms are overlaps, which the GIN index on `codes` serves.
    "code": {
        _EQ: "j.codes && ARRAY[${n}::text]",
        _IN: "j.codes && ${n}::text[]",
    },
    "retryable": {_EQ: "j.retryable = ${n}::boolean"},
    "resolved": {_EQ: "(u.id IS NOT NULL) = ${n}::boolean"},
    "failed_at": {
        _EQ: "j.failed_at = ${n}",
        RejectionFilterOp.GTE: "j.failed_at >= ${n}",
        RejectionFilterOp.GT: "j.failed_at > ${n}",
        RejectionFilterOp.LT: "j.failed_at < ${n}",
        RejectionFilterOp.LTE: "j.failed_at <= ${n}",
    },
}
REJECTION_FILTER_OPS: Final[dict[str, frozenset[RejectionFilterOp]]] = {
    name: frozenset(conditions) for name, conditions in _FILTERS.items()
}

# Sortable fields, each a column of `list_usage_rejection_ids`' `matched`.
REJECTION_SORT_FIELDS: Final[tuple[str, ...]] = (
    "id",
    "external_reference",
    "retryable",
    "failed_at",
    "replay_count",
    "resolved_by",
)
# Newest first: the order of the index on (failed_at DESC, id DESC).
DEFAULT_REJECTION_SORT: Final[tuple[tuple[str, bool], ...]] = (("failed_at", True), ("id", True))


@dataclass(frozen=True, slots=True)
class RejectionFilter:
    field: str
    op: RejectionFilterOp
    value: str | bool | datetime | tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RejectionListQuery:
    limit: int
    offset: int
    sort: tuple[tuple[str, bool], ...] = ()  # (field, descending); () is newest first
    filters: tuple[RejectionFilter, ...] = ()


def compose_rejection_list(query: RejectionListQuery) -> tuple[str, list[Any]]:
    """The SQL and parameters of one page of refusal ids and the number matching.

    Only whitelisted column names and parameter numbers are put into the SQL text;
    every value goes in as a bound parameter. Unknown fields or operators raise
    ValueError (the API refuses them before they get here). Without a sort, newest
    first; with one, the id ends the order (ascending unless named), so pages are stable.
    """
    params: list[Any] = [query.limit, query.offset]
    conditions = [
        filter_condition(item.field, item.op, item.value, _FILTERS, params)
        for item in query.filters
    ]
    sql = (
        QUERIES["list_usage_rejection_ids"]
        .replace("/*where*/", and_all(conditions, "      "))
        .replace(
            "/*order by*/", order_by(query.sort or DEFAULT_REJECTION_SORT, REJECTION_SORT_FIELDS)
        )
    )
    return sql, params


def rejection_json(row: asyncpg.Record) -> dict[str, Any]:
    """One refusal in the API's JSON form (SPEC-API.md), instants with milliseconds."""
    timestamp = row["source_timestamp"]
    return {
        "id": row["id"],
        "externalReference": row["external_reference"],
        "errors": json.loads(row["errors"]),
        "retryable": row["retryable"],
        "source": {
            "topic": row["source_topic"],
            "partition": row["source_partition"],
            "offset": row["source_offset"],
            "timestamp": None if timestamp is None else format_utc_millis(timestamp),
        },
        "failedAt": format_utc_millis(row["failed_at"]),
        "replayCount": row["replay_count"],
        "resolvedBy": row["resolved_by"],
    }


class RejectionListStore(PooledStore):
    """Refusals as the HTTP API lists them."""

    async def list_rejections(self, query: RejectionListQuery) -> tuple[int, list[dict[str, Any]]]:
        """The number of matching refusals and one page of them, in one snapshot."""
        sql, params = compose_rejection_list(query)
        async with (
            _translated_errors("list usage rejections"),
            self._pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            page = await conn.fetchrow(sql, *params)
            assert page is not None
            rows = await conn.fetch(QUERIES["fetch_usage_rejections"], page["ids"])
        by_id = {row["id"]: rejection_json(row) for row in rows}
        return int(page["total"]), [by_id[i] for i in page["ids"]]

    async def get_rejection(self, rejection_id: int) -> dict[str, Any] | None:
        """One refusal by its id, as the list shows it; None when there is none."""
        async with _translated_errors("read usage rejection"):
            rows = await self._pool.fetch(QUERIES["fetch_usage_rejections"], [rejection_id])
        return rejection_json(rows[0]) if rows else None
