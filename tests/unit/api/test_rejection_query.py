"""`GET /usage-rejections`' query string and the SQL made of it (pure functions, no I/O)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from usage_ingest.api.errors import ApiError
from usage_ingest.api.rejection_query import parse_filter, parse_rejection_query
from usage_ingest.store.rejection_list import (
    RejectionFilter,
    RejectionFilterOp,
    RejectionListQuery,
    compose_rejection_list,
)

HOSTILE = "x'); DROP TABLE usages; --"
MAY_1 = datetime(2026, 5, 1, tzinfo=UTC)
F, Op, Q = RejectionFilter, RejectionFilterOp, RejectionListQuery


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("externalReference", "abc", F("external_reference", Op.EQ, "abc")),
        ("externalReference", "a:b", F("external_reference", Op.EQ, "a:b")),
        ("externalReference", "in:a,b", F("external_reference", Op.IN, ("a", "b"))),
        ("externalReference", "like:a:b", F("external_reference", Op.LIKE, "a:b")),
        ("code", "NO_INVENTORY", F("code", Op.EQ, "NO_INVENTORY")),
        ("code", "in:NO_INVENTORY,UNKNOWN_PRODUCT",
         F("code", Op.IN, ("NO_INVENTORY", "UNKNOWN_PRODUCT"))),
        ("retryable", "true", F("retryable", Op.EQ, True)),
        ("resolved", "false", F("resolved", Op.EQ, False)),
        ("failedAt", "2026-05-01T00:00:00Z", F("failed_at", Op.EQ, MAY_1)),
        ("failedAt", "gte:2026-05-01T02:00:00+02:00",
         F("failed_at", Op.GTE, MAY_1)),
        ("failedAt", "lt:2026-05-01T00:00:00.000Z", F("failed_at", Op.LT, MAY_1)),
    ],
)  # fmt: skip
def test_filters_parse(name: str, text: str, expected: RejectionFilter) -> None:
    assert parse_filter(name, text) == expected


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("externalReference", ""),
        ("externalReference", "in:a,,b"),
        ("code", "NOPE"),
        ("code", "like:NO"),
        ("code", "gte:NO_INVENTORY"),
        ("retryable", "1"),
        ("resolved", "TRUE"),
        ("failedAt", "2026-05-01"),
        ("failedAt", "like:2026-05-01T00:00:00Z"),
        ("failedAt", "gte:2026-05-01T00:00:00+10:60"),
    ],
)
def test_malformed_filters_are_refused(name: str, text: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        parse_filter(name, text)


def test_without_a_sort_the_newest_come_first() -> None:
    query, projection = parse_rejection_query(
        ["page", "pageSize"], page=3, page_size=20, sort=None, fields=None, filters={}
    )
    assert (query.limit, query.offset, query.sort, projection) == (20, 40, (), None)
    sql, _ = compose_rejection_list(query)
    assert "ORDER BY failed_at DESC, id DESC LIMIT $1 OFFSET $2" in sql


def test_every_problem_at_once() -> None:
    with pytest.raises(ApiError) as raised:
        parse_rejection_query(
            ["page", "sort", "sort", "fields", "code", "colour"],
            page=1,
            page_size=10,
            sort="colour",
            fields="id,colour",
            filters={"code": ["NOPE"]},
        )
    assert sorted(str(e.field) for e in raised.value.errors) == [
        "code",
        "colour",
        "fields",
        "sort",
        "sort",
    ]


def test_list_sql_holds_whitelisted_names_and_parameters_only() -> None:
    filters = (
        RejectionFilter("external_reference", RejectionFilterOp.LIKE, HOSTILE),
        RejectionFilter("external_reference", RejectionFilterOp.IN, (HOSTILE, "b")),
        RejectionFilter("code", RejectionFilterOp.EQ, HOSTILE),
        RejectionFilter("resolved", RejectionFilterOp.EQ, True),
        RejectionFilter("failed_at", RejectionFilterOp.GTE, MAY_1),
    )
    sql, params = compose_rejection_list(
        RejectionListQuery(limit=10, offset=20, sort=(("replay_count", True),), filters=filters)
    )
    assert HOSTILE not in sql
    assert params == [10, 20, HOSTILE, [HOSTILE, "b"], HOSTILE, True, MAY_1]
    assert {int(n) for n in re.findall(r"\$(\d+)", sql)} == set(range(1, len(params) + 1))
    assert "ORDER BY replay_count DESC, id ASC" in sql
    assert "j.codes && ARRAY[$5::text]" in sql
    assert "(u.id IS NOT NULL) = $6::boolean" in sql
    assert "j.failed_at >= $7" in sql


@pytest.mark.parametrize(
    "bad",
    [
        Q(1, 0, filters=(F("codes; --", Op.EQ, "x"),)),
        Q(1, 0, filters=(F("code", Op.LIKE, "x"),)),
        Q(1, 0, filters=(F("retryable", Op.IN, ("x",)),)),
        Q(1, 0, sort=(("id; DROP TABLE usages", False),)),
        Q(1, 0, sort=(("errors", False),)),
    ],
)  # fmt: skip
def test_list_sql_refuses_what_is_not_whitelisted(bad: RejectionListQuery) -> None:
    with pytest.raises(ValueError, match="cannot be"):
        compose_rejection_list(bad)
