"""Offset lag, time lag and thresholds of `usage-ingest lag`."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from usage_ingest.kafka.admin import GroupDescription, PartitionPosition
from usage_ingest.lag import breaches, build_report, partition_lag

NOW_MS = 1_800_000_000_000
GROUP = GroupDescription("usage-ingest", "Stable", ("worker-1@10.0.0.1",))


def position(
    committed: int | None,
    log_end: int,
    oldest_ms: int | None = None,
    partition: int = 0,
    log_start: int = 0,
) -> PartitionPosition:
    return PartitionPosition("usage.events", partition, committed, log_start, log_end, oldest_ms)


def test_offset_lag_counts_from_the_committed_offset() -> None:
    assert partition_lag(position(40, 100), NOW_MS).offset_lag == 60


def test_a_group_that_never_committed_lags_from_the_log_start() -> None:
    assert partition_lag(position(None, 100, log_start=30), NOW_MS).offset_lag == 70


def test_time_lag_is_the_age_of_the_oldest_unprocessed_record() -> None:
    lag = partition_lag(position(40, 100, oldest_ms=NOW_MS - 90_500), NOW_MS)
    assert lag.time_lag_s == pytest.approx(90.5)


def test_caught_up_means_no_time_lag_whatever_the_timestamps() -> None:
    assert partition_lag(position(100, 100, oldest_ms=NOW_MS - 90_000), NOW_MS).time_lag_s == 0


def test_totals_per_topic_sum_offsets_and_take_the_worst_time_lag() -> None:
    report = build_report(
        GROUP,
        [
            position(0, 10, NOW_MS - 5_000, partition=0),
            position(3, 4, NOW_MS - 20_000, partition=1),
            position(7, 7, None, partition=2),
        ],
        NOW_MS,
    )
    [topic] = report.topics
    assert (topic.offset_lag, topic.time_lag_s) == (11, 20.0)
    assert report.as_json()["offsetLag"] == 11
    assert report.as_json()["partitions"][1] == {
        "topic": "usage.events",
        "partition": 1,
        "committed": 3,
        "logEnd": 4,
        "offsetLag": 1,
        "timeLagSeconds": 20.0,
    }


@pytest.mark.parametrize(
    ("max_lag", "max_time_lag", "exceeded"),
    [(None, None, 0), (11, None, 0), (10, None, 1), (None, 20.0, 0), (None, 19.9, 1), (0, 0, 2)],
)
def test_thresholds(max_lag: int | None, max_time_lag: float | None, exceeded: int) -> None:
    report = build_report(
        GROUP, [position(0, 10, NOW_MS - 5_000), position(3, 4, NOW_MS - 20_000, 1)], NOW_MS
    )
    assert len(breaches(report, max_lag, max_time_lag)) == exceeded


def test_table_shows_state_members_and_each_partition() -> None:
    from usage_ingest.lag import render

    out = io.StringIO()
    Console(file=out, width=120).print(render(build_report(GROUP, [position(1, 5)], NOW_MS)))
    text = out.getvalue()
    assert "Stable" in text
    assert "worker-1@10.0.0.1" in text
    assert "usage.events" in text
    assert "total" in text
