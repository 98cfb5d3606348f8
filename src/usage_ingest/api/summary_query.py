"""The query string of GET /usage-summaries: its filters (`parse_summary_filter`), the
group keys and paging, read into the store's `SummaryQuery` with every problem reported
at once (400 `INVALID_PARAMETER`, one per bad parameter)."""

import re
from collections.abc import Mapping, Sequence

from usage_ingest.api.errors import ApiError, ApiErrorCode, ApiErrorItem
from usage_ingest.api.limits import MAX_IN_VALUES, filter_count_problems
from usage_ingest.domain.messages import ID_MAX, ID_MIN
from usage_ingest.store.usage_summaries import (
    SUMMARY_FILTER_KINDS,
    SUMMARY_GROUP_KEYS,
    SummaryFilter,
    SummaryFilterKind,
    SummaryFilterOp,
    SummaryQuery,
)
from usage_ingest.times import parse_date_time

_ID = re.compile(r"^[0-9]{1,19}$")
_INSTANT_OPS = (SummaryFilterOp.GTE, SummaryFilterOp.GT, SummaryFilterOp.LTE, SummaryFilterOp.LT)
_TEXT_OPS = (SummaryFilterOp.IN, SummaryFilterOp.LIKE)
_BOOLEANS = {"true": True, "false": False}
_PAGING = frozenset({"page", "pageSize", "groupBy"})
# Which operators bound startDate from below and from above (equal bounds both).
_LOWER = frozenset({SummaryFilterOp.GTE, SummaryFilterOp.GT, SummaryFilterOp.EQ})
_UPPER = frozenset({SummaryFilterOp.LTE, SummaryFilterOp.LT, SummaryFilterOp.EQ})


def _parameter_error(name: str | None, message: str) -> ApiErrorItem:
    return ApiErrorItem(code=ApiErrorCode.INVALID_PARAMETER, field=name, message=message)


def _operator(text: str, ops: Sequence[SummaryFilterOp]) -> tuple[SummaryFilterOp, str]:
    """`gte:2026-05-01…` → (GTE, "2026-05-01…"); no known prefix means equal."""
    for op in ops:
        if text.startswith(f"{op.value}:"):
            return op, text.removeprefix(f"{op.value}:")
    return SummaryFilterOp.EQ, text


def _id(text: str) -> int:
    if not _ID.match(text) or not ID_MIN <= int(text) <= ID_MAX:
        raise ValueError(f"{text!r} is not an id (1 to {ID_MAX})")
    return int(text)


def _text(value: str) -> str:
    if not value:
        raise ValueError("an empty value matches nothing useful")
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


def _values(text: str) -> list[str]:
    values = text.split(",")
    if len(values) > MAX_IN_VALUES:
        raise ValueError(f"in: takes at most {MAX_IN_VALUES} values")
    return values


def parse_summary_filter(name: str, text: str) -> SummaryFilter:
    """One filter parameter (`contractId=in:1,2`, `startDate=gte:2026-05-01T00:00:00Z`);
    ValueError says what is wrong with it."""
    kind = SUMMARY_FILTER_KINDS[name]
    if kind is SummaryFilterKind.ID:
        op, value = _operator(text, (SummaryFilterOp.IN,))
        if op is SummaryFilterOp.IN:
            return SummaryFilter(name, op, tuple(_id(item) for item in _values(value)))
        return SummaryFilter(name, op, _id(value))
    if kind is SummaryFilterKind.TEXT:
        op, value = _operator(text, _TEXT_OPS)
        if op is SummaryFilterOp.IN:
            return SummaryFilter(name, op, tuple(_text(item) for item in _values(value)))
        return SummaryFilter(name, op, _text(value))
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
                _parameter_error(
                    "groupBy",
                    f"{key!r} is not a group key; group keys: " + ", ".join(SUMMARY_GROUP_KEYS),
                )
            )
        elif key in keys:
            errors.append(_parameter_error("groupBy", f"{key!r} is named twice"))
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
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    for name, count in counts.items():
        if name not in _PAGING and name not in SUMMARY_FILTER_KINDS:
            errors.append(_parameter_error(name, "is not a parameter of this endpoint"))
        elif name in _PAGING and count > 1:
            errors.append(_parameter_error(name, "is given more than once"))
    too_many = filter_count_problems(counts, SUMMARY_FILTER_KINDS)
    if too_many:  # refused before any filter is parsed
        raise ApiError(400, errors + [_parameter_error(f, m) for f, m in too_many])
    keys = _group_keys(group_by, errors)
    parsed: list[SummaryFilter] = []
    for name, texts in filters.items():
        for text in texts or ():
            try:
                parsed.append(parse_summary_filter(name, text))
            except ValueError as exc:
                errors.append(_parameter_error(name, str(exc)))
    bounds = {f.op for f in parsed if f.field == "startDate"}
    bad_start = any(e.field == "startDate" for e in errors)
    if not (bounds & _LOWER and bounds & _UPPER) and not bad_start:
        errors.append(
            _parameter_error(
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
