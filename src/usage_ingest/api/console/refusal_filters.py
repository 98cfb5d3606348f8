"""The refusals view's filters: the form's fields read into the same query as
`GET /usage-rejections` (`api.rejection_query`), so both list exactly the same refusals,
and the links of the pages before and after.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlencode

from usage_ingest.api.console.inputs import whole_number
from usage_ingest.api.errors import ApiError
from usage_ingest.api.limits import MAX_PAGE
from usage_ingest.api.rejection_query import parse_rejection_query
from usage_ingest.errors import ErrorCode
from usage_ingest.store.rejection_list import RejectionListQuery

PAGE_SIZE = 50
CODES = tuple(ErrorCode)
RESOLVED_CHOICES = ("", "true", "false")


@dataclass(frozen=True, slots=True)
class RefusalFilters:
    """What the operator chose, as the form shows it again."""

    codes: tuple[str, ...] = ()
    resolved: str = ""  # "", "true" or "false"
    reference: str = ""  # contains, case-insensitive
    since: str = ""  # failedAt from (inclusive), RFC 3339 or the form's local date-time
    until: str = ""  # failedAt before (exclusive)
    page: int = 1

    @classmethod
    def of(cls, params: Mapping[str, Sequence[str]]) -> RefusalFilters:
        def one(name: str) -> str:
            values = params.get(name) or [""]
            return values[0].strip()

        page = whole_number(one("page"))
        return cls(
            codes=tuple(c for c in params.get("code", ()) if c),
            resolved=one("resolved") if one("resolved") in RESOLVED_CHOICES else "",
            reference=one("reference"),
            since=one("since"),
            until=one("until"),
            # Past the API's last page (or no page number at all): the first.
            page=page if page is not None and 1 <= page <= MAX_PAGE else 1,
        )

    def api_filters(self) -> dict[str, list[str] | None]:
        """The filters as `GET /usage-rejections` takes them."""
        failed_at = [f"gte:{self.since}"] if self.since else []
        failed_at += [f"lt:{self.until}"] if self.until else []
        return {
            "code": [f"in:{','.join(self.codes)}"] if self.codes else None,
            "resolved": [self.resolved] if self.resolved else None,
            "externalReference": [f"like:{self.reference}"] if self.reference else None,
            "failedAt": failed_at or None,
        }

    def query(self) -> RejectionListQuery:
        """The store's query; ApiError (400) names each filter that is wrong."""
        filters = self.api_filters()
        names = ["page", "pageSize"] + [
            name for name, values in filters.items() for _ in values or ()
        ]
        query, _ = parse_rejection_query(
            names, page=self.page, page_size=PAGE_SIZE, sort=None, fields=None, filters=filters
        )
        return query

    def link(self, page: int) -> str:
        """The query string of page `page` under the same filters."""
        pairs = [("code", code) for code in self.codes]
        for name in ("resolved", "reference", "since", "until"):
            value = getattr(self, name)
            if value:
                pairs.append((name, value))
        pairs.append(("page", str(page)))
        return "?" + urlencode(pairs)


@dataclass(frozen=True, slots=True)
class Paging:
    page: int
    pages: int
    total: int
    first: int  # the 1-based number of the page's first row, 0 when empty
    last: int
    previous: str | None  # query strings of the neighbouring pages
    next: str | None


def paging(filters: RefusalFilters, total: int, shown: int) -> Paging:
    pages = max(math.ceil(total / PAGE_SIZE), 1)
    first = (filters.page - 1) * PAGE_SIZE + 1 if shown else 0
    return Paging(
        filters.page,
        pages,
        total,
        first,
        first + shown - 1 if shown else 0,
        filters.link(filters.page - 1) if filters.page > 1 else None,
        filters.link(filters.page + 1) if filters.page < pages else None,
    )


@dataclass(frozen=True, slots=True)
class FilterProblems:
    messages: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, error: ApiError) -> FilterProblems:
        return cls([f"{e.field}: {e.message}" if e.field else e.message for e in error.errors])
