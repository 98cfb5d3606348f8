"""What every worker reports of itself into Postgres, for the operations console:
its readiness (a heartbeat) and its outcome counts per minute.

INTERFACE STUB: the bodies are being written; the read side's shapes are settled.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from usage_ingest.store.connection import PooledStore


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


class WorkerReportStore(PooledStore):
    async def worker_statuses(self) -> list[WorkerStatus]:
        """Every worker that reported in the last hour, newest report first."""
        raise NotImplementedError

    async def outcome_counts(self, since: datetime) -> list[OutcomeCount]:
        """Outcome counts of the minutes from `since` on, oldest first."""
        raise NotImplementedError
