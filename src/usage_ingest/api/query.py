"""The list endpoint's query string: paging, sort, fields and filters, read into the
store's `InventoryListQuery` with every problem reported at once (400)."""

import re
from collections.abc import Mapping, Sequence
from datetime import date

from pydantic.alias_generators import to_camel

from usage_ingest.api import list_query
from usage_ingest.api.errors import ApiError, ApiErrorItem
from usage_ingest.api.list_query import (
    LIST_PARAMETERS,
    check_parameter_names,
    filter_text,
    in_values,
    parse_filters,
    parse_id,
)
from usage_ingest.api.schemas import INVENTORY_FIELDS
from usage_ingest.store.inventories import (
    INVENTORY_FILTER_KINDS,
    INVENTORY_SORT_FIELDS,
    FilterKind,
    FilterOp,
    InventoryFilter,
    InventoryListQuery,
)

_DATE_FILTER = re.compile(r"^(?:(lt|gt|gtn):)?([0-9]{4}-[0-9]{2}-[0-9]{2})$")
# The query string's names (the platform's camelCase) of the store's fields.
INVENTORY_LIST_FILTERS: dict[str, str] = {to_camel(name): name for name in INVENTORY_FILTER_KINDS}
_SORTABLE: dict[str, str] = {to_camel(name): name for name in INVENTORY_SORT_FIELDS}


def parse_sort(text: str | None, errors: list[ApiErrorItem]) -> tuple[tuple[str, bool], ...]:
    """`startDate:desc,id` → (("start_date", True), ("id", False))."""
    return list_query.parse_sort(text, _SORTABLE, errors)


def parse_fields(text: str | None, errors: list[ApiErrorItem]) -> tuple[str, ...] | None:
    """`id,siteId` → the fields to return; None means all of them."""
    return list_query.parse_fields(text, INVENTORY_FIELDS, errors)


def parse_filter(name: str, text: str) -> InventoryFilter:
    """One filter parameter (`startDate=gtn:2026-01-01`); ValueError says what is wrong."""
    name = INVENTORY_LIST_FILTERS[name]
    kind = INVENTORY_FILTER_KINDS[name]
    if kind is FilterKind.ID:
        return InventoryFilter(name, FilterOp.EQ, parse_id(text))
    if kind is FilterKind.DATE:
        match = _DATE_FILTER.match(text)
        if match is None:
            raise ValueError(f"{text!r} is not yyyy-MM-dd, lt:yyyy-MM-dd, gt:… or gtn:…")
        try:
            day = date.fromisoformat(match.group(2))
        except ValueError:
            raise ValueError(f"{match.group(2)!r} is not a valid date") from None
        return InventoryFilter(name, FilterOp(match.group(1) or "eq"), day)
    op, value = FilterOp.EQ, text
    for candidate in (FilterOp.IN, FilterOp.LIKE):
        if text.startswith(f"{candidate.value}:"):
            op, value = candidate, text.removeprefix(f"{candidate.value}:")
    if op is FilterOp.IN:
        return InventoryFilter(name, op, tuple(filter_text(item) for item in in_values(value)))
    return InventoryFilter(name, op, filter_text(value))


def parse_list_query(
    names: Sequence[str],
    *,
    page: int,
    page_size: int,
    sort: str | None,
    fields: str | None,
    filters: Mapping[str, Sequence[str] | None],
) -> tuple[InventoryListQuery, tuple[str, ...] | None]:
    """The list endpoint's query string (`names`: every parameter given, in order, for
    unknown and repeated ones), every problem reported at once (400)."""
    errors: list[ApiErrorItem] = []
    if not check_parameter_names(names, LIST_PARAMETERS, INVENTORY_LIST_FILTERS, errors):
        raise ApiError(400, errors)  # refused before any filter is parsed
    sort_keys = parse_sort(sort, errors)
    projection = parse_fields(fields, errors)
    parsed = parse_filters(filters, parse_filter, errors)
    if errors:
        raise ApiError(400, errors)
    query = InventoryListQuery(
        limit=page_size,
        offset=(page - 1) * page_size,
        sort=sort_keys,
        filters=tuple(parsed),
    )
    return query, projection
