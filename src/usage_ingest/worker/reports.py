"""The worker reports itself into Postgres for the operations console: every report
interval, its last readiness check (a heartbeat) and its outcomes per minute.

The console runs in another process (`usage-ingest api`) that cannot see this worker's
Prometheus counters; these reports are how it learns what the workers do. The reporter
is a task of its own beside the batch loop: it reads `usage_ingest_events_total` and the
last readiness check from `WorkerMetrics` and touches nothing of the pipeline, so a
report that fails (the database away) costs the pipeline nothing. Its counts are kept
and go with the next report.

A count written is the minute's running total for this worker (not an increment): a
report whose outcome is unknown (a timeout after the commit) is written again with the
same or a larger total, and nothing is counted twice.
"""

from __future__ import annotations

import asyncio
import math
import os
import secrets
import socket
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Protocol

import structlog

from usage_ingest.errors import UsageIngestError
from usage_ingest.store.worker_reports import (
    COUNTS_KEPT_S,
    OutcomeCount,
    WorkerIdentity,
    WorkerReport,
)
from usage_ingest.worker.metrics import WorkerMetrics

log = structlog.get_logger("usage_ingest.worker.reports")

OutcomeKey = tuple[str, str]  # (status, code), the labels of usage_ingest_events_total

# Old reports are deleted by the workers themselves, each at most this often.
PRUNE_EVERY_S = 600.0
# While reports keep failing, one warning line at most this often.
WARN_EVERY_S = 300.0
# The last report of a stopping worker does not hold up its stop longer than this.
LAST_REPORT_TIMEOUT_S = 5.0


class ReportWriter(Protocol):
    """Where reports go: `Store` in the worker, a fake in unit tests."""

    async def report_worker(self, report: WorkerReport) -> None: ...

    async def prune_worker_reports(self) -> tuple[int, int]: ...


def this_worker(group_id: str) -> WorkerIdentity:
    """This process, under an id no other process has (a pid is reused, the random part
    is not); started now."""
    host, pid = socket.gethostname(), os.getpid()
    return WorkerIdentity(
        f"{host}:{pid}:{secrets.token_hex(3)}", host, pid, group_id, datetime.now(UTC)
    )


def minute_of(epoch_s: float) -> datetime:
    """The start of the UTC minute holding `epoch_s`."""
    return datetime.fromtimestamp(epoch_s - epoch_s % 60, UTC)


def next_tick(now_s: float, interval_s: float) -> float:
    """When to report next: the next multiple of the interval on the wall clock, or the
    next minute if sooner, so that no report's window spans two minutes."""
    tick = (math.floor(now_s / interval_s) + 1) * interval_s
    minute = (math.floor(now_s / 60) + 1) * 60
    return min(tick, minute)


class MinuteTally:
    """Outcomes per minute, from samples of the running totals of
    `usage_ingest_events_total`: what a sample adds to the totals is counted in the minute
    its window (since the sample before) started in. Minutes are held until a report
    carried them after they ended."""

    def __init__(self, started_s: float) -> None:
        self._since_s = started_s
        self._seen: dict[OutcomeKey, int] = {}
        self._minutes: dict[datetime, dict[OutcomeKey, int]] = {}

    def sample(self, totals: Mapping[OutcomeKey, int], now_s: float) -> None:
        minute = minute_of(self._since_s)
        for key, total in totals.items():
            added = total - self._seen.get(key, 0)
            if added > 0:
                counts = self._minutes.setdefault(minute, {})
                counts[key] = counts.get(key, 0) + added
        self._seen.update(totals)
        self._since_s = now_s

    def counts(self) -> list[OutcomeCount]:
        """Every minute held, oldest first: each one's totals so far."""
        return [
            OutcomeCount(minute, status, code, count)
            for minute, counts in sorted(self._minutes.items())
            for (status, code), count in sorted(counts.items())
        ]

    def reported(self) -> None:
        """The counts taken by the last sample are stored: the minutes before the current
        one are over and need not be written again."""
        current = minute_of(self._since_s)
        for minute in [m for m in self._minutes if m < current]:
            del self._minutes[minute]

    def forget_before(self, cutoff: datetime) -> None:
        """Minutes older than what the store keeps are not worth holding (a long outage)."""
        for minute in [m for m in self._minutes if m < cutoff]:
            del self._minutes[minute]


