"""The worker's reports for the console: outcome counts per minute taken from
`usage_ingest_events_total`, kept across failed reports, never counted twice; the
heartbeat's readiness; failures logged without flooding the log."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from structlog.testing import capture_logs

from tests.support.waiting import eventually
from usage_ingest.errors import StoreRefusedData, StoreUnavailable
from usage_ingest.store.worker_reports import WorkerIdentity, WorkerReport
from usage_ingest.worker.metrics import WorkerMetrics
from usage_ingest.worker.reports import (
    WARN_EVERY_S,
    FailureLog,
    MinuteTally,
    WorkerReporter,
    minute_of,
    next_tick,
)

# 10:00:00 UTC on a fixed day, as epoch seconds.
T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC).timestamp()
WORKER = WorkerIdentity("host:1:abc", "host", 1, "g", datetime(2026, 11, 22, tzinfo=UTC))


def at(minute: int) -> datetime:
    return datetime(2026, 11, 22, 10, minute, tzinfo=UTC)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeStore:
    """Stores reports as `worker_outcome_counts` does: a count set per worker and minute.
    `fail` makes the next writes raise, before storing or (`after_storing`) after."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, datetime, str, str], int] = {}
        self.reports: list[WorkerReport] = []
        self.fail: Exception | None = None
        self.after_storing = False
        self.prunes = 0

    async def report_worker(self, report: WorkerReport) -> None:
        if self.fail is not None and not self.after_storing:
            raise self.fail
        self.reports.append(report)
        for c in report.counts:
            self.rows[(report.worker.worker_id, c.minute, c.status, c.code)] = c.count
        if self.fail is not None:
            raise self.fail

    async def prune_worker_reports(self) -> tuple[int, int]:
        self.prunes += 1
        return 0, 0

    def per_minute(self) -> dict[tuple[datetime, str, str], int]:
        return {(minute, s, c): n for (_, minute, s, c), n in self.rows.items()}


def reporter(store: FakeStore, clock: Clock, metrics: WorkerMetrics) -> WorkerReporter:
    return WorkerReporter(store, metrics, WORKER, 10.0, clock=clock)


def count(metrics: WorkerMetrics, status: str, code: str = "", n: int = 1) -> None:
    """As the pipeline counts a committed batch."""
    metrics.events.labels(status, code).inc(n)


# --- the tally -------------------------------------------------------------------


def test_a_sample_counts_what_the_totals_gained_in_the_minute_its_window_started() -> None:
    tally = MinuteTally(T0)
    tally.sample({("created", ""): 3}, T0 + 10)
    tally.sample({("created", ""): 5, ("rejected", "NO_INVENTORY"): 1}, T0 + 60)
    tally.sample({("created", ""): 9, ("rejected", "NO_INVENTORY"): 1}, T0 + 70)
    assert [(c.minute, c.status, c.code, c.count) for c in tally.counts()] == [
        (at(0), "created", "", 5),
        (at(0), "rejected", "NO_INVENTORY", 1),
        (at(1), "created", "", 4),
    ]


def test_reported_minutes_that_are_over_are_not_written_again() -> None:
    tally = MinuteTally(T0)
    tally.sample({("created", ""): 3}, T0 + 50)
    tally.reported()
    assert [c.count for c in tally.counts()] == [3], "the minute is not over yet"
    tally.sample({("created", ""): 4}, T0 + 60)
    tally.sample({("created", ""): 6}, T0 + 70)
    tally.reported()
    assert [(c.minute, c.count) for c in tally.counts()] == [(at(1), 2)]


def test_minutes_older_than_the_store_keeps_are_forgotten() -> None:
    tally = MinuteTally(T0)
    tally.sample({("duplicate", ""): 2}, T0 + 60)
    tally.sample({("duplicate", ""): 3}, T0 + 120)
    tally.forget_before(at(1))
    assert [(c.minute, c.count) for c in tally.counts()] == [(at(1), 1)]


def test_ticks_fall_on_the_interval_and_on_every_minute() -> None:
    assert next_tick(T0 + 3, 10) == T0 + 10
    assert next_tick(T0 + 10, 10) == T0 + 20
    # Seconds since the epoch: multiples of 7 are 56 and 63, of 60 is 60.
    assert next_tick(55, 7) == 56
    assert next_tick(57, 7) == 60, "a minute boundary comes first"
    assert minute_of(T0 + 59.9) == at(0)


# --- the reporter ------------------------------------------------------------------


