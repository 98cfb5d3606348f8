"""The reads over stored usages, without a database: the filters as the API parses them,
the SQL the store composes from them (values never in its text), the Accept header's
choice, and the CSV cells a spreadsheet would run as formulas."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from usage_ingest.api.csv_export import _cell, wants_csv
from usage_ingest.api.errors import ApiError, ApiErrorItem
from usage_ingest.api.usage_query import parse_usage_filters, parse_usage_list
from usage_ingest.store.usage_list import (
    UsageFilter,
    UsageFilterOp,
    UsageListQuery,
    compose_usage_export,
    compose_usage_page,
)


def test_filters_are_parsed_into_the_store_side_selection() -> None:
    errors: list[ApiErrorItem] = []
    selection = parse_usage_filters(
        {
            "contractId": ["in:1,2", "2"],
            "productIdent": ["like:voice"],
            "billable": ["false"],
            "startDate": ["gte:2026-05-01T02:00:00+02:00"],
        },
        errors,
    )
    assert errors == []
    assert selection.filters == (
        UsageFilter("contract_id", UsageFilterOp.IN, (1, 2)),
        UsageFilter("contract_id", UsageFilterOp.EQ, 2),
        UsageFilter("product_ident", UsageFilterOp.LIKE, "voice"),
        UsageFilter("billable", UsageFilterOp.EQ, False),
        UsageFilter("start_date", UsageFilterOp.GTE, datetime(2026, 5, 1, tzinfo=UTC)),
    )


def test_values_go_in_as_parameters_never_into_the_sql() -> None:
    hostile = "x'); DROP TABLE usages; --"
    errors: list[ApiErrorItem] = []
    selection = parse_usage_filters({"externalReference": [hostile, f"like:{hostile}"]}, errors)
    query = UsageListQuery(selection, sort=(("description", True), ("start_date", False)), limit=5)
    page, page_params, count, count_params = compose_usage_page(query)
    export, export_params = compose_usage_export(query, (False, "d", datetime.now(UTC), 7))
    for sql in (page, count, export):
        assert hostile not in sql
    assert page_params == [5, 0, hostile, hostile]
    assert count_params == [hostile, hostile]
    assert hostile in export_params


def test_keyset_position_is_one_row_comparison_when_every_key_runs_one_way() -> None:
    query = UsageListQuery(parse_usage_filters({}, []), sort=(("start_date", False),), limit=9)
    sql, params = compose_usage_export(query, (datetime.now(UTC), 3))
    assert "(start_date, id) > ($3::timestamptz, $4::bigint)" in sql
    assert len(params) == 4
    mixed = UsageListQuery(query.selection, sort=(("billable", True),), limit=9)
    sql, _ = compose_usage_export(mixed, (True, 3))
    assert "(billable < $3::boolean OR (billable = $3::boolean AND id > $4::bigint))" in sql


def test_json_needs_a_page_and_csv_does_not() -> None:
    def parse(csv: bool, page: int | None, page_size: int | None) -> UsageListQuery:
        return parse_usage_list(
            [], csv=csv, page=page, page_size=page_size, sort=None, fields=None, filters={}
        )[0]

    assert parse(csv=True, page=None, page_size=None).limit is None
    assert (parse(csv=True, page=3, page_size=10).limit, parse(True, 3, 10).offset) == (10, 20)
    with pytest.raises(ApiError) as refused:
        parse(csv=False, page=None, page_size=None)
    assert [e.field for e in refused.value.errors] == ["page", "pageSize"]


@pytest.mark.parametrize(
    ("accept", "csv"),
    [
        (None, False),
        ("", False),
        ("text/csv", True),
        ("TEXT/CSV; charset=utf-8", True),
        ("application/json, text/csv", False),
        ("text/csv, application/json;q=0.9", True),
        ("text/csv;q=0", False),
        ("text/csv;q=nonsense", False),
        ("*/*", False),
    ],
)
def test_accept_header(accept: str | None, csv: bool) -> None:
    assert wants_csv(accept) is csv


@pytest.mark.parametrize(
    ("text", "cell"),
    [
        ("call-1", "call-1"),
        ("-1", "'-1"),
        ("=1+1", "'=1+1"),
        ("+1", "'+1"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tx", "'\tx"),
        ("a=b", "a=b"),
        (None, ""),
    ],
)
def test_formula_like_text_gets_a_quote_before_it(text: str | None, cell: str) -> None:
    assert _cell(text) == cell
