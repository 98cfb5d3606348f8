"""The geometry of the overview's outcome chart, drawn on the server as SVG."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from usage_ingest.api.console import chart
from usage_ingest.store.worker_reports import OutcomeCount

NOW = datetime(2026, 5, 1, 10, 30, 42, tzinfo=UTC)
THIS_MINUTE = NOW.replace(second=0)


def count(minutes_ago: int, status: str, n: int, code: str = "") -> OutcomeCount:
    return OutcomeCount(THIS_MINUTE - timedelta(minutes=minutes_ago), status, code, n)


@pytest.mark.parametrize(
    ("value", "ceiling"),
    [(0, 1), (1, 1), (2, 2), (3, 5), (7, 10), (10, 10), (11, 20), (4999, 5000)],
)
def test_the_scale_is_a_round_number_at_or_above_the_highest_bar(value: int, ceiling: int) -> None:
    assert chart.nice_ceiling(value) == ceiling


def test_one_bar_per_minute_of_the_hour_the_last_one_now() -> None:
    drawn = chart.outcome_chart([], NOW)
    assert len(drawn.bars) == 60
    assert drawn.bars[-1].minute == THIS_MINUTE
    assert drawn.bars[0].minute == THIS_MINUTE - timedelta(minutes=59)
    xs = [bar.x for bar in drawn.bars]
    assert xs == sorted(xs)
    assert xs[0] == chart.LEFT
    assert drawn.bars[-1].x + drawn.bars[-1].width <= chart.WIDTH
    assert all(s.height == 0 for bar in drawn.bars for s in bar.segments)
    assert drawn.scale == 1


def test_the_segments_stack_created_duplicate_rejected_from_the_baseline() -> None:
    counts = [
        count(0, "created", 30),
        count(0, "duplicate", 10),
        count(0, "rejected", 5, "NO_INVENTORY"),
        count(0, "rejected", 5, "UNKNOWN_PRODUCT"),
        count(1, "created", 20),
    ]
    drawn = chart.outcome_chart(counts, NOW)
    assert drawn.scale == 50
    created, duplicate, rejected = drawn.bars[-1].segments
    assert (created.status, duplicate.status, rejected.status) == chart.STATUSES
    plot = chart.HEIGHT - chart.BOTTOM - chart.TOP
    assert created.y + created.height == pytest.approx(drawn.baseline)
    assert duplicate.y + duplicate.height == pytest.approx(created.y)
    assert rejected.y + rejected.height == pytest.approx(duplicate.y)
    assert (created.height, duplicate.height, rejected.height) == pytest.approx(
        (plot * 30 / 50, plot * 10 / 50, plot * 10 / 50)
    )
    assert rejected.y == pytest.approx(chart.TOP)  # the highest bar reaches the top
    assert drawn.bars[-1].title == "10:30: 30 created, 10 duplicate, 10 rejected"
    assert drawn.bars[-2].segments[0].height == pytest.approx(plot * 20 / 50)
    assert drawn.totals == {"created": 50, "duplicate": 10, "rejected": 10}


def test_refusals_by_code_widest_first_scaled_to_the_widest() -> None:
    counts = [
        count(3, "rejected", 2, "UNKNOWN_PRODUCT"),
        count(2, "rejected", 6, "NO_INVENTORY"),
        count(1, "rejected", 2, "UNKNOWN_PRODUCT"),
        count(1, "created", 100),
    ]
    by_code = chart.outcome_chart(counts, NOW).by_code
    assert [(c.code, c.count) for c in by_code] == [("NO_INVENTORY", 6), ("UNKNOWN_PRODUCT", 4)]
    assert by_code[0].width == chart.WIDTH - chart.LEFT
    assert by_code[1].width == pytest.approx((chart.WIDTH - chart.LEFT) * 4 / 6, abs=0.01)


def test_counts_outside_the_hour_are_left_out() -> None:
    drawn = chart.outcome_chart([count(60, "created", 9), count(-1, "created", 9)], NOW)
    assert drawn.totals["created"] == 0


def test_the_x_axis_names_every_tenth_minute() -> None:
    labels = [tick.label for tick in chart.outcome_chart([], NOW).x_ticks]
    assert labels == ["09:40", "09:50", "10:00", "10:10", "10:20", "10:30"]


def test_the_rejection_ratio_of_a_window() -> None:
    counts = [count(12, "rejected", 50), count(5, "created", 90), count(0, "rejected", 10)]
    assert chart.rejection_ratio(counts, NOW - timedelta(minutes=10)) == pytest.approx(0.1)
    assert chart.rejection_ratio([count(30, "created", 1)], NOW - timedelta(minutes=10)) is None
