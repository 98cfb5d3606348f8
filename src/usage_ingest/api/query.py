"""The list endpoint's query string: paging, sort, fields and filters, read into the
store's `InventoryListQuery` with every problem reported at once (400)."""

import re
from collections.abc import Mapping, Sequence
from datetime import date

from pydantic.alias_generators import to_camel

from usage_ingest.api.errors import ApiError, ApiErrorCode, ApiErrorItem
from usage_ingest.api.limits import MAX_IN_VALUES, filter_count_problems
from usage_ingest.api.schemas import INVENTORY_FIELDS
from usage_ingest.domain.messages import ID_MAX, ID_MIN
from usage_ingest.store.inventories import (
    INVENTORY_FILTER_KINDS,
    INVENTORY_SORT_FIELDS,
    FilterKind,
    FilterOp,
    InventoryFilter,
    InventoryListQuery,
)

_DATE_FILTER = re.compile(r"^(?:(lt|gt|gtn):)?([0-9]{4}-[0-9]{2}-[0-9]{2})$")
_ID_FILTER = re.compile(r"^[0-9]{1,19}$")
_LIST_PARAMETERS = frozenset({"page", "pageSize", "sort", "fields"})
# The query string's names (the platform's camelCase) of the store's fields.
INVENTORY_LIST_FILTERS: dict[str, str] = {to_camel(name): name for name in INVENTORY_FILTER_KINDS}
_SORTABLE: dict[str, str] = {to_camel(name): name for name in INVENTORY_SORT_FIELDS}


def _parameter_error(name: str, message: str) -> ApiErrorItem:
    return ApiErrorItem(code=ApiErrorCode.INVALID_PARAMETER, field=name, message=message)


def parse_sort(text: str | None, errors: list[ApiErrorItem]) -> tuple[tuple[str, bool], ...]:
    """`startDate:desc,id` → (("start_date", True), ("id", False))."""
    if text is None:
        return ()
    keys: list[tuple[str, bool]] = []
    for part in text.split(","):
        name, colon, direction = part.strip().partition(":")
        if name not in _SORTABLE:
            errors.append(
                _parameter_error(
                    "sort", f"{name!r} is not a sortable field; sortable: " + ", ".join(_SORTABLE)
                )
            )
        elif colon and direction not in ("asc", "desc"):
            errors.append(_parameter_error("sort", f"{part!r}: a direction is ':desc' (or ':asc')"))
        elif _SORTABLE[name] in {key for key, _ in keys}:
            errors.append(_parameter_error("sort", f"{name!r} is named twice"))
        else:
            keys.append((_SORTABLE[name], direction == "desc"))
    return tuple(keys)


def parse_fields(text: str | None, errors: list[ApiErrorItem]) -> tuple[str, ...] | None:
    """`id,siteId` → the fields to return; None means all of them."""
    if text is None:
        return None
    names = tuple(name.strip() for name in text.split(","))
    for name in names:
        if name not in INVENTORY_FIELDS:
            errors.append(
                _parameter_error(
                    "fields", f"{name!r} is not a field; fields: " + ", ".join(INVENTORY_FIELDS)
                )
            )
    return names


def parse_filter(name: str, text: str) -> InventoryFilter:
    """One filter parameter (`startDate=gtn:2026-01-01`); ValueError says what is wrong."""
    name = INVENTORY_LIST_FILTERS[name]
    kind = INVENTORY_FILTER_KINDS[name]
    if kind is FilterKind.ID:
        if not _ID_FILTER.match(text) or not ID_MIN <= int(text) <= ID_MAX:
            raise ValueError(f"{text!r} is not an id (1 to {ID_MAX})")
        return InventoryFilter(name, FilterOp.EQ, int(text))
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
        values = tuple(value.split(","))
        if len(values) > MAX_IN_VALUES:
            raise ValueError(f"in: takes at most {MAX_IN_VALUES} values")
        for item in values:
            _filter_text(item)
        return InventoryFilter(name, op, values)
    return InventoryFilter(name, op, _filter_text(value))


def _filter_text(value: str) -> str:
    if not value:
        raise ValueError("an empty value matches nothing useful")
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


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
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    for name, count in counts.items():
        if name not in _LIST_PARAMETERS and name not in INVENTORY_LIST_FILTERS:
            errors.append(_parameter_error(name, "is not a parameter of this endpoint"))
        elif name in _LIST_PARAMETERS and count > 1:
            errors.append(_parameter_error(name, "is given more than once"))
    too_many = filter_count_problems(counts, INVENTORY_LIST_FILTERS)
    if too_many:  # refused before any filter is parsed
        errors += [
            ApiErrorItem(code=ApiErrorCode.INVALID_PARAMETER, field=field, message=message)
            for field, message in too_many
        ]
        raise ApiError(400, errors)
    sort_keys = parse_sort(sort, errors)
    projection = parse_fields(fields, errors)
    parsed = []
    for name, texts in filters.items():
        for text in texts or ():
            try:
                parsed.append(parse_filter(name, text))
            except ValueError as exc:
                errors.append(_parameter_error(name, str(exc)))
    if errors:
        raise ApiError(400, errors)
    query = InventoryListQuery(
        limit=page_size,
        offset=(page - 1) * page_size,
        sort=sort_keys,
        filters=tuple(parsed),
    )
    return query, projection
