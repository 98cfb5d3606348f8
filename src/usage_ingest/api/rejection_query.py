"""`GET /usage-rejections`' query string: paging, sort, fields and filters, read into the
store's `RejectionListQuery` with every problem reported at once (400)."""

import re
from collections.abc import Mapping, Sequence

from pydantic.alias_generators import to_camel

from usage_ingest.api import list_query
from usage_ingest.api.errors import ApiError, ApiErrorItem
from usage_ingest.api.list_query import (
    LIST_PARAMETERS,
    check_parameter_names,
    filter_text,
    in_values,
    parse_filters,
)
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

# The query string's names (camelCase) of the store's fields.
REJECTION_LIST_FILTERS: dict[str, str] = {to_camel(name): name for name in REJECTION_FILTER_OPS}
_SORTABLE: dict[str, str] = {to_camel(name): name for name in REJECTION_SORT_FIELDS}
_OPERATOR = re.compile(r"^([a-z]+):")
_BOOLEANS = {"true": True, "false": False}
_CODES = ", ".join(ErrorCode)


def parse_sort(text: str | None, errors: list[ApiErrorItem]) -> tuple[tuple[str, bool], ...]:
    """`failedAt:desc,id` → (("failed_at", True), ("id", False)); () without a sort."""
    return list_query.parse_sort(text, _SORTABLE, errors)


def parse_fields(text: str | None, errors: list[ApiErrorItem]) -> tuple[str, ...] | None:
    """`id,errors` → the fields to return; None means all of them."""
    return list_query.parse_fields(text, REJECTION_FIELDS, errors)


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
    check = _error_code if field == "code" else filter_text
    if op is RejectionFilterOp.IN:
        return RejectionFilter(field, op, tuple(check(item) for item in in_values(value)))
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
    if not check_parameter_names(names, LIST_PARAMETERS, REJECTION_LIST_FILTERS, errors):
        raise ApiError(400, errors)  # refused before any filter is parsed
    sort_keys = parse_sort(sort, errors)
    projection = parse_fields(fields, errors)
    parsed = parse_filters(filters, parse_filter, errors)
    if errors:
        raise ApiError(400, errors)
    query = RejectionListQuery(
        limit=page_size,
        offset=(page - 1) * page_size,
        sort=sort_keys,
        filters=tuple(parsed),
    )
    return query, projection