async def test_stored_counts_follow_the_events_counter_exactly() -> None:
    store, clock, metrics = FakeStore(), Clock(T0), WorkerMetrics()
    reports = reporter(store, clock, metrics)
    count(metrics, "created", n=4)
    count(metrics, "rejected", "UNKNOWN_PRODUCT", 2)
    clock.now = T0 + 10
    assert await reports.report()
    count(metrics, "created")
    count(metrics, "duplicate", n=3)
    clock.now = T0 + 60
    assert await reports.report()
    count(metrics, "created", n=2)
    clock.now = T0 + 70
    assert await reports.report()
    assert store.per_minute() == {
        (at(0), "created", ""): 5,
        (at(0), "duplicate", ""): 3,
        (at(0), "rejected", "UNKNOWN_PRODUCT"): 2,
        (at(1), "created", ""): 2,
    }
    assert sum(store.per_minute().values()) == sum(metrics.outcome_totals().values())


async def test_counts_of_failed_reports_go_with_the_next_one() -> None:
    store, clock, metrics = FakeStore(), Clock(T0), WorkerMetrics()
    reports = reporter(store, clock, metrics)
    store.fail = StoreUnavailable("report worker: connection refused")
    count(metrics, "created", n=2)
    clock.now = T0 + 50
    assert not await reports.report()
    count(metrics, "created", n=3)
    clock.now = T0 + 60
    assert not await reports.report()
    count(metrics, "rejected", "NO_CONTRACT")
    clock.now = T0 + 70
    assert store.rows == {}
    store.fail = None
    assert await reports.report()
    assert store.per_minute() == {(at(0), "created", ""): 5, (at(1), "rejected", "NO_CONTRACT"): 1}


async def test_a_report_stored_but_not_acknowledged_counts_nothing_twice() -> None:
    store, clock, metrics = FakeStore(), Clock(T0), WorkerMetrics()
    reports = reporter(store, clock, metrics)
    count(metrics, "created", n=2)
    store.fail, store.after_storing = TimeoutError(), True
    clock.now = T0 + 10
    assert not await reports.report()
    store.fail = None
    count(metrics, "created")
    clock.now = T0 + 20
    assert await reports.report()
    assert store.per_minute() == {(at(0), "created", ""): 3}


async def test_a_refused_or_hanging_report_does_not_raise() -> None:
    store, clock, metrics = FakeStore(), Clock(T0), WorkerMetrics()
    reports = reporter(store, clock, metrics)
    store.fail = StoreRefusedData('report worker: relation "worker_heartbeats" does not exist')
    assert not await reports.report()

    class Hanging(FakeStore):
        async def report_worker(self, report: WorkerReport) -> None:
            await asyncio.Event().wait()

    assert not await reporter(Hanging(), clock, metrics).report(timeout_s=0.01)


async def test_a_defect_in_a_report_is_logged_and_costs_the_worker_nothing() -> None:
    store, clock, metrics = FakeStore(), Clock(T0), WorkerMetrics()
    reports = reporter(store, clock, metrics)
    store.fail = KeyError("a defect, not a database error")
    with capture_logs() as logs:
        assert not await reports.report()
        assert not await reports.last_report()
    assert [line["event"] for line in logs] == ["worker_report_defect"] * 2
    store.fail = None
    assert await reports.report()  # and the next one goes through


async def test_the_heartbeat_carries_the_last_readiness_check() -> None:
    store, clock, metrics = FakeStore(), Clock(T0), WorkerMetrics()
    reports = reporter(store, clock, metrics)
    await reports.report()
    metrics.note_readiness({"group": True, "database": True, "broker": True})
    await reports.report()
    metrics.note_readiness({"group": True, "database": False, "broker": True})
    await reports.report()
    await reports.last_report()
    beats = [(r.ready, r.checks, r.stopping) for r in store.reports]
    assert beats == [
        (False, {}, False),
        (True, {"group": True, "database": True, "broker": True}, False),
        (False, {"group": True, "database": False, "broker": True}, False),
        (False, {"group": True, "database": False, "broker": True}, True),
    ]
    assert {r.interval_s for r in store.reports} == {10.0}


async def test_reports_run_on_their_own_and_prune_once_in_a_while() -> None:
    store, metrics = FakeStore(), WorkerMetrics()
    reports = WorkerReporter(store, metrics, WORKER, 0.01)
    running = asyncio.create_task(reports.run())
    try:
        await eventually(lambda: len(store.reports) >= 3, 10, "three reports")
    finally:
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
    assert store.prunes == 1


def test_failures_are_logged_once_then_at_most_every_few_minutes() -> None:
    clock = Clock(0.0)
    failures = FailureLog(clock)
    with capture_logs() as logs:
        for second in range(0, int(WARN_EVERY_S) + 30, 10):
            clock.now = float(second)
            failures.failed("report", StoreUnavailable("connection refused"))
        failures.succeeded()
        failures.succeeded()
    events = [(e["event"], e["log_level"], e.get("failures")) for e in logs]
    assert events == [
        ("worker_report_failed", "warning", 1),
        ("worker_report_failed", "warning", int(WARN_EVERY_S) // 10 + 1),
        ("worker_report_recovered", "info", int(WARN_EVERY_S) // 10 + 3),
    ]
