"""The pieces the read side's list statements are composed of: a filter's condition,
the conditions AND-ed into a named query's `/*where*/`, and an ORDER BY of sortable
columns that the id ends.

Only whitelisted column names, operators' templates and parameter numbers (`$n`) go
into the SQL text; every value is appended to the statement's parameters. A field,
operator or sort key off the whitelist raises ValueError (the API refuses them before
they get here).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar

Kind = TypeVar("Kind")
Op = TypeVar("Op")


def column_conditions(
    fields: Mapping[str, tuple[Kind, str]],
    ops: Mapping[Kind, Iterable[Op]],
    templates: Mapping[Op, str],
    arrays: Mapping[Kind, str] | None = None,
) -> dict[str, dict[Op, str]]:
    """Each field's condition for each operator its kind takes: the operator's template
    with the field's `{column}` and its kind's `{array}` type filled in, `{n}` left for
    the number of its parameter. `fields`: the kind and column of each field."""
    arrays = arrays or {}
    return {
        name: {
            op: templates[op].replace("{column}", column).replace("{array}", arrays.get(kind, ""))
            for op in ops[kind]
        }
        for name, (kind, column) in fields.items()
    }


def filter_condition(
    field: str,
    op: Any,
    value: Any,
    conditions: Mapping[str, Mapping[Any, str]],
    params: list[Any],
) -> str:
    """The condition of one filter (`conditions`: each field's, by operator, `{n}` the
    parameter's number); its value is appended to `params` (a tuple as a list, for
    `= ANY(...)`)."""
    if field not in conditions:
        raise ValueError(f"{field!r} cannot be filtered on")
    if op not in conditions[field]:
        raise ValueError(f"{field!r} cannot be filtered with {op}")
    params.append(list(value) if isinstance(value, tuple) else value)
    return conditions[field][op].format(n=len(params))


def and_all(conditions: Iterable[str], indent: str) -> str:
    """The text that replaces a `/*where*/` after `WHERE true`: each condition on a line
    of its own, `indent` before its AND."""
    return "".join(f"\n{indent}AND {condition}" for condition in conditions)


def order_by(sort: Sequence[tuple[str, bool]], sortable: Iterable[str]) -> str:
    """`(name, descending)` keys, each one of `sortable`, as an ORDER BY list; the id
    ends it (ascending unless named), so that pages are stable."""
    allowed = frozenset(sortable)
    order = []
    for name, descending in sort:
        if name not in allowed:
            raise ValueError(f"{name!r} cannot be sorted on")
        order.append(f"{name} {'DESC' if descending else 'ASC'}")
    if "id" not in {name for name, _ in sort}:
        order.append("id ASC")
    return ", ".join(order)
