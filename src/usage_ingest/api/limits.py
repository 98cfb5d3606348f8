"""How much work one HTTP request may ask for: every bound the API applies, in one place.

Each bound is checked before the work it limits is done, and a request past one is
answered 400 with a message naming it. Together they keep a request's cost in
proportion to its size, whatever an authenticated client sends:

* list endpoints: the page, the number of filters and of `in:` values;
* JSON Patch: the number of operations and the size of the document after each one
  (a `copy` can double the document, so operations alone do not bound it);
* every statement a request runs: the database budget (`USAGE_INGEST_API_STATEMENT_BUDGET_S`),
  after which Postgres cancels it and the request is answered 504 `STATEMENT_TIMEOUT`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

MAX_PAGE_SIZE: Final = 1000
MAX_PAGE: Final = 1_000_000_000_000
MAX_IN_VALUES: Final = 1000  # values of one `in:` filter
MAX_REPEATS_PER_FILTER: Final = 10  # e.g. startDate=gt:…&startDate=lt:… is two
MAX_FILTERS: Final = 20  # filter parameters of one request, repeats included

MAX_JSON_DEPTH: Final = 32  # nesting of a request body

MAX_PATCH_OPERATIONS: Final = 100
# The record as compact JSON, after each operation: the default body limit, so any record
# POST took can be patched, and a `copy` cannot grow it past what a body may carry.
MAX_PATCHED_DOCUMENT_BYTES: Final = 1024 * 1024


def filter_count_problems(
    counts: Mapping[str, int], filters: Iterable[str]
) -> list[tuple[str | None, str]]:
    """(parameter, message) for each filter parameter repeated too often, and for a
    total past the limit (parameter None). `counts`: how often each parameter is given."""
    problems: list[tuple[str | None, str]] = [
        (name, f"is given {counts[name]} times; at most {MAX_REPEATS_PER_FILTER} are taken")
        for name in filters
        if counts.get(name, 0) > MAX_REPEATS_PER_FILTER
    ]
    total = sum(counts.get(name, 0) for name in filters)
    if total > MAX_FILTERS:
        problems.append((None, f"{total} filters are given; at most {MAX_FILTERS} are taken"))
    return problems
