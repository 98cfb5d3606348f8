"""GET /usage-summaries' query string (`summary_query`) and the SQL it composes (only
whitelisted text; values as parameters)."""

from datetime import UTC, datetime

import pytest

from usage_ingest.api.errors import ApiError
from usage_ingest.api.summary_query import parse_summary_filter, parse_summary_query
from usage_ingest.store.usage_summaries import (
    SummaryFilter,
    SummaryFilterOp,
    SummaryQuery,
    compose_usage_summary,
)

MAY = ["gte:2026-05-01T00:00:00Z", "lt:2026-06-01T02:00:00+02:00"]


def test_filters_read_their_operators() -> None:
    assert parse_summary_filter("contractId", "in:1,2") == SummaryFilter(
        "contractId", SummaryFilterOp.IN, (1, 2)
    )
    assert parse_summary_filter("productIdent", "like:voice") == SummaryFilter(
        "productIdent", SummaryFilterOp.LIKE, "voice"
    )
    assert parse_summary_filter("billable", "false").value is False
    assert parse_summary_filter("startDate", MAY[1]) == SummaryFilter(
        "startDate", SummaryFilterOp.LT, datetime(2026, 6, 1, tzinfo=UTC)
    )
    for name, text in [("contractId", "0"), ("debtorId", "in:1,x"), ("billable", "1")]:
        with pytest.raises(ValueError, match="is not"):
            parse_summary_filter(name, text)
    with pytest.raises(ValueError, match="%2B"):
        parse_summary_filter("startDate", "gte:2026-05-01T00:00:00 02:00")


def test_the_query_is_read_in_order_and_paged() -> None:
    query = parse_summary_query(
        ["startDate", "startDate", "groupBy"],
        page=3,
        page_size=10,
        group_by="day,contractId",
        filters={"startDate": MAY},
    )
    assert (query.limit, query.offset, query.group_by) == (10, 20, ("day", "contractId"))


def test_a_missing_bound_is_one_error() -> None:
    with pytest.raises(ApiError) as raised:
        parse_summary_query(
            ["startDate"], page=1, page_size=1, group_by=None, filters={"startDate": MAY[:1]}
        )
    assert [(e.code, e.field) for e in raised.value.errors] == [("INVALID_PARAMETER", "startDate")]


def test_values_are_parameters_and_names_a_whitelist() -> None:
    query = SummaryQuery(
        limit=5,
        offset=0,
        group_by=("month",),
        filters=(SummaryFilter("productIdent", SummaryFilterOp.IN, ("a'; DROP TABLE usages",)),),
    )
    sql, params = compose_usage_summary(query)
    assert "DROP" not in sql
    assert "u.product_ident = ANY($3::text[])" in sql
    assert params == [5, 0, ["a'; DROP TABLE usages"]]
    for bad in (
        SummaryQuery(limit=1, offset=0, group_by=('x" ; --',)),
        SummaryQuery(limit=1, offset=0, group_by=("day", "day")),
        SummaryQuery(limit=1, offset=0, filters=(SummaryFilter("raw", SummaryFilterOp.EQ, "x"),)),
        SummaryQuery(
            limit=1, offset=0, filters=(SummaryFilter("billable", SummaryFilterOp.LIKE, "x"),)
        ),
    ):
        with pytest.raises(ValueError, match=r"group key|cannot be"):
            compose_usage_summary(bad)
