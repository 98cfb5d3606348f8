"""Bounded work per request (`request_limits`): whatever a client sends, the work a list
query or a JSON Patch asks for stays within the limits. Asserted by counting the work
(documents handed to each patch operation, conditions and parameters of the SQL), never
by timing it."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import jsonpatch
import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.support.api_query import OPERATIONS, RECORD, query
from usage_ingest.api import patch as json_patch
from usage_ingest.api.errors import ApiError
from usage_ingest.api.limits import (
    MAX_FILTERS,
    MAX_PATCHED_DOCUMENT_BYTES,
    MAX_REPEATS_PER_FILTER,
)
from usage_ingest.api.patch import apply_patch
from usage_ingest.api.query import INVENTORY_LIST_FILTERS
from usage_ingest.store.inventories import compose_inventory_list

# --- JSON Patch -----------------------------------------------------------------------

POINTERS = st.sampled_from(
    [
        "",
        "/productReferences",
        "/productReferences/0",
        "/productReferences/-",
        "/productReferences/0/label",
        "/serviceId",
        "/extra",
        "/extra/-",
    ]
)


SMALL_LIMIT = 16 * 1024

# Operations that apply to the record and grow it, the last two by doubling.
GROWING = [
    {"op": "add", "path": "/extra", "value": "x" * 1000},
    {"op": "replace", "path": "/serviceId", "value": "SVC-2"},
    {"op": "copy", "from": "/productReferences/0", "path": "/productReferences/-"},
    *[{"op": "copy", "from": "/productReferences", "path": "/productReferences/-"}] * 2,
    *[{"op": "copy", "from": "", "path": "/extra"}] * 3,
]


@st.composite
def any_operation(draw: st.DrawFn) -> dict[str, Any]:
    op = draw(st.sampled_from(["add", "remove", "replace", "move", "copy", "test"]))
    item: dict[str, Any] = {"op": op, "path": draw(POINTERS)}
    if op in {"move", "copy"}:
        item["from"] = draw(POINTERS)
    if op in {"add", "replace", "test"}:
        item["value"] = draw(st.sampled_from([[], "x" * 1000, {"a": [1, 2]}, None]))
    return item


@st.composite
def operations(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Operations that apply and grow the record (the shape of a document-doubling
    attack), with a few arbitrary ones over pointers into it slipped in anywhere."""
    patch = draw(st.lists(st.sampled_from(GROWING), min_size=8, max_size=40))
    for item in draw(st.lists(any_operation(), max_size=3)):
        patch.insert(draw(st.integers(0, len(patch))), item)
    return patch


def refusal(call: Callable[[], object]) -> ApiError | None:
    """The 400 (or other ApiError) `call` raises, or None."""
    try:
        call()
    except ApiError as exc:
        return exc
    return None


# jsonpatch's own, taken once: Hypothesis runs many examples under one monkeypatch, and
# each must wrap this, not the wrapper of the example before.
REAL_APPLY = jsonpatch.JsonPatch.apply


