"""The list endpoint's query string and the SQL made of it; JSON Patch on a record
(pure functions, no I/O)."""

from __future__ import annotations

import copy
import re
from datetime import date
from typing import Any

import pytest

from tests.support.api_query import OPERATIONS, RECORD, query
from usage_ingest.api.errors import ApiError, ApiErrorItem
from usage_ingest.api.patch import apply_patch
from usage_ingest.api.query import parse_filter, parse_sort
from usage_ingest.store.inventories import (
    FilterOp,
    InventoryFilter,
    InventoryListQuery,
    compose_inventory_list,
)

HOSTILE = "x'); DROP TABLE usages; --"


def test_sort_keys_and_directions() -> None:
    errors: list[ApiErrorItem] = []
    assert parse_sort("startDate:desc,id", errors) == (("start_date", True), ("id", False))
    assert parse_sort("siteId:asc", errors) == (("site_id", False),)
    assert errors == []
    for bad in ("color", "startDate:down", "id,id", "", "productReferences", HOSTILE):
        errors = []
        parse_sort(bad, errors)
        assert [e.field for e in errors] == ["sort"], bad


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("siteId", "42", InventoryFilter("site_id", FilterOp.EQ, 42)),
        ("siteId", str(2**63 - 1), InventoryFilter("site_id", FilterOp.EQ, 2**63 - 1)),
        ("startDate", "2026-01-31", InventoryFilter("start_date", FilterOp.EQ, date(2026, 1, 31))),
        ("endDate", "lt:2026-01-31", InventoryFilter("end_date", FilterOp.LT, date(2026, 1, 31))),
        ("endDate", "gt:2026-01-31", InventoryFilter("end_date", FilterOp.GT, date(2026, 1, 31))),
        ("endDate", "gtn:2026-01-31", InventoryFilter("end_date", FilterOp.GTN, date(2026, 1, 31))),
        ("label", "Main", InventoryFilter("label", FilterOp.EQ, "Main")),
        ("label", "in:a,b", InventoryFilter("label", FilterOp.IN, ("a", "b"))),
        ("label", "like:ai", InventoryFilter("label", FilterOp.LIKE, "ai")),
        ("serviceId", "a:b", InventoryFilter("service_id", FilterOp.EQ, "a:b")),
        ("serviceId", HOSTILE, InventoryFilter("service_id", FilterOp.EQ, HOSTILE)),
    ],
)
def test_filters_parse(name: str, text: str, expected: InventoryFilter) -> None:
    assert parse_filter(name, text) == expected


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("siteId", "1.5"),
        ("siteId", "-7"),  # ids are positive (README, "Ids")
        ("siteId", "0"),
        ("siteId", "in:1,2"),
        ("siteId", "9" * 20),
        ("startDate", "2026-02-30"),
        ("startDate", "ge:2026-01-01"),
        ("startDate", "2026-1-1"),
        ("startDate", "\u0662\u0660\u0662\u0666-\u0660\u0661-\u0660\u0661"),  # not ASCII digits
        ("label", ""),
        ("label", "in:"),
        ("label", "in:a,,b"),
        ("label", "like:"),
        ("label", "a\x00b"),
        ("label", "in:" + ",".join("x" * 1001)),
    ],
)
def test_malformed_filters_are_refused(name: str, text: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        parse_filter(name, text)


def test_query_paging_and_every_problem_at_once() -> None:
    parsed, fields = query(["page", "pageSize"], page=3, page_size=25)
    assert (parsed.limit, parsed.offset, fields) == (25, 50, None)
    with pytest.raises(ApiError) as caught:
        query(
            ["page", "page", "pageSize", "colour", "siteId"],
            sort="size",
            fields="id,size",
            filters={"siteId": ["x"]},
        )
    assert caught.value.status_code == 400
    assert sorted(str(e.field) for e in caught.value.errors) == [
        "colour",
        "fields",
        "page",
        "siteId",
        "sort",
    ]


def test_list_sql_holds_whitelisted_names_and_parameters_only() -> None:
    filters = (
        InventoryFilter("service_id", FilterOp.EQ, HOSTILE),
        InventoryFilter("label", FilterOp.LIKE, HOSTILE),
        InventoryFilter("product_reference", FilterOp.IN, (HOSTILE, "b")),
        InventoryFilter("end_date", FilterOp.GTN, date(2026, 1, 1)),
        InventoryFilter("site_id", FilterOp.EQ, 5),
    )
    sql, params = compose_inventory_list(
        InventoryListQuery(limit=10, offset=20, sort=(("start_date", True),), filters=filters)
    )
    assert HOSTILE not in sql
    assert params == [10, 20, HOSTILE, HOSTILE, [HOSTILE, "b"], date(2026, 1, 1), 5]
    assert {int(n) for n in re.findall(r"\$(\d+)", sql)} == set(range(1, len(params) + 1))
    assert "ORDER BY start_date DESC, id ASC" in sql
    assert "i.end_date > $6 OR i.end_date IS NULL" in sql
    assert "r.product_reference = ANY($5::text[])" in sql


@pytest.mark.parametrize(
    "bad",
    [
        InventoryListQuery(1, 0, filters=(InventoryFilter("site_id; --", FilterOp.EQ, 1),)),
        InventoryListQuery(1, 0, filters=(InventoryFilter("site_id", FilterOp.LIKE, "1"),)),
        InventoryListQuery(1, 0, filters=(InventoryFilter("start_date", FilterOp.IN, ("x",)),)),
        InventoryListQuery(1, 0, sort=(("id; DROP TABLE usages", False),)),
    ],
)
def test_list_sql_refuses_what_is_not_whitelisted(bad: InventoryListQuery) -> None:
    with pytest.raises(ValueError, match="cannot be"):
        compose_inventory_list(bad)


# --- JSON Patch ------------------------------------------------------------------------


def patched(operations: list[dict[str, Any]]) -> Any:
    record = copy.deepcopy(RECORD)
    try:
        return apply_patch(record, OPERATIONS.validate_python(operations))
    finally:
        assert record == RECORD  # never changed, whatever happened


def test_patch_result_keeps_the_id_and_lets_the_store_match_references_by_number() -> None:
    result = patched(
        [
            {"op": "replace", "path": "/billable", "value": False},
            {"op": "add", "path": "/productReferences/-", "value": {"productReference": "442"}},
        ]
    )
    assert (result.id, result.billable) == (7, False)
    assert [(r.id, r.product_reference) for r in result.product_references] == [
        (None, "441"),
        (None, "442"),
    ]


@pytest.mark.parametrize(
    ("operations", "code", "field"),
    [
        ([{"op": "test", "path": "/billable", "value": False}], "PATCH_TEST_FAILED", "0"),
        ([{"op": "remove", "path": "/nothing"}], "PATCH_FAILED", "0"),
        ([{"op": "replace", "path": "/id", "value": 8}], "READ_ONLY_FIELD", "id"),
        (
            [
                {
                    "op": "add",
                    "path": "/productReferences/-",
                    "value": {"id": 71, "productReference": "442"},
                }
            ],
            "READ_ONLY_FIELD",
            "productReferences.1.id",
        ),
        (
            [{"op": "replace", "path": "/startDate", "value": "9999-12-31"}],
            "SCHEMA_VIOLATION",
            "startDate",
        ),
    ],
)
def test_patch_failures(operations: list[dict[str, Any]], code: str, field: str) -> None:
    with pytest.raises(ApiError) as caught:
        patched(operations)
    assert [(e.code, e.field) for e in caught.value.errors] == [(code, field)]


TWO_REFERENCES = {
    **RECORD,
    "productReferences": [
        {**RECORD["productReferences"][0], "id": 70, "productReference": "441"},
        {**RECORD["productReferences"][0], "id": 71, "productReference": "442", "primary": False},
    ],
}


def test_swapping_two_reference_ids_is_refused_as_read_only() -> None:
    record = copy.deepcopy(TWO_REFERENCES)
    swap = [
        {"op": "replace", "path": "/productReferences/0/id", "value": 71},
        {"op": "replace", "path": "/productReferences/1/id", "value": 70},
    ]
    with pytest.raises(ApiError) as caught:
        apply_patch(record, OPERATIONS.validate_python(swap))
    assert [(e.code, e.field) for e in caught.value.errors] == [
        ("READ_ONLY_FIELD", "productReferences.0.id"),
        ("READ_ONLY_FIELD", "productReferences.1.id"),
    ]


def test_a_new_number_on_an_old_id_is_a_new_reference() -> None:
    record = copy.deepcopy(TWO_REFERENCES)
    renumber = [{"op": "replace", "path": "/productReferences/1/productReference", "value": "443"}]
    result = apply_patch(record, OPERATIONS.validate_python(renumber))
    assert [r.product_reference for r in result.product_references] == ["441", "443"]


@pytest.mark.parametrize(
    ("number", "message"),
    [
        ("\u0007\r\n", "U+0007 is a control or format character"),
        ("   ", "must not be blank"),
        ("\u202e0987", "U+202E is a control or format character"),  # shows as "7890"
        ("44\u200b12", "U+200B is a control or format character"),  # zero-width space
        ("4412\u2028", "U+2028 is a control or format character"),
        (" 4412", "must not begin or end with white space"),
    ],
)
def test_a_product_reference_is_a_printable_trimmed_number(number: str, message: str) -> None:
    """The same rule for the API and the reference file (`ProductReferenceIn`)."""
    add = {"op": "add", "path": "/productReferences/-", "value": {"productReference": number}}
    with pytest.raises(ApiError) as caught:
        patched([add])
    [error] = caught.value.errors
    assert (error.code, error.field) == ("SCHEMA_VIOLATION", "productReferences.1.productReference")
    assert message in error.message


@pytest.mark.parametrize("number", ["441234567890", "44 20 7946 0001", "CIRCUIT-Ä1"])
def test_ordinary_product_references_are_taken(number: str) -> None:
    add = {"op": "add", "path": "/productReferences/-", "value": {"productReference": number}}
    assert patched([add]).product_references[1].product_reference == number


@pytest.mark.parametrize(
    ("operation", "message"),
    [
        ({"op": "test", "path": "/billable", "value": False}, "the value is true, not false"),
        ({"op": "test", "path": "/serviceId", "value": 5}, 'the value is "SVC", not 5'),
        # Past 64 bits: valid JSON, which the message still writes as JSON.
        ({"op": "test", "path": "/serviceId", "value": 2**70}, f'"SVC", not {2**70}'),
        ({"op": "test", "path": "/nothing", "value": 1}, "nothing is at '/nothing'"),
        ({"op": "test", "path": "/productReferences/-", "value": []}, "at '/productReferences/-'"),
        ({"op": "move", "from": "/nope", "path": "/a"}, "in the record: '/nope' or '/a'"),
        ({"op": "add", "path": "/productReferences/-", "value": 5}, "must be a JSON object"),
    ],
)
def test_patch_errors_speak_json_not_python(operation: dict[str, Any], message: str) -> None:
    with pytest.raises(ApiError) as caught:
        patched([operation])
    [error] = caught.value.errors
    assert error.message.endswith(message), error.message
    for python in ("<class", "True", "instance of", "dictionary", "{'"):
        assert python not in error.message
