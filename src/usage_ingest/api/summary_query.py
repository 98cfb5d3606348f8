"""The query string of GET /usage-summaries: its filters (`parse_summary_filter`), the
group keys and paging, read into the store's `SummaryQuery` with every problem reported
at once (400 `INVALID_PARAMETER`, one per bad parameter)."""

from collections.abc import Mapping, Sequence

from usage_ingest.api.errors import ApiError, ApiErrorItem
from usage_ingest.api.list_query import (
    filter_text,
    in_values,
    parameter_error,
    parse_filters,
    parse_id,
)
from usage_ingest.api.usage_query import check_usage_parameter_names
from usage_ingest.store.usage_summaries import (
    SUMMARY_FILTER_KINDS,
    SUMMARY_GROUP_KEYS,
    SummaryFilter,
    SummaryFilterKind,
    SummaryFilterOp,
    SummaryQuery,
)
from usage_ingest.times import parse_date_time

_INSTANT_OPS = (SummaryFilterOp.GTE, SummaryFilterOp.GT, SummaryFilterOp.LTE, SummaryFilterOp.LT)
_TEXT_OPS = (SummaryFilterOp.IN, SummaryFilterOp.LIKE)
_BOOLEANS = {"true": True, "false": False}
_PAGING = frozenset({"page", "pageSize", "groupBy"})
# Which operators bound startDate from below and from above (equal bounds both).
_LOWER = frozenset({SummaryFilterOp.GTE, SummaryFilterOp.GT, SummaryFilterOp.EQ})
_UPPER = frozenset({SummaryFilterOp.LTE, SummaryFilterOp.LT, SummaryFilterOp.EQ})


def _operator(text: str, ops: Sequence[SummaryFilterOp]) -> tuple[SummaryFilterOp, str]:
    """`gte:2026-05-01…` → (GTE, "2026-05-01…"); no known prefix means equal."""
    for op in ops:
        if text.startswith(f"{op.value}:"):
            return op, text.removeprefix(f"{op.value}:")
    return SummaryFilterOp.EQ, text


def parse_summary_filter(name: str, text: str) -> SummaryFilter:
    """One filter parameter (`contractId=in:1,2`, `startDate=gte:2026-05-01T00:00:00Z`);
    ValueError says what is wrong with it."""
    kind = SUMMARY_FILTER_KINDS[name]
    if kind is SummaryFilterKind.ID:
        op, value = _operator(text, (SummaryFilterOp.IN,))
        if op is SummaryFilterOp.IN:
            return SummaryFilter(name, op, tuple(parse_id(item) for item in in_values(value)))
        return SummaryFilter(name, op, parse_id(value))
    if kind is SummaryFilterKind.TEXT:
        op, value = _operator(text, _TEXT_OPS)
        if op is SummaryFilterOp.IN:
            return SummaryFilter(name, op, tuple(filter_text(item) for item in in_values(value)))
        return SummaryFilter(name, op, filter_text(value))
    if kind is SummaryFilterKind.BOOLEAN:
        if text not in _BOOLEANS:
            raise ValueError(f"{text!r} is not true or false")
        return SummaryFilter(name, SummaryFilterOp.EQ, _BOOLEANS[text])
    op, value = _operator(text, _INSTANT_OPS)
    try:
        instant = parse_date_time(value)
    except ValueError:
        hint = " (in a query string, + is written %2B)" if " " in value else ""
        raise ValueError(
            f"{value!r} is not an RFC 3339 instant, e.g. gte:2026-05-01T00:00:00Z{hint}; "
            "operators: gte:, gt:, lt:, lte:, none for equal"
        ) from None
    return SummaryFilter(name, op, instant)


def _group_keys(text: str | None, errors: list[ApiErrorItem]) -> tuple[str, ...]:
    """`contractId,day` → ("contractId", "day"), in the order given."""
    if text is None:
        return ()
    keys: list[str] = []
    for part in text.split(","):
        key = part.strip()
        if key not in SUMMARY_GROUP_KEYS:
            errors.append(
                parameter_error(
                    "groupBy",
                    f"{key!r} is not a group key; group keys: " + ", ".join(SUMMARY_GROUP_KEYS),
                )
            )
        elif key in keys:
            errors.append(parameter_error("groupBy", f"{key!r} is named twice"))
        else:
            keys.append(key)
    return tuple(keys)


def parse_summary_query(
    names: Sequence[str],
    *,
    page: int,
    page_size: int,
    group_by: str | None,
    filters: Mapping[str, Sequence[str] | None],
) -> SummaryQuery:
    """The query string of GET /usage-summaries (`names`: every parameter given, in
    order, for unknown and repeated ones), every problem reported at once (400)."""
    errors: list[ApiErrorItem] = []
    if not check_usage_parameter_names(names, _PAGING, errors):
        raise ApiError(400, errors)  # refused before any filter is parsed
    keys = _group_keys(group_by, errors)
    parsed = parse_filters(filters, parse_summary_filter, errors)
    bounds = {f.op for f in parsed if f.field == "startDate"}
    bad_start = any(e.field == "startDate" for e in errors)
    if not (bounds & _LOWER and bounds & _UPPER) and not bad_start:
        errors.append(
            parameter_error(
                "startDate",
                "both bounds are required, e.g. startDate=gte:2026-05-01T00:00:00Z"
                "&startDate=lt:2026-06-01T00:00:00Z: a sum over all time is refused",
            )
        )
    if errors:
        raise ApiError(400, errors)
    return SummaryQuery(
        limit=page_size, offset=(page - 1) * page_size, group_by=keys, filters=tuple(parsed)
    )