class FailureLog:
    """One warning line when reports start failing, then at most one every
    `WARN_EVERY_S` while they go on; one info line when they succeed again."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._failures = 0
        self._warned_at: float | None = None

    def failed(self, action: str, exc: BaseException) -> None:
        self._failures += 1
        now = self._clock()
        if self._warned_at is None or now - self._warned_at >= WARN_EVERY_S:
            self._warned_at = now
            log.warning(
                "worker_report_failed",
                action=action,
                error=str(exc) or type(exc).__name__,
                failures=self._failures,
            )

    def succeeded(self) -> None:
        if self._failures:
            log.info("worker_report_recovered", failures=self._failures)
        self._failures = 0
        self._warned_at = None


class WorkerReporter:
    """Writes this worker's reports: `run` every interval, `last_report` when it stops."""

    def __init__(
        self,
        writer: ReportWriter,
        metrics: WorkerMetrics,
        worker: WorkerIdentity,
        interval_s: float,
        *,
        clock: Callable[[], float] = time.time,
        failures: FailureLog | None = None,
    ) -> None:
        self._writer = writer
        self._metrics = metrics
        self._worker = worker
        self._interval_s = interval_s
        self._clock = clock
        self._failures = failures or FailureLog()
        self._tally = MinuteTally(clock())
        self._pruned_at: float | None = None

    async def run(self) -> None:
        """Report on every tick until cancelled; a failed report is retried on the next."""
        while True:
            now = self._clock()
            await asyncio.sleep(next_tick(now, self._interval_s) - now)
            if await self.report(timeout_s=self._interval_s):
                await self._maybe_prune()

    async def last_report(self) -> bool:
        """The report of a worker that stops: its last counts, and stopped_at."""
        return await self.report(stopping=True, timeout_s=LAST_REPORT_TIMEOUT_S)

    async def report(self, *, stopping: bool = False, timeout_s: float | None = None) -> bool:
        """Sample the counters and write a report; whether it was stored. Never raises
        but for a cancellation: the reports are a side task, and a defect in them must
        cost the worker neither its batches nor its stop."""
        try:
            return await self._report(stopping, timeout_s)
        except Exception:
            log.exception("worker_report_defect")
            return False

    async def _report(self, stopping: bool, timeout_s: float | None) -> bool:
        now = self._clock()
        self._tally.sample(self._metrics.outcome_totals(), now)
        self._tally.forget_before(minute_of(now - COUNTS_KEPT_S))
        checks = dict(self._metrics.readiness_checks or {})
        report = WorkerReport(
            self._worker,
            ready=bool(checks) and all(checks.values()) and not stopping,
            checks=checks,
            interval_s=self._interval_s,
            counts=self._tally.counts(),
            stopping=stopping,
        )
        try:
            # asyncio.timeout, not wait_for: in 3.11 wait_for can swallow a cancellation
            # that comes as the write ends, and the worker's stop would wait for ever.
            async with asyncio.timeout(timeout_s):
                await self._writer.report_worker(report)
        except (UsageIngestError, TimeoutError) as exc:
            self._failures.failed("report", exc)
            return False
        self._tally.reported()
        self._failures.succeeded()
        return True

    async def _maybe_prune(self) -> None:
        now = self._clock()
        if self._pruned_at is not None and now - self._pruned_at < PRUNE_EVERY_S:
            return
        self._pruned_at = now
        try:
            async with asyncio.timeout(self._interval_s):
                counts, heartbeats = await self._writer.prune_worker_reports()
        except (UsageIngestError, TimeoutError) as exc:
            self._failures.failed("prune", exc)
            return
        if counts or heartbeats:
            log.info("worker_reports_pruned", counts=counts, heartbeats=heartbeats)
