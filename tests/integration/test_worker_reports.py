"""What the workers report of themselves into Postgres for the console's overview, read
back through the store as the console reads it: a real worker, broker and Postgres."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from structlog.testing import capture_logs

from tests.integration.test_processes import LogFile, running, wait_until
from tests.support.broker import produce_values
from tests.support.cli import process_env
from tests.support.database import DEMO_REFERENCE, count_usages
from tests.support.waiting import eventually
from usage_ingest.domain.reference import read_reference_file
from usage_ingest.settings import Settings
from usage_ingest.store.migrations import migration_files
from usage_ingest.store.store import Store, open_store
from usage_ingest.store.worker_reports import WorkerStatus
from usage_ingest.worker.metrics import Counters
from usage_ingest.worker.runtime import run_worker

# Short enough for a test; a worker reports every 10 s.
INTERVAL_S = 0.5


def event(reference: str, product: str = "demo.usage") -> bytes:
    return json.dumps(
        {
            "externalReference": reference,
            "contractId": 1,
            "productIdent": product,
            "startDate": "2026-11-22T10:00:00Z",
            "endDate": "2026-11-22T10:05:00Z",
            "unitQuantities": [{"unit": "minute", "quantity": 1}],
        }
    ).encode()


# 6 new usages, 2 of them sent again unchanged, 3 for an unknown product, 1 unreadable.
WORKLOAD: list[bytes | None] = (
    [event(f"rep-{i}") for i in range(6)]
    + [event("rep-0"), event("rep-1")]
    + [event(f"rep-unknown-{i}", product="no.such.product") for i in range(3)]
    + [b"{not json"]
)
EXPECTED = {
    ("created", ""): 6,
    ("duplicate", ""): 2,
    ("rejected", "UNKNOWN_PRODUCT"): 3,
    ("rejected", "MALFORMED_MESSAGE"): 1,
}


class InLoopWorker:
    """`run_worker` in this loop, reporting every `INTERVAL_S`."""

    def __init__(self, settings: Settings) -> None:
        self.stop_event = asyncio.Event()
        self.task = asyncio.create_task(
            run_worker(settings, self.stop_event, report_interval_s=INTERVAL_S)
        )

    async def stop(self) -> Counters:
        self.stop_event.set()
        return await asyncio.wait_for(self.task, 30)

    async def abandon(self) -> None:
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[Store]:
    store = await open_store(settings)
    await store.load_reference(read_reference_file(DEMO_REFERENCE))
    yield store
    await store.close()


@pytest.fixture
async def workers() -> AsyncIterator[list[InLoopWorker]]:
    started: list[InLoopWorker] = []
    yield started
    for worker in started:
        if not worker.task.done():
            await worker.abandon()


async def summed(store: Store, since: datetime) -> dict[tuple[str, str], int]:
    totals: Counter[tuple[str, str]] = Counter()
    for row in await store.outcome_counts(since):
        totals[(row.status, row.code)] += row.count
    return dict(totals)


async def counts_are(store: Store, since: datetime, expected: dict[tuple[str, str], int]) -> bool:
    return await summed(store, since) == expected


async def only_worker(store: Store) -> WorkerStatus | None:
    statuses = await store.worker_statuses()
    assert len(statuses) <= 1, statuses
    return statuses[0] if statuses else None


async def test_a_worker_reports_itself_ready_and_its_outcomes_then_that_it_stopped(
    settings: Settings, store: Store, db: asyncpg.Connection, workers: list[InLoopWorker]
) -> None:
    since = datetime.now(UTC) - timedelta(minutes=1)
    await produce_values(settings.kafka_bootstrap_servers, settings.topic_events, WORKLOAD)
    workers.append(worker := InLoopWorker(settings))

    async def reported_ready() -> bool:
        status = await only_worker(store)
        return status is not None and status.ready

    await eventually(reported_ready, 30, "the worker to report itself ready")
    await eventually(lambda: counts_are(store, since, EXPECTED), 30, "the outcome counts")
    status = await only_worker(store)
    assert status is not None
    assert status.checks == {"group": True, "database": True, "broker": True}
    assert (status.host, status.pid) == (socket.gethostname(), os.getpid())
    assert status.worker_id.startswith(f"{status.host}:{status.pid}:")
    assert not status.stale
    assert status.started_at <= status.reported_at
    rows = await store.outcome_counts(since)
    assert rows == sorted(rows, key=lambda r: (r.minute, r.status, r.code))
    assert all(r.minute.second == 0 and r.minute.microsecond == 0 for r in rows)

    counters = await worker.stop()
    assert counters.by_status == {"created": 6, "duplicate": 2, "rejected": 4}
    assert await store.worker_statuses() == [], "a stopped worker is no longer listed"
    stopped_at = await db.fetchval(
        "SELECT stopped_at FROM worker_heartbeats WHERE worker_id = $1", status.worker_id
    )
    assert stopped_at is not None
    assert await summed(store, since) == EXPECTED, "the last report counted nothing again"
    assert await summed(store, datetime.now(UTC) + timedelta(minutes=1)) == {}


async def test_a_worker_gone_without_a_word_turns_stale(
    settings: Settings, store: Store, workers: list[InLoopWorker]
) -> None:
    workers.append(worker := InLoopWorker(settings))

    async def reported() -> bool:
        return await only_worker(store) is not None

    await eventually(reported, 30, "a first report")
    await worker.abandon()  # as a kill would: no last report

    async def stale() -> bool:
        status = await only_worker(store)
        assert status is not None, "an abandoned worker stays listed"
        return status.stale

    await eventually(stale, 30, "the worker to turn stale")


async def test_reports_refused_by_the_database_leave_the_pipeline_alone_and_are_caught_up(
    settings: Settings, store: Store, db: asyncpg.Connection, workers: list[InLoopWorker]
) -> None:
    """A database without the reports' tables (0004 not applied yet): the worker stores
    its usages all the same; once migrated, its next report holds every count."""
    await db.execute("DROP TABLE worker_heartbeats, worker_outcome_counts")
    await db.execute("DELETE FROM schema_migrations WHERE version = '0004_worker_reports'")
    since = datetime.now(UTC) - timedelta(minutes=1)
    await produce_values(settings.kafka_bootstrap_servers, settings.topic_events, WORKLOAD)
    url = settings.require_database_url()
    with capture_logs() as logs:
        workers.append(worker := InLoopWorker(settings))

        async def stored_and_reports_failed() -> bool:
            failed = [e for e in logs if e["event"] == "worker_report_failed"]
            return bool(failed) and await count_usages(url) == 6

        await eventually(stored_and_reports_failed, 30, "usages stored, reports refused")
        assert not worker.task.done()
        assert await store.migrate() == ["0004_worker_reports"]
        await eventually(lambda: counts_are(store, since, EXPECTED), 30, "the counts kept")
        await worker.stop()
    warnings = [e for e in logs if e["event"] == "worker_report_failed"]
    assert len(warnings) == 1, "one warning line while reports fail, not one per report"
    assert "worker_heartbeats" in warnings[0]["error"]
    recovered = [e for e in logs if e["event"] == "worker_report_recovered"]
    assert len(recovered) == 1
    assert recovered[0]["failures"] >= 1


async def test_pruning_deletes_old_counts_and_old_heartbeats_only(
    store: Store, db: asyncpg.Connection
) -> None:
    insert_beat = (
        "INSERT INTO worker_heartbeats (worker_id, host, pid, group_id, ready, checks,"
        " started_at, reported_at, report_interval_s, stopped_at)"
        " VALUES ($1, 'h', 1, 'g', false, '{}', now() - $2::interval,"
        " now() - $2::interval, 10, now() - $2::interval)"
    )
    await db.execute(insert_beat, "old", timedelta(days=2))
    await db.execute(insert_beat, "recent", timedelta(hours=3))
    insert_count = (
        "INSERT INTO worker_outcome_counts VALUES ('w', date_trunc('minute', now() - $1::interval),"
        " 'created', '', 1)"
    )
    await db.execute(insert_count, timedelta(hours=3))
    await db.execute(insert_count, timedelta(minutes=30))

    assert await store.prune_worker_reports() == (1, 1)
    assert await db.fetchval("SELECT array_agg(worker_id) FROM worker_heartbeats") == ["recent"]
    recent = await store.outcome_counts(datetime.now(UTC) - timedelta(hours=1))
    assert [(r.status, r.count) for r in recent] == [("created", 1)]
    assert await db.fetchval("SELECT count(*) FROM worker_outcome_counts") == 1


async def test_every_process_of_run_processes_reports_as_itself(
    settings: Settings, store: Store, tmp_path: Path
) -> None:
    log = LogFile(tmp_path / "run.log")
    env = process_env(settings, metrics_port=0)
    with running(["run", "--processes", "2"], env, log.path) as proc:

        async def two_reported() -> bool:
            return len(await store.worker_statuses()) == 2

        await wait_until(two_reported, "two workers reported", 30, proc)
        children = {e["pid"] for e in log.events("child_started")}
        statuses = await store.worker_statuses()
        assert {s.pid for s in statuses} == children
        assert len({s.worker_id for s in statuses}) == 2
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0
    assert await store.worker_statuses() == []


async def test_the_reports_migration_applies_on_top_of_the_earlier_ones(
    postgres_admin_url: str,
) -> None:
    """A database of the release before (0001 to 0003 applied, an API key stored) takes 0004
    and keeps what it held."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(postgres_admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = postgres_admin_url.rpartition("/")[0] + f"/{name}"
    earlier = [p for p in migration_files() if p.stem < "0004"]
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "CREATE TABLE schema_migrations (version text PRIMARY KEY,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for path in earlier:
            await conn.execute(path.read_text())
            await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", path.stem)
        await conn.execute("INSERT INTO api_keys VALUES ('0123456789ab', 'k', $1, '{}')", "a" * 64)
        store = await Store.open(url)
        try:
            applied = await store.migrate()
            assert applied[0] == "0004_worker_reports"
            assert applied == [p.stem for p in migration_files() if p.stem >= "0004"]
            assert await store.worker_statuses() == []
            assert await store.outcome_counts(datetime.now(UTC)) == []
        finally:
            await store.close()
        assert await conn.fetchval("SELECT count(*) FROM api_keys") == 1
    finally:
        await conn.close()
