"""The query string of the reads over stored usages: the filters (`GET /usages` and
`GET /usage-summaries` share them), and the list's paging, sort and fields, read into
the store's `UsageFilters` and `UsageListQuery` with every problem reported at once (400).

For another read with the same filters: declare `UsageFilterParameters` (the filters'
OpenAPI parameters, their raw values by query name), check the query string's names
with `check_usage_parameter_names`, then `parse_usage_filters`.
"""

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated

from fastapi import Depends, Query
from pydantic.alias_generators import to_camel

from usage_ingest.api.errors import ApiError, ApiErrorItem
from usage_ingest.api.list_query import (
    LIST_PARAMETERS,
    check_parameter_names,
    filter_text,
    in_values,
    parameter_error,
    parse_fields,
    parse_filters,
    parse_id,
    parse_sort,
)
from usage_ingest.api.schemas import Usage
from usage_ingest.store.usage_list import (
    USAGE_FILTER_KINDS,
    USAGE_SORT_FIELDS,
    UsageFilter,
    UsageFilterKind,
    UsageFilterOp,
    UsageFilters,
    UsageListQuery,
)
from usage_ingest.times import parse_date_time

# The query string's names (camelCase) of the store's filterable fields.
USAGE_FILTER_PARAMETERS: dict[str, str] = {to_camel(name): name for name in USAGE_FILTER_KINDS}
_SORTABLE: dict[str, str] = {to_camel(name): name for name in USAGE_SORT_FIELDS}
USAGE_FIELDS: tuple[str, ...] = tuple(
    info.alias or name for name, info in Usage.model_fields.items()
)
_INSTANT = re.compile(r"^(?:(gte|gt|lte|lt):)?(.*)$", re.DOTALL)
_TEXT_HELP = "xyz (exact), in:x,y (any of) or like:xyz (contains, case-insensitive)"
_ID_HELP = "An id (exact), or in:1,2 (any of)."
_INSTANT_HELP = (
    "An RFC 3339 instant: bare (equal), gte:, gt:, lt: or lte:; repeat to combine, e.g. "
    "{name}=gte:2026-05-01T00:00:00Z&{name}=lt:2026-06-01T00:00:00Z"
)

RawFilters = dict[str, list[str] | None]


def _filter_values(
    *,
    contract_id: Annotated[
        list[str] | None, Query(alias="contractId", description=_ID_HELP)
    ] = None,
    debtor_id: Annotated[list[str] | None, Query(alias="debtorId", description=_ID_HELP)] = None,
    inventory_id: Annotated[
        list[str] | None, Query(alias="inventoryId", description=_ID_HELP)
    ] = None,
    product_ident: Annotated[
        list[str] | None, Query(alias="productIdent", description=_TEXT_HELP)
    ] = None,
    external_reference: Annotated[
        list[str] | None, Query(alias="externalReference", description=_TEXT_HELP)
    ] = None,
    billable: Annotated[list[str] | None, Query(description="true or false.")] = None,
    start_date: Annotated[
        list[str] | None,
        Query(alias="startDate", description=_INSTANT_HELP.format(name="startDate")),
    ] = None,
    received_at: Annotated[
        list[str] | None,
        Query(alias="receivedAt", description=_INSTANT_HELP.format(name="receivedAt")),
    ] = None,
) -> RawFilters:
    """The filters' values as given, by query name (declared here for the document)."""
    return {
        "contractId": contract_id,
        "debtorId": debtor_id,
        "inventoryId": inventory_id,
        "productIdent": product_ident,
        "externalReference": external_reference,
        "billable": billable,
        "startDate": start_date,
        "receivedAt": received_at,
    }


UsageFilterParameters = Annotated[RawFilters, Depends(_filter_values)]


def check_usage_parameter_names(
    names: Iterable[str], single: frozenset[str], errors: list[ApiErrorItem]
) -> bool:
    """`check_parameter_names` for a read with the usages' filters and the parameters
    of its own (`single`, each given at most once)."""
    return check_parameter_names(names, single, USAGE_FILTER_PARAMETERS, errors)


