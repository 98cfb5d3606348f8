"""Scenario 2, the database goes away: killed, cut off by a proxy, or too slow;
and two workers racing for the same references under serializable isolation,
plus a real deadlock.

While the database is away, nothing may be rejected or dead-lettered for it, the
committed offsets must not move, and /readyz must say 503; once it is back,
everything is stored exactly once (SPEC.md §6: transient failures are retried
with capped backoff and never turn into rejections).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest

from tests.chaos.checker import check
from tests.chaos.figures import record
from tests.chaos.harness import Chaos, WorkerProcess, unique
from tests.support.broker import committed_offsets, read_all, wait_committed
from tests.support.database import count_usages, prepared_database
from tests.support.events import Outgoing, Sent, log_end, produce, sequence
from tests.support.waiting import eventually
from usage_ingest.dev.postgres import EmbeddedPostgres
from usage_ingest.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

EVENTS_BEFORE, EVENTS_DURING = 1500, 600
OUTAGE_S = 3.0


def retried(worker: WorkerProcess, *actions: str) -> int:
    """How many database calls the worker failed and retried so far."""
    return sum(
        1
        for e in worker.log_events()
        if e.get("event") == "dependency_unavailable" and e.get("action") in actions
    )


DB_ACTIONS = ("fetch_reference", "store_usages", "store_usage")


async def nothing_refused(settings: Settings) -> None:
    assert await read_all(settings, settings.topic_rejected) == [], "a record was rejected"
    assert await read_all(settings, settings.topic_dlq) == [], "a record was dead-lettered"


async def ride_out(
    chaos: Chaos,
    *,
    scenario: str,
    settings: Settings,
    database_url: str,
    break_it: Callable[[], Awaitable[None]],
    mend_it: Callable[[], Awaitable[None]],
    not_ready: bool,
    what: str,
) -> None:
    """Stream, break the database mid-stream, check the promises while it is away,
    mend it, and check that everything was stored exactly once."""
    started = time.monotonic()
    worker = chaos.worker(settings)
    worker.start()
    prefix = unique("db")
    streaming = asyncio.create_task(
        produce(settings, sequence(prefix, 0, EVENTS_BEFORE), chunk=100, pause_s=0.05)
    )
    try:

        async def midstream() -> bool:
            return await count_usages(database_url) >= EVENTS_BEFORE // 3

        await eventually(midstream, 60, "the stream being stored")
        await break_it()
        broke = time.monotonic()
    finally:
        sent: list[Sent] = await streaming
    # A wave produced while the database is away: on a loaded machine the first stream
    # may be stored in full before the break, and the worker would have nothing to retry.
    sent += await produce(settings, sequence(prefix, EVENTS_BEFORE, EVENTS_DURING))
    await eventually(lambda: retried(worker, *DB_ACTIONS) >= 2, 30, "the worker retrying")
    if not_ready:

        async def unready() -> bool:
            return await worker.readiness() == 503

        await eventually(unready, 15, "/readyz answering 503 while the database is away")
    # The worker is past every batch it began before the break (it retries a later one),
    # so from here on the committed offsets must stand still.
    before = await committed_offsets(settings)
    seen = retried(worker, *DB_ACTIONS)
    await eventually(lambda: retried(worker, *DB_ACTIONS) >= seen + 3, 30, "more retries")
    # Still away: no offset moved, nothing refused, the worker did not give up.
    assert await committed_offsets(settings) == before, (
        "offsets advanced while the database was away"
    )
    await nothing_refused(settings)
    assert worker.running, worker.output()[-3000:]
    ends = log_end(sent)
    assert before != ends
    remaining = OUTAGE_S - (time.monotonic() - broke)
    if remaining > 0:
        await asyncio.sleep(remaining)  # let the outage last: a real one does not end at once

    await mend_it()
    healed = time.monotonic()
    caught_up = await wait_committed(settings, ends, within_s=60)

    async def ready() -> bool:
        return await worker.readiness() == 200

    await eventually(ready, 20, "/readyz answering 200 again")
    assert await worker.terminate() == 0
    verdict = await check(settings, database_url, sent)
    record(
        scenario,
        verdict,
        recovery_s=caught_up - healed,
        faults=f"{what}; {retried(worker, *DB_ACTIONS)} database calls retried",
        started=started,
    )
    assert verdict.clean, verdict
    assert verdict.stored == EVENTS_BEFORE + EVENTS_DURING


# --- 2a. Postgres killed --------------------------------------------------------------


async def test_postgres_killed_mid_stream(chaos: Chaos, tmp_path: Path) -> None:
    server = EmbeddedPostgres(tmp_path / "pgdata")
    await asyncio.to_thread(server.start)
    try:
        url = await prepared_database(server)
        settings = await chaos.settings(url)

        async def kill() -> None:
            await asyncio.to_thread(server.kill)

        async def restart() -> None:
            await asyncio.to_thread(server.start)

        await ride_out(
            chaos,
            scenario="2a postgres killed",
            settings=settings,
            database_url=url,
            break_it=kill,
            mend_it=restart,
            not_ready=True,
            what=f"SIGKILL postmaster + backends, {OUTAGE_S:g} s down",
        )
    finally:
        await asyncio.to_thread(server.stop)


# --- 2b. connections cut ------------------------------------------------------------------


def _port_of(url: str) -> int:
    return int(url.rsplit("@", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])


async def test_database_connections_cut_by_a_proxy(chaos: Chaos) -> None:
    url = await chaos.database()
    proxy = await chaos.proxy(_port_of(url))
    proxied = url.replace(f":{_port_of(url)}/", f":{proxy.port}/")
    settings = await chaos.settings(proxied)

    async def cut() -> None:
        proxy.cut()

    async def heal() -> None:
        proxy.heal()

    await ride_out(
        chaos,
        scenario="2b db connections cut",
        settings=settings,
        database_url=url,
        break_it=cut,
        mend_it=heal,
        not_ready=True,
        what=f"TCP proxy reset every connection, refused new ones {OUTAGE_S:g} s",
    )


# --- 2c. statements time out ----------------------------------------------------------------


async def test_statements_timing_out_are_retried(chaos: Chaos) -> None:
    url = await chaos.database()
    settings = await chaos.settings(url, db_statement_timeout_s=0.5)
    locker = await asyncpg.connect(url)
    transaction = locker.transaction()

    async def lock() -> None:
        await transaction.start()
        await locker.execute("LOCK TABLE usages IN ACCESS EXCLUSIVE MODE")

    async def unlock() -> None:
        await transaction.rollback()

    try:
        await ride_out(
            chaos,
            scenario="2c statement timeouts",
            settings=settings,
            database_url=url,
            break_it=lock,
            mend_it=unlock,
            not_ready=False,  # Postgres answers SELECT 1 all along: only usages is locked
            what="ACCESS EXCLUSIVE lock on usages, 0.5 s statement timeout",
        )
    finally:
        await locker.close()


# --- 2d. two workers racing for the same references, serializable --------------------------


async def lock_waiters(url: str) -> int:
    """Backends of the worker waiting for a lock now (a fresh snapshot of pg_stat_activity)."""
    conn = await asyncpg.connect(url)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'usage-ingest'"
                " AND wait_event_type = 'Lock'"
            )
        )
    finally:
        await conn.close()


# A usage row written by a transaction of the test itself (always rolled back).
RIVAL_INSERT = (
    "INSERT INTO usages (external_reference, contract_id, debtor_id, inventory_id,"
    " product_item_id, product_ident, start_date, end_date, billable, payload_hash,"
    " raw_payload, source_topic, source_partition, source_offset)"
    " VALUES ($1, 1, 1, 1, 1, 'demo.usage', now(), now(), true, 'rival', '{}', 'rival', 0, 0)"
)


def one_partition(records: list[Outgoing]) -> list[Outgoing]:
    return [dataclasses.replace(r, partition=0) for r in records]


async def test_two_workers_racing_under_serializable_isolation(chaos: Chaos) -> None:
    """Two workers in two consumer groups read the same records and upsert the same
    references at the same moment. Under SERIALIZABLE the loser of a race gets a
    serialization failure (40001), which must be retried, never refused: both groups
    end with every record's outcome and their offsets at the log end, one row each.

    To make the race certain rather than likely, a transaction of the test holds the
    first reference (uncommitted) until both workers wait for it, then rolls back:
    both statements began before either could commit, so the one that waits for the
    other's row must fail with 40001."""
    started = time.monotonic()
    url = await chaos.database()
    records = one_partition(sequence(unique("race"), 0, 2000))
    conn = await asyncpg.connect(url)
    try:
        name = await conn.fetchval("SELECT current_database()")
        await conn.execute(
            f'ALTER DATABASE "{name}" SET default_transaction_isolation TO serializable'
        )
        gate = conn.transaction()
        await gate.start()
        await conn.execute(RIVAL_INSERT, records[0].reference)
        first = await chaos.settings(url, batch_max_records=100)
        # The same topics, another group: every record is processed twice, concurrently.
        second = first.model_copy(update={"group_id": first.group_id + "-twin"})
        sent = await produce(first, records)
        workers = [chaos.worker(first, "first"), chaos.worker(second, "second")]
        for worker in workers:
            worker.start()

        async def both_wait() -> bool:
            return await lock_waiters(url) >= 2

        await eventually(both_wait, 30, "both workers waiting to insert the same reference")
        await gate.rollback()
        healed = time.monotonic()
    finally:
        await conn.close()
    ends = log_end(sent)
    caught_up = max([await wait_committed(s, ends, within_s=60) for s in (first, second)])
    for worker in workers:
        assert await worker.terminate() == 0
    verdict = await check(first, url, sent)
    failures = sum(
        1
        for w in workers
        for e in w.log_events()
        if e.get("event") == "dependency_unavailable" and "Serialization" in e.get("error", "")
    )
    record(
        "2d two workers, serializable",
        verdict,
        recovery_s=caught_up - healed,
        faults=f"{failures} serialization failures (40001) retried",
        started=started,
    )
    assert verdict.clean, verdict
    assert verdict.stored == len(sent)
    assert failures > 0, "the race produced no serialization failure: the test proved nothing"