class CountedPatches:
    """Wraps jsonpatch's apply: how many operations ran, and the size of each document
    handed to one."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sizes: list[int] = []

        def counted(patch: jsonpatch.JsonPatch, obj: Any, in_place: bool = False) -> Any:
            self.sizes.append(len(orjson.dumps(obj)))
            return REAL_APPLY(patch, obj, in_place=in_place)

        monkeypatch.setattr(jsonpatch.JsonPatch, "apply", counted)


def test_a_doubling_copy_is_stopped_at_the_document_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    counted = CountedPatches(monkeypatch)
    bomb = [{"op": "copy", "from": "/productReferences", "path": "/productReferences/-"}] * 40
    with pytest.raises(ApiError) as refused:
        apply_patch(copy.deepcopy(RECORD), OPERATIONS.validate_python(bomb))
    assert refused.value.status_code == 400
    [error] = refused.value.errors
    assert error.code == "PATCH_FAILED"
    assert f"at most {MAX_PATCHED_DOCUMENT_BYTES} are kept" in error.message
    # Each copy doubles the document: it is refused after about log2(limit / record) of
    # them, long before the 40th, and no operation was handed a document over the limit.
    assert len(counted.sizes) < 20
    assert max(counted.sizes) <= MAX_PATCHED_DOCUMENT_BYTES


@settings(
    database=None, max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(patch=operations())
def test_no_patch_hands_an_operation_more_than_the_limit(
    patch: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A smaller limit, so that the generated patches reach it often.
    monkeypatch.setattr(json_patch, "MAX_PATCHED_DOCUMENT_BYTES", SMALL_LIMIT)
    counted = CountedPatches(monkeypatch)
    record = copy.deepcopy(RECORD)
    refused = refusal(lambda: apply_patch(record, OPERATIONS.validate_python(patch)))
    if refused is not None:
        assert refused.status_code == 400
        by_size = "are kept" in refused.errors[0].message
        event("refused: " + ("the size limit" if by_size else "another rule"))
    assert record == RECORD
    assert len(counted.sizes) <= len(patch)
    assert all(size <= SMALL_LIMIT for size in counted.sizes)


# --- list queries -----------------------------------------------------------------------

FILTER_VALUES = {
    "usageProductId": "2",
    "siteId": "1",
    "startDate": "gt:2026-01-01",
    "endDate": "gtn:2026-01-01",
    "productReference": "like:44",
    "serviceId": "in:a,b",
    "label": "like:a",
}


@settings(database=None, max_examples=200)
@given(
    repeats=st.dictionaries(
        st.sampled_from(sorted(INVENTORY_LIST_FILTERS)), st.integers(1, 2 * MAX_REPEATS_PER_FILTER)
    )
)
def test_a_list_query_is_refused_or_its_sql_stays_within_the_limits(
    repeats: dict[str, int],
) -> None:
    names = [name for name, count in repeats.items() for _ in range(count)]
    filters = {name: [FILTER_VALUES[name]] * count for name, count in repeats.items()}
    too_many = len(names) > MAX_FILTERS or any(c > MAX_REPEATS_PER_FILTER for c in repeats.values())
    refused = refusal(lambda: query(["page", "pageSize", *names], filters=filters))
    assert (refused is not None) == too_many
    if refused is not None:
        assert refused.status_code == 400
        assert {e.code for e in refused.errors} == {"INVALID_PARAMETER"}
        return
    parsed, _ = query(["page", "pageSize", *names], filters=filters)
    sql, params = compose_inventory_list(parsed)
    # One parameter per filter, and the product-reference filters share one EXISTS: the
    # statement grows linearly with the query, which the limits bound.
    assert len(params) == 2 + len(names) <= 2 + MAX_FILTERS
    assert sql.count("EXISTS") == (1 if {"productReference", "label"} & set(repeats) else 0)


def test_repeats_past_the_limit_name_the_parameter() -> None:
    names = ["label"] * (MAX_REPEATS_PER_FILTER + 1)
    with pytest.raises(ApiError) as refused:
        query(names, filters={"label": ["like:a"] * len(names)})
    [error] = refused.value.errors
    assert (error.code, error.field) == ("INVALID_PARAMETER", "label")
    assert f"at most {MAX_REPEATS_PER_FILTER}" in error.message


def test_too_many_filters_in_all_are_refused_without_a_field() -> None:
    names = [name for name in sorted(INVENTORY_LIST_FILTERS) for _ in range(3)]
    assert len(names) > MAX_FILTERS
    with pytest.raises(ApiError) as refused:
        query(names, filters={name: [FILTER_VALUES[name]] * 3 for name in INVENTORY_LIST_FILTERS})
    [error] = refused.value.errors
    assert (error.code, error.field) == ("INVALID_PARAMETER", None)
    assert f"at most {MAX_FILTERS}" in error.message
