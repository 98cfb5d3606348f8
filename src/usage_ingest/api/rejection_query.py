"""`GET /usage-rejections`' query string: paging, sort, fields and filters, read into the
store's `RejectionListQuery` with every problem reported at once (400)."""

import re
from collections.abc import Mapping, Sequence

from pydantic.alias_generators import to_camel

from usage_ingest.api.errors import ApiError, ApiErrorCode, ApiErrorItem
from usage_ingest.api.limits import MAX_IN_VALUES, filter_count_problems
from usage_ingest.api.rejection_schemas import REJECTION_FIELDS
from usage_ingest.errors import ErrorCode
from usage_ingest.store.rejection_list import (
    REJECTION_FILTER_OPS,
    REJECTION_SORT_FIELDS,
    RejectionFilter,
    RejectionFilterOp,
    RejectionListQuery,
)
from usage_ingest.times import parse_date_time

_LIST_PARAMETERS = frozenset({"page", "pageSize", "sort", "fields"})
# The query string's names (camelCase) of the store's fields.
REJECTION_LIST_FILTERS: dict[str, str] = {to_camel(name): name for name in REJECTION_FILTER_OPS}
_SORTABLE: dict[str, str] = {to_camel(name): name for name in REJECTION_SORT_FIELDS}
_OPERATOR = re.compile(r"^([a-z]+):")
_BOOLEANS = {"true": True, "false": False}
_CODES = ", ".join(ErrorCode)


def _parameter_error(name: str | None, message: str) -> ApiErrorItem:
    return ApiErrorItem(code=ApiErrorCode.INVALID_PARAMETER, field=name, message=message)


def parse_sort(text: str | None, errors: list[ApiErrorItem]) -> tuple[tuple[str, bool], ...]:
    """`failedAt:desc,id` → (("failed_at", True), ("id", False)); () without a sort."""
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
    """`id,errors` → the fields to return; None means all of them."""
    if text is None:
        return None
    names = tuple(name.strip() for name in text.split(","))
    for name in names:
        if name not in REJECTION_FIELDS:
            errors.append(
                _parameter_error(
                    "fields", f"{name!r} is not a field; fields: " + ", ".join(REJECTION_FIELDS)
                )
            )
    return names


def _split_operator(field: str, text: str) -> tuple[RejectionFilterOp, str]:
    """`gte:2026-05-01T00:00:00Z` → (GTE, the rest); no operator means equal. An external
    reference may hold a colon: for it, only `in:` and `like:` are operators."""
    match = _OPERATOR.match(text)
    taken = REJECTION_FILTER_OPS[field] - {RejectionFilterOp.EQ}
    if match is None or (field == "external_reference" and match.group(1) not in taken):
        return RejectionFilterOp.EQ, text
    if match.group(1) not in taken:
        listed = ", ".join(sorted(f"{op.value}:" for op in taken))
        raise ValueError(f"{match.group(1)}: is not an operator of this filter; it takes {listed}")
    return RejectionFilterOp(match.group(1)), text[match.end() :]


def _filter_text(value: str) -> str:
    if not value:
        raise ValueError("an empty value matches nothing useful")
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


def _error_code(value: str) -> str:
    if value not in ErrorCode.__members__:
        raise ValueError(f"{value!r} is not an error code; codes: {_CODES}")
    return value


def parse_filter(name: str, text: str) -> RejectionFilter:
    """One filter parameter (`failedAt=gte:2026-05-01T00:00:00Z`); ValueError says what
    is wrong."""
    field = REJECTION_LIST_FILTERS[name]
    if field in ("retryable", "resolved"):
        if text not in _BOOLEANS:
            raise ValueError(f"{text!r} is not true or false")
        return RejectionFilter(field, RejectionFilterOp.EQ, _BOOLEANS[text])
    op, value = _split_operator(field, text)
    if field == "failed_at":
        try:
            instant = parse_date_time(value)
        except ValueError as exc:
            raise ValueError(
                f"{value!r} {exc}; give an RFC 3339 instant, bare (equal) or after gte:, gt:, "
                "lt: or lte:, e.g. gte:2026-05-01T00:00:00Z"
            ) from None
        return RejectionFilter(field, op, instant)
    check = _error_code if field == "code" else _filter_text
    if op is RejectionFilterOp.IN:
        values = tuple(value.split(","))
        if len(values) > MAX_IN_VALUES:
            raise ValueError(f"in: takes at most {MAX_IN_VALUES} values")
        return RejectionFilter(field, op, tuple(check(item) for item in values))
    return RejectionFilter(field, op, check(value))


def parse_rejection_query(
    names: Sequence[str],
    *,
    page: int,
    page_size: int,
    sort: str | None,
    fields: str | None,
    filters: Mapping[str, Sequence[str] | None],
) -> tuple[RejectionListQuery, tuple[str, ...] | None]:
    """The query string (`names`: every parameter given, in order, for unknown and
    repeated ones), every problem reported at once (400)."""
    errors: list[ApiErrorItem] = []
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    for name, count in counts.items():
        if name not in _LIST_PARAMETERS and name not in REJECTION_LIST_FILTERS:
            errors.append(_parameter_error(name, "is not a parameter of this endpoint"))
        elif name in _LIST_PARAMETERS and count > 1:
            errors.append(_parameter_error(name, "is given more than once"))
    too_many = filter_count_problems(counts, REJECTION_LIST_FILTERS)
    if too_many:  # refused before any filter is parsed
        errors += [_parameter_error(field, message) for field, message in too_many]
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
    query = RejectionListQuery(
        limit=page_size,
        offset=(page - 1) * page_size,
        sort=sort_keys,
        filters=tuple(parsed),
    )
    return query, projection
