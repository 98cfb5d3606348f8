"""What every worker reports of itself into Postgres, for the operations console:
its readiness (a heartbeat) and its outcome counts per minute.

The console (`usage-ingest api`) neither knows where the workers run nor sees their
Prometheus counters, so each worker writes its own rows (`worker.reports`), every
report interval, and the console reads them here. Nothing here is on a batch's path.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from usage_ingest.store.connection import QUERIES, PooledStore, _translated_errors

# The overview lists the workers that reported within this time.
LISTED_FOR_S = 3600.0
# Outcome counts are kept this long (the chart shows the last hour) ...
COUNTS_KEPT_S = 2 * 3600.0
# ... and a heartbeat not renewed (a worker stopped or gone) this long.
HEARTBEATS_KEPT_S = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    """One worker process, as it last reported itself."""

    worker_id: str
    host: str
    pid: int
    ready: bool
    checks: dict[str, bool]  # group, database, broker: as its /readyz
    started_at: datetime
    reported_at: datetime
    stale: bool  # no report for three report intervals: gone or stuck


@dataclass(frozen=True, slots=True)
class OutcomeCount:
    """Outcomes of one minute, summed over the workers."""

    minute: datetime  # UTC, the start of the minute
    status: str  # created, duplicate or rejected
    code: str  # the error code of a rejection, as usage_ingest_events_total has it; "" else
    count: int


@dataclass(frozen=True, slots=True)
class WorkerIdentity:
    """Who reports: one worker process, for as long as it runs."""

    worker_id: str  # host:pid:random, new for every process
    host: str
    pid: int
    group_id: str
    started_at: datetime


@dataclass(frozen=True, slots=True)
class WorkerReport:
    """One report of one worker: its heartbeat, and its counts of the minutes it holds
    (each the minute's running total for this worker, not an increment)."""

    worker: WorkerIdentity
    ready: bool
    checks: dict[str, bool]
    interval_s: float
    counts: Sequence[OutcomeCount]
    stopping: bool = False  # the last report: sets stopped_at


def _worker_status(row: asyncpg.Record) -> WorkerStatus:
    checks = json.loads(row["checks"])
    return WorkerStatus(
        row["worker_id"],
        row["host"],
        row["pid"],
        row["ready"],
        {str(name): bool(ok) for name, ok in checks.items()},
        row["started_at"],
        row["reported_at"],
        row["stale"],
    )


class WorkerReportStore(PooledStore):
    """The `worker_heartbeats` and `worker_outcome_counts` tables."""

    async def worker_statuses(self) -> list[WorkerStatus]:
        """Every worker that reported in the last hour and has not stopped, newest report
        first. A worker that stopped says so in its last report and is no longer listed;
        one that died without a word stays listed, stale, until the hour is over."""
        async with _translated_errors("read worker statuses"):
            rows = await self._pool.fetch(QUERIES["worker_statuses"], LISTED_FOR_S)
        return [_worker_status(row) for row in rows]

    async def outcome_counts(self, since: datetime) -> list[OutcomeCount]:
        """Outcome counts of the minutes from `since` on, oldest first.

        The minute holding `since` is included; within a minute, by status and code."""
        async with _translated_errors("read outcome counts"):
            rows = await self._pool.fetch(QUERIES["outcome_counts"], since)
        return [OutcomeCount(r["minute"], r["status"], r["code"], r["count"]) for r in rows]

    async def report_worker(self, report: WorkerReport) -> None:
        """Write one report: the heartbeat and every count it holds, in one statement."""
        worker, counts = report.worker, report.counts
        async with _translated_errors("report worker"):
            await self._pool.fetchrow(
                QUERIES["report_worker"],
                worker.worker_id,
                worker.host,
                worker.pid,
                worker.group_id,
                report.ready,
                json.dumps(report.checks),
                worker.started_at,
                report.interval_s,
                report.stopping,
                [c.minute for c in counts],
                [c.status for c in counts],
                [c.code for c in counts],
                [c.count for c in counts],
            )

    async def prune_worker_reports(
        self, counts_kept_s: float = COUNTS_KEPT_S, heartbeats_kept_s: float = HEARTBEATS_KEPT_S
    ) -> tuple[int, int]:
        """Delete counts older than `counts_kept_s` and heartbeats not renewed for
        `heartbeats_kept_s`; returns how many of each went."""
        async with _translated_errors("prune worker reports"):
            row = await self._pool.fetchrow(
                QUERIES["prune_worker_reports"], counts_kept_s, heartbeats_kept_s
            )
        assert row is not None
        return int(row["counts"]), int(row["heartbeats"])
