"""The refusals view's filters (read into GET /usage-rejections' own query) and the
replay form (read into a ReplayRequest)."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import parse_qs

import pytest

from usage_ingest.api.console.refusal_filters import PAGE_SIZE, RefusalFilters, paging
from usage_ingest.api.console.replay_form import (
    MAX_LINK_CHARS,
    MAX_REFERENCES,
    ReplayForm,
    read_replay_form,
)
from usage_ingest.api.console.replays import ReplayRequest
from usage_ingest.api.errors import ApiError
from usage_ingest.api.limits import MAX_PAGE
from usage_ingest.store.rejection_list import RejectionFilter, RejectionFilterOp


def test_the_filters_become_the_apis_own_query() -> None:
    filters = RefusalFilters.of(
        {
            "code": ["NO_INVENTORY", "UNKNOWN_PRODUCT"],
            "resolved": ["false"],
            "reference": [" call- "],
            "since": ["2026-05-01T10:00"],
            "until": ["2026-05-02T00:00:00Z"],
            "page": ["3"],
        }
    )
    query = filters.query()
    assert (query.limit, query.offset) == (PAGE_SIZE, 2 * PAGE_SIZE)
    assert query.filters == (
        RejectionFilter("code", RejectionFilterOp.IN, ("NO_INVENTORY", "UNKNOWN_PRODUCT")),
        RejectionFilter("resolved", RejectionFilterOp.EQ, False),
        RejectionFilter("external_reference", RejectionFilterOp.LIKE, "call-"),
        RejectionFilter("failed_at", RejectionFilterOp.GTE, datetime(2026, 5, 1, 10, tzinfo=UTC)),
        RejectionFilter("failed_at", RejectionFilterOp.LT, datetime(2026, 5, 2, tzinfo=UTC)),
    )


def test_no_filter_is_every_refusal_newest_first() -> None:
    query = RefusalFilters.of({}).query()
    assert (query.filters, query.sort, query.offset) == ((), (), 0)


@pytest.mark.parametrize(
    "page",
    # "²" and "٣" are digits to str.isdigit, not to int; the next are past bigint and
    # past the API's last page.
    ["0", "-1", "x", "", "\N{SUPERSCRIPT TWO}", "\u0663", "9" * 23, str(MAX_PAGE + 1)],
)
def test_a_page_that_is_no_page_number_is_the_first(page: str) -> None:
    assert RefusalFilters.of({"page": [page]}).page == 1


def test_a_bad_filter_is_the_apis_400() -> None:
    with pytest.raises(ApiError) as refused:
        RefusalFilters.of({"code": ["NOPE"], "since": ["soon"]}).query()
    fields = {e.field for e in refused.value.errors}
    assert fields == {"code", "failedAt"}


def test_the_pages_before_and_after_keep_the_filters() -> None:
    filters = RefusalFilters.of({"code": ["NO_INVENTORY"], "reference": ["a&b"], "page": ["2"]})
    pages = paging(filters, total=120, shown=PAGE_SIZE)
    assert (pages.pages, pages.first, pages.last) == (3, 51, 100)
    assert pages.previous == "?code=NO_INVENTORY&reference=a%26b&page=1"
    assert pages.next == "?code=NO_INVENTORY&reference=a%26b&page=3"
    last = paging(RefusalFilters.of({"page": ["3"]}), total=120, shown=20)
    assert (last.first, last.last, last.next) == (101, 120, None)
    empty = paging(RefusalFilters.of({}), total=0, shown=0)
    assert (empty.pages, empty.first, empty.previous, empty.next) == (1, 0, None, None)


def test_the_replay_form_becomes_the_replay_request() -> None:
    form = ReplayForm.of(
        {
            "code": ["NO_INVENTORY"],
            "references": ["call-1, call-2\ncall-3"],
            "since": ["2026-05-01"],
            "until": ["2026-05-02T12:00:00+02:00"],
            "limit": ["100"],
            "max_replays": ["3"],
            "retryable_only": ["on"],
        },
        submitted=True,
    )
    read = read_replay_form(form)
    assert read.problems == []
    assert read.request == ReplayRequest(
        codes=frozenset({"NO_INVENTORY"}),
        references=frozenset({"call-1", "call-2", "call-3"}),
        since=datetime(2026, 5, 1, tzinfo=UTC),
        until=datetime(2026, 5, 2, 10, tzinfo=UTC),
        limit=100,
        max_replays=3,
        retryable_only=True,
    )


def test_an_unticked_box_sends_nothing_and_means_all() -> None:
    submitted = ReplayForm.of({"max_replays": ["5"]}, submitted=True)
    assert not submitted.retryable_only
    assert ReplayForm.of({}, submitted=False).retryable_only  # the form's default


def test_every_problem_of_the_form_at_once() -> None:
    form = ReplayForm.of(
        {"since": ["tomorrow"], "limit": ["0"], "max_replays": ["many"]}, submitted=True
    )
    read = read_replay_form(form)
    assert read.request is None
    assert len(read.problems) == 3
    assert read.problems[0].startswith("since: 'tomorrow' is not a date-time")


@pytest.mark.parametrize("number", ["\N{SUPERSCRIPT TWO}", "\u0663", "9" * 23, "1e3", " 5 5"])
def test_a_count_that_is_no_plain_number_is_a_problem_of_the_form(number: str) -> None:
    form = ReplayForm.of({"limit": [number], "max_replays": [number]}, submitted=True)
    read = read_replay_form(form)
    assert read.request is None
    assert [p.split(":")[0] for p in read.problems] == ["limit", "max replays"]


def test_the_largest_plain_numbers_are_taken() -> None:
    form = ReplayForm.of({"limit": ["9" * 18], "max_replays": ["0"]}, submitted=False)
    assert read_replay_form(form).problems == ["--max-replays must be at least 1"]


def test_more_references_than_a_replay_takes_at_once_are_a_problem() -> None:
    many = " ".join(f"r{i}" for i in range(MAX_REFERENCES + 1))
    read = read_replay_form(ReplayForm.of({"references": [many]}, submitted=True))
    assert read.request is None
    assert read.problems == [
        f"references: {MAX_REFERENCES + 1} given; at most {MAX_REFERENCES} at once: "
        "replay them in parts"
    ]
    just = " ".join(f"r{i}" for i in range(MAX_REFERENCES))
    assert read_replay_form(ReplayForm.of({"references": [just]}, submitted=True)).problems == []


def test_references_too_long_for_the_forms_link_are_a_problem() -> None:
    # Fewer than MAX_REFERENCES, but the "Change the filters" link would pass the
    # server's limit on a request line.
    long = "\n".join(f"{i:04d}-" + "x" * 90 for i in range(200))
    form = ReplayForm.of({"references": [long]}, submitted=True)
    assert len(form.link()) > MAX_LINK_CHARS
    read = read_replay_form(form)
    assert read.request is None
    assert read.problems == [
        f"references: these 200 are too long to carry at once (at most {MAX_LINK_CHARS} "
        "characters in all): replay them in parts"
    ]


def test_more_codes_than_there_are_is_a_problem() -> None:
    codes = [f"CODE_{i}" for i in range(500)]
    read = read_replay_form(ReplayForm.of({"code": codes}, submitted=True))
    assert read.request is None
    assert read.problems[0].startswith("code: 500 codes given; there are ")
    assert len(read.problems) == 1  # not the 500 unknown codes named one by one


def test_the_requests_own_problems_are_the_forms() -> None:
    form = ReplayForm.of(
        {"code": ["SCHEMA_VIOLATION"], "max_replays": ["0"], "retryable_only": ["on"]},
        submitted=True,
    )
    read = read_replay_form(form)
    assert read.request is None
    assert any("not retryable" in p for p in read.problems)
    assert any("--max-replays must be at least 1" in p for p in read.problems)


def test_a_request_fills_the_form_again() -> None:
    request = ReplayRequest(
        codes=frozenset({"NO_INVENTORY", "UNKNOWN_PRODUCT"}),
        references=frozenset({"b", "a"}),
        since=datetime(2026, 5, 1, tzinfo=UTC),
        limit=7,
        max_replays=2,
        retryable_only=False,
    )
    form = ReplayForm.of_request(request)
    assert form.since == "2026-05-01T00:00:00Z"
    link = form.link()
    assert link == (
        "?code=NO_INVENTORY&code=UNKNOWN_PRODUCT&references=a+b&since=2026-05-01T00%3A00%3A00Z"
        "&limit=7&max_replays=2&filled=1"
    )
    again = ReplayForm.of(parse_qs(link[1:]), submitted=True)
    assert read_replay_form(again).request == request
