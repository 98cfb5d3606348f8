"""What every list endpoint reads the same way from its query string: the parameter
names (unknown ones, repeats, the filter limits of `limits.py`), `sort` against the
endpoint's sortable fields, `fields` against its fields, and the values its filters
take (ids, texts, `in:` lists). Each problem is an `INVALID_PARAMETER` item, collected
so that a request is answered with all of them at once (400).

An endpoint's own module declares its filters and sortable fields and calls these.
"""

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TypeVar

from usage_ingest.api.errors import ApiErrorCode, ApiErrorItem
from usage_ingest.api.limits import MAX_IN_VALUES, filter_count_problems
from usage_ingest.domain.messages import ID_MAX, ID_MIN

# The parameters of a list page that are not filters, each given at most once.
LIST_PARAMETERS = frozenset({"page", "pageSize", "sort", "fields"})

_ID = re.compile(r"^[0-9]{1,19}$")
F = TypeVar("F")


def parameter_error(name: str | None, message: str) -> ApiErrorItem:
    return ApiErrorItem(code=ApiErrorCode.INVALID_PARAMETER, field=name, message=message)


def check_parameter_names(
    names: Iterable[str],
    single: frozenset[str],
    filters: Iterable[str],
    errors: list[ApiErrorItem],
) -> bool:
    """`names`: every parameter given, in order. Unknown parameters (neither in `single`
    nor in `filters`), and repeats of those given at most once (`single`), are each an
    error; so are filters past the request limits. False when the filters are past those
    limits: then they are not to be parsed at all."""
    known = frozenset(filters)
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    for name, count in counts.items():
        if name not in single and name not in known:
            errors.append(parameter_error(name, "is not a parameter of this endpoint"))
        elif name in single and count > 1:
            errors.append(parameter_error(name, "is given more than once"))
    too_many = filter_count_problems(counts, known)
    errors.extend(parameter_error(field, message) for field, message in too_many)
    return not too_many


def parse_sort(
    text: str | None, sortable: Mapping[str, str], errors: list[ApiErrorItem]
) -> tuple[tuple[str, bool], ...]:
    """`startDate:desc,id` → (("start_date", True), ("id", False)), `sortable` mapping
    the query's names to the store's; () without a sort."""
    if text is None:
        return ()
    keys: list[tuple[str, bool]] = []
    for part in text.split(","):
        name, colon, direction = part.strip().partition(":")
        if name not in sortable:
            errors.append(
                parameter_error(
                    "sort", f"{name!r} is not a sortable field; sortable: " + ", ".join(sortable)
                )
            )
        elif colon and direction not in ("asc", "desc"):
            errors.append(parameter_error("sort", f"{part!r}: a direction is ':desc' (or ':asc')"))
        elif sortable[name] in {key for key, _ in keys}:
            errors.append(parameter_error("sort", f"{name!r} is named twice"))
        else:
            keys.append((sortable[name], direction == "desc"))
    return tuple(keys)


def parse_fields(
    text: str | None, fields: Iterable[str], errors: list[ApiErrorItem]
) -> tuple[str, ...] | None:
    """`id,siteId` → the fields to return, each one of `fields`; None means all of them."""
    if text is None:
        return None
    known = tuple(fields)
    names = tuple(name.strip() for name in text.split(","))
    for name in names:
        if name not in known:
            errors.append(
                parameter_error("fields", f"{name!r} is not a field; fields: " + ", ".join(known))
            )
    return names


def parse_filters(
    given: Mapping[str, Sequence[str] | None],
    parse_one: Callable[[str, str], F],
    errors: list[ApiErrorItem],
) -> list[F]:
    """Every value of every filter given (query name → values), each read by
    `parse_one(name, text)`; each ValueError it raises is an error of its parameter."""
    parsed = []
    for name, texts in given.items():
        for text in texts or ():
            try:
                parsed.append(parse_one(name, text))
            except ValueError as exc:
                errors.append(parameter_error(name, str(exc)))
    return parsed


def parse_id(text: str) -> int:
    """An id filter's value; ValueError says what is wrong."""
    if not _ID.match(text) or not ID_MIN <= int(text) <= ID_MAX:
        raise ValueError(f"{text!r} is not an id (1 to {ID_MAX})")
    return int(text)


def filter_text(value: str) -> str:
    """A text filter's value; ValueError says what is wrong."""
    if not value:
        raise ValueError("an empty value matches nothing useful")
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


def in_values(text: str) -> list[str]:
    """The values of `in:` (the text after it), at most `MAX_IN_VALUES`."""
    values = text.split(",")
    if len(values) > MAX_IN_VALUES:
        raise ValueError(f"in: takes at most {MAX_IN_VALUES} values")
    return values