# --- 2e. a deadlock ---------------------------------------------------------------------------


async def test_deadlock_victim_is_retried(chaos: Chaos) -> None:
    """A transaction of the test's own takes two references in the opposite order to
    the worker's insert: Postgres breaks the cycle by aborting the worker's statement
    (40P01), which must be retried. The test's transaction rolls back."""
    started = time.monotonic()
    url = await chaos.database()
    settings = await chaos.settings(url)
    # One partition, one producer batch: the worker inserts all 40 in one statement.
    records = one_partition(sequence(unique("dl"), 0, 40))
    first_ref, last_ref = records[0].reference, records[-1].reference
    rival = await asyncpg.connect(url)
    worker = chaos.worker(settings)
    try:
        transaction = rival.transaction()
        await transaction.start()
        # The worker must be the one that detects the cycle (it waits first anyway).
        await rival.execute("SET LOCAL deadlock_timeout = '60s'")
        await rival.execute(RIVAL_INSERT, last_ref)
        worker.start()
        sent = await produce(settings, records)

        async def worker_waits() -> bool:
            return await lock_waiters(url) >= 1

        await eventually(worker_waits, 30, "the worker waiting for the rival's row")
        # Now the rival wants the row the worker holds: a cycle.
        await rival.execute(RIVAL_INSERT, first_ref)
        await transaction.rollback()
        healed = time.monotonic()
    finally:
        await rival.close()
    caught_up = await wait_committed(settings, log_end(sent), within_s=30)
    assert await worker.terminate() == 0
    verdict = await check(settings, url, sent)
    deadlocks = sum(
        1
        for e in worker.log_events()
        if e.get("event") == "dependency_unavailable" and "Deadlock" in e.get("error", "")
    )
    record(
        "2e deadlock",
        verdict,
        recovery_s=caught_up - healed,
        faults=f"{deadlocks} deadlock (40P01) retried",
        started=started,
    )
    assert verdict.clean, verdict
    assert deadlocks >= 1, worker.output()[-3000:]