def parse_usage_filters(
    raw: Mapping[str, Sequence[str] | None], errors: list[ApiErrorItem]
) -> UsageFilters:
    """The filters given (query name → values), one error per bad value."""
    return UsageFilters(tuple(parse_filters(raw, parse_usage_filter, errors)))


def parse_usage_filter(name: str, text: str) -> UsageFilter:
    """One filter parameter (`startDate=gte:2026-05-01T00:00:00Z`); ValueError says
    what is wrong."""
    field = USAGE_FILTER_PARAMETERS[name]
    kind = USAGE_FILTER_KINDS[field]
    if kind is UsageFilterKind.BOOLEAN:
        if text not in ("true", "false"):
            raise ValueError(f"{text!r} is neither true nor false")
        return UsageFilter(field, UsageFilterOp.EQ, text == "true")
    if kind is UsageFilterKind.INSTANT:
        return _instant_filter(field, text)
    if text.startswith("in:"):
        return _in_filter(field, kind, text.removeprefix("in:"))
    if kind is UsageFilterKind.ID:
        return UsageFilter(field, UsageFilterOp.EQ, parse_id(text))
    if text.startswith("like:"):
        return UsageFilter(field, UsageFilterOp.LIKE, filter_text(text.removeprefix("like:")))
    return UsageFilter(field, UsageFilterOp.EQ, filter_text(text))


def _in_filter(field: str, kind: UsageFilterKind, text: str) -> UsageFilter:
    values = in_values(text)
    if kind is UsageFilterKind.ID:
        return UsageFilter(field, UsageFilterOp.IN, tuple(parse_id(v) for v in values))
    return UsageFilter(field, UsageFilterOp.IN, tuple(filter_text(v) for v in values))


def _instant_filter(field: str, text: str) -> UsageFilter:
    match = _INSTANT.match(text)
    assert match is not None  # the pattern matches any text
    try:
        instant = parse_date_time(match.group(2))
    except ValueError:
        raise ValueError(
            f"{text!r} is not an RFC 3339 instant (2026-05-01T00:00:00Z), "
            "optionally after gte:, gt:, lt: or lte:"
        ) from None
    return UsageFilter(field, UsageFilterOp(match.group(1) or "eq"), instant)


def parse_usage_sort(text: str | None, errors: list[ApiErrorItem]) -> tuple[tuple[str, bool], ...]:
    """`startDate:desc,id` → (("start_date", True), ("id", False))."""
    return parse_sort(text, _SORTABLE, errors)


def parse_usage_fields(text: str | None, errors: list[ApiErrorItem]) -> tuple[str, ...] | None:
    """`id,externalReference` → the fields to return; None means all of them."""
    return parse_fields(text, USAGE_FIELDS, errors)


def parse_usage_list(
    names: Sequence[str],
    *,
    csv: bool,
    page: int | None,
    page_size: int | None,
    sort: str | None,
    fields: str | None,
    filters: Mapping[str, Sequence[str] | None],
) -> tuple[UsageListQuery, tuple[str, ...] | None]:
    """`GET /usages`'s query string (`names`: every parameter given, in order, for
    unknown and repeated ones). `page` and `pageSize` go together; without `csv` they
    are required. `fields` is for the JSON list only. Every problem at once (400)."""
    errors: list[ApiErrorItem] = []
    if not check_usage_parameter_names(names, LIST_PARAMETERS, errors):
        raise ApiError(400, errors)
    if not csv:
        errors += [
            parameter_error(name, "is required (optional only with Accept: text/csv)")
            for name, value in (("page", page), ("pageSize", page_size))
            if value is None
        ]
    elif (page is None) != (page_size is None):
        missing = "page" if page is None else "pageSize"
        errors.append(parameter_error(missing, "page and pageSize go together"))
    if csv and fields is not None:
        errors.append(parameter_error("fields", "the CSV export has fixed columns"))
    sort_keys = parse_usage_sort(sort, errors)
    projection = parse_usage_fields(fields, errors)
    selection = parse_usage_filters(filters, errors)
    if errors:
        raise ApiError(400, errors)
    paged = page is not None and page_size is not None
    query = UsageListQuery(
        selection=selection,
        sort=sort_keys,
        limit=page_size if paged else None,
        offset=(page - 1) * page_size if page is not None and page_size is not None else 0,
    )
    return query, projection
