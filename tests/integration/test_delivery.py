"""Delivery guarantees (SPEC.md §6) against the real broker and a real Postgres.

A crash between the steps of the commit protocol, a database outage, two workers
sharing one group, and a graceful stop while the database is away. After each,
every usage is stored exactly once, every record's outcome names its own source,
nothing is refused for a transient failure, and the committed offsets reach the
log end of every input partition. Last, a cancelled ("crashed") worker must not
leave its batch running.

Log ends are the high watermarks of Fetch responses, not ListOffsets: the embedded
broker (tansu) under-reports the latest offset when the last batch holds several
records (DESIGN.md), and a consumer that reads from offset 0 sees the true end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import ConsumerRecord

from tests.support.broker import Offsets, committed_offsets, read_to_log_end, wait_committed
from tests.support.database import StoredRow, load_demo_reference, prepared_database, stored_rows
from tests.support.events import Outgoing, Sent, SourceKey, log_end, produce, sequence, usage_event
from tests.support.settings import INPUT_PARTITIONS, create_topics, make_settings
from tests.support.waiting import eventually
from tests.support.worker import RunningWorker
from usage_ingest.dev.embedded import free_port
from usage_ingest.dev.postgres import EmbeddedPostgres
from usage_ingest.domain.records import InputRecord, OutputRecord, Partition
from usage_ingest.domain.resolution import ReferenceKeys, ReferenceSnapshot
from usage_ingest.errors import DependencyUnavailable
from usage_ingest.kafka.connection import connection_options
from usage_ingest.kafka.consumer import EventConsumer
from usage_ingest.kafka.producer import OutputProducer
from usage_ingest.ports import BatchWritePort
from usage_ingest.settings import Settings
from usage_ingest.store.store import Store, open_store
from usage_ingest.store.worker_reports import WorkerReport
from usage_ingest.worker import runtime as bootstrap
from usage_ingest.worker.pipeline import Pipeline

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


# --- waiting ------------------------------------------------------------------


async def wait_group_members(settings: Settings, members: int, within_s: float) -> None:
    """Until the group is Stable with `members` members (every one holds partitions)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:

        async def stable() -> bool:
            response = (await admin.describe_consumer_groups([settings.group_id]))[0]
            # Its fields: error code, group id, state, protocol type, protocol, members.
            group = response.groups[0]
            return bool(group[2] == "Stable" and len(group[5]) == members)

        await eventually(stable, within_s, f"{members} workers in group {settings.group_id}")
    finally:
        await admin.close()


async def wait_ready(metrics_port: int, within_s: float) -> None:
    """Until the worker serving on this port answers /readyz with 200 (in its group)."""
    async with httpx.AsyncClient() as client:

        async def ready() -> bool:
            try:
                response = await client.get(f"http://127.0.0.1:{metrics_port}/readyz")
            except httpx.HTTPError:
                return False
            return response.status_code == 200

        await eventually(ready, within_s, f"the worker on port {metrics_port} ready")


# --- reading topics -----------------------------------------------------------


class Tail:
    """A topic read from offset 0: `wait_for` follows it as records arrive, `sync`
    reads all of it up to the high watermark the broker reports now."""

    def __init__(self, settings: Settings, topic: str, partitions: int = 1) -> None:
        self.topic = topic
        self._settings = settings
        self._partitions = [TopicPartition(topic, p) for p in range(partitions)]
        self._follower = AIOKafkaConsumer(
            **connection_options(settings),
            group_id=None,
            enable_auto_commit=False,
            fetch_max_wait_ms=100,
        )
        self._ends: Offsets = {}
        self.followed: list[ConsumerRecord[bytes, bytes]] = []

    async def start(self) -> None:
        await self._follower.start()
        self._follower.assign(self._partitions)
        await self._follower.seek_to_beginning(*self._partitions)

    async def stop(self) -> None:
        await self._follower.stop()

    async def arrived(self) -> int:
        """Take what has arrived; the number of records followed so far."""
        batches = await self._follower.getmany(timeout_ms=20)
        for messages in batches.values():
            self.followed.extend(messages)
        return len(self.followed)

    async def wait_for(self, count: int, within_s: float) -> list[ConsumerRecord[bytes, bytes]]:
        """At least `count` records (a lower bound: more may follow)."""

        async def enough() -> bool:
            return await self.arrived() >= count

        try:
            await eventually(enough, within_s, f"{count} records on {self.topic}")
        except AssertionError as exc:
            raise AssertionError(f"{len(self.followed)} of {count} on {self.topic}") from exc
        return self.followed

    async def sync(self, within_s: float = 10.0) -> list[ConsumerRecord[bytes, bytes]]:
        """Every record up to the log end: an exact count (see `read_to_log_end`)."""
        records, self._ends = await read_to_log_end(
            self._settings, self.topic, len(self._partitions), within_s
        )
        return records

    def log_end(self) -> Offsets:
        """The high watermarks seen by the last `sync`."""
        return dict(self._ends)


@dataclass
class Tails:
    events: Tail
    accepted: Tail
    rejected: Tail
    dlq: Tail


@contextlib.asynccontextmanager
async def tails_of(settings: Settings) -> AsyncIterator[Tails]:
    tails = Tails(
        Tail(settings, settings.topic_events, INPUT_PARTITIONS),
        Tail(settings, settings.topic_accepted),
        Tail(settings, settings.topic_rejected),
        Tail(settings, settings.topic_dlq),
    )
    started: list[Tail] = []
    try:
        for tail in (tails.events, tails.accepted, tails.rejected, tails.dlq):
            await tail.start()
            started.append(tail)
        yield tails
    finally:
        for tail in started:
            await tail.stop()


async def input_log_end(tails: Tails, produced: Iterable[Sent]) -> Offsets:
    """The input topic's high watermarks, which must agree with the produce acks."""
    await tails.events.sync()
    ends = tails.events.log_end()
    assert ends == log_end(produced)
    return ends


def outcomes_of(records: Iterable[ConsumerRecord[bytes, bytes]]) -> list[dict[str, Any]]:
    return [json.loads(r.value or b"") for r in records]


def by_source(outcomes: Iterable[dict[str, Any]]) -> dict[SourceKey, list[dict[str, Any]]]:
    grouped: dict[SourceKey, list[dict[str, Any]]] = defaultdict(list)
    for outcome in outcomes:
        grouped[(outcome["source"]["partition"], outcome["source"]["offset"])].append(outcome)
    return grouped


def without_processed_at(outcome: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in outcome.items() if k != "processedAt"}


# --- the database -------------------------------------------------------------


async def usage_rows(url: str) -> list[tuple[int, str]]:
    """Every usage, every column, as Postgres renders it: a byte-for-byte snapshot."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT id, row_to_json(u)::text FROM usages u ORDER BY id")
    finally:
        await conn.close()
    return [(r[0], r[1]) for r in rows]


async def stored_by_reference(url: str) -> dict[str, StoredRow]:
    return {row.reference: row for row in await stored_rows(url)}


def assert_one_created_outcome_each(
    produced: Sequence[Sent], outcomes: list[dict[str, Any]], stored: dict[str, StoredRow]
) -> None:
    """Each record stored once, from itself, and reported `created` exactly once."""
    assert sorted(stored) == sorted(p.reference for p in produced)
    grouped = by_source(outcomes)
    assert sorted(grouped) == sorted(p.source for p in produced), "an outcome per record"
    for record in produced:
        [outcome] = grouped[record.source]
        assert outcome["status"] == "created", outcome
        assert outcome["externalReference"] == record.reference
        assert outcome["usageId"] == stored[record.reference].usage_id
        assert stored[record.reference].source == record.source


# --- workers wired by hand, with one port replaced ---------------------------


class ConsumerWrapper:
    """`EventConsumer` as the pipeline sees it; subclasses change one step."""

    inner: EventConsumer

    async def fetch(self, max_records: int, timeout_ms: int) -> list[InputRecord]:
        return await self.inner.fetch(max_records, timeout_ms)

    async def commit(self, next_offsets: dict[Partition, int]) -> None:
        await self.inner.commit(next_offsets)

    async def rewind(self, partitions: Iterable[Partition]) -> None:
        await self.inner.rewind(partitions)


class ProducerWrapper:
    """`OutputProducer` as the pipeline sees it; subclasses change one step."""

    inner: OutputProducer

    async def publish(self, records: Sequence[OutputRecord]) -> list[OutputRecord]:
        return await self.inner.publish(records)


class AcknowledgedOutcomes(ProducerWrapper):
    """Notes the source of every outcome the broker acknowledged."""

    def __init__(self, outcome_topics: Iterable[str]) -> None:
        self.outcome_topics = set(outcome_topics)
        self.sources: set[SourceKey] = set()

    async def publish(self, records: Sequence[OutputRecord]) -> list[OutputRecord]:
        failed = await self.inner.publish(records)
        unacknowledged = {id(r) for r in failed}
        for record in records:
            if record.topic in self.outcome_topics and id(record) not in unacknowledged:
                source = json.loads(record.value)["source"]
                self.sources.add((source["partition"], source["offset"]))
        return failed


class CommitNeverArrives(ConsumerWrapper):
    """The process dies after the outcomes were acknowledged, before the offset commit
    reaches the broker: commits are recorded and dropped. Each requested commit also
    checks the protocol's order: every record below the offsets already has its row
    committed in the database and its outcome acknowledged."""

    def __init__(self, database_url: str, acknowledged: set[SourceKey]) -> None:
        self.database_url = database_url
        self.acknowledged = acknowledged
        self.requested: Offsets = {}
        self.out_of_order: list[tuple[str, SourceKey]] = []

    async def commit(self, next_offsets: dict[Partition, int]) -> None:
        stored = {row.source for row in (await stored_by_reference(self.database_url)).values()}
        for (_, partition), end in next_offsets.items():
            for offset in range(end):
                if (partition, offset) not in stored:
                    self.out_of_order.append(("no row yet", (partition, offset)))
                if (partition, offset) not in self.acknowledged:
                    self.out_of_order.append(("outcome not acknowledged", (partition, offset)))
            self.requested[partition] = max(self.requested.get(partition, 0), end)


class OutcomesNeverAcknowledged(ProducerWrapper):
    """The process dies after the database commit, before any outcome of the batch
    is acknowledged: the first publish keeps what it was given and never returns."""

    def __init__(self) -> None:
        self.held: list[OutputRecord] = []
        self.reached = asyncio.Event()
        self.stuck: asyncio.Task[Any] | None = None

    async def publish(self, records: Sequence[OutputRecord]) -> list[OutputRecord]:
        self.held.extend(records)
        self.stuck = asyncio.current_task()
        self.reached.set()
        await asyncio.Event().wait()
        return list(records)


@dataclass
class HandBuiltWorker:
    """A worker wired as `run_worker` wires it, with a wrapped consumer or producer."""

    store: Store
    consumer: EventConsumer
    producer: OutputProducer
    task: asyncio.Task[None]

    async def crash(self, *stuck: asyncio.Task[Any] | None) -> None:
        """kill -9: the loop and the batch in flight vanish, nothing more is committed.

        The clients are closed afterwards only to free them; with auto-commit off the
        consumer commits nothing on the way out. On Apache Kafka it also leaves the
        group, where a killed process would be dropped after the session timeout. On
        tansu the first generation is 0 and aiokafka sends LeaveGroup only for a
        generation above 0, so there the group waits for the session timeout, as
        after a real kill.
        """
        for task in (self.task, *stuck):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.consumer.stop()
        await self.producer.stop()
        await self.store.close()


async def start_hand_built(
    settings: Settings,
    consumer: ConsumerWrapper | None = None,
    producer: ProducerWrapper | None = None,
) -> HandBuiltWorker:
    consumer = consumer or ConsumerWrapper()
    producer = producer or ProducerWrapper()
    store = await open_store(settings)
    output = OutputProducer(settings)
    pipelines: list[Pipeline] = []

    async def on_revoked(partitions: set[Partition]) -> None:
        for pipeline in pipelines:
            await pipeline.on_partitions_revoked(partitions)

    events = EventConsumer(settings, on_revoked)
    consumer.inner, producer.inner = events, output
    pipeline = Pipeline(settings, store, consumer, producer)
    pipelines.append(pipeline)
    try:
        await output.start()
        await events.start()
    except BaseException:
        await output.stop()
        await store.close()
        raise
    task = asyncio.create_task(pipeline.run(asyncio.Event()))
    return HandBuiltWorker(store, events, output, task)


# --- a database of the test's own, to kill and restart -------------------------


@pytest.fixture
async def own_postgres(tmp_path: Path) -> AsyncIterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(tmp_path / "pgdata")
    await asyncio.to_thread(server.start)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop)


class ObservedStore:
    """The worker's store, counting the calls that failed because the database was away."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.unavailable = 0

    async def fetch_reference(self, keys: ReferenceKeys) -> ReferenceSnapshot:
        try:
            return await self.inner.fetch_reference(keys)
        except DependencyUnavailable:
            self.unavailable += 1
            raise

    @contextlib.asynccontextmanager
    async def batch(self) -> AsyncIterator[BatchWritePort]:
        try:
            async with self.inner.batch() as batch:
                yield batch
        except DependencyUnavailable:
            self.unavailable += 1
            raise

    async def report_worker(self, report: WorkerReport) -> None:
        # The worker's report goes through too; its failures are not the batch's retries.
        await self.inner.report_worker(report)

    async def prune_worker_reports(self) -> tuple[int, int]:
        return await self.inner.prune_worker_reports()

    async def close(self) -> None:
        await self.inner.close()


async def wait_retrying(store: ObservedStore, tails: Tails, more: int) -> None:
    """Until the worker has failed `more` further store calls; a rejection or a dead
    letter meanwhile fails at once: a transient failure must never refuse a record."""
    target = store.unavailable + more

    async def retried() -> bool:
        refused = await tails.rejected.arrived() + await tails.dlq.arrived()
        assert refused == 0, "the database outage turned records into rejections"
        return store.unavailable >= target

    await eventually(retried, 10, f"the worker retrying the database ({target} failures)")


@pytest.fixture
def observed_stores(monkeypatch: pytest.MonkeyPatch) -> list[ObservedStore]:
    """The stores `run_worker` opens, observed."""
    stores: list[ObservedStore] = []

    async def open_observed(settings: Settings) -> ObservedStore:
        store = ObservedStore(await open_store(settings))
        stores.append(store)
        return store

    monkeypatch.setattr(bootstrap, "open_store", open_observed)
    return stores


# --- 1. crash between the database commit and the offset commit ---------------


async def test_crash_before_offset_commit_redelivers_without_changing_rows(
    settings: Settings, start_worker: Callable[[Settings], RunningWorker]
) -> None:
    url = settings.require_database_url()
    await load_demo_reference(url)
    n = 45
    async with tails_of(settings) as tails:
        produced = await produce(settings, sequence("crash-commit", 0, n))
        ends = await input_log_end(tails, produced)

        acknowledged = AcknowledgedOutcomes([settings.topic_accepted, settings.topic_rejected])
        dropped = CommitNeverArrives(url, acknowledged.sources)
        crashed = await start_hand_built(settings, consumer=dropped, producer=acknowledged)
        try:
            await tails.accepted.wait_for(n, within_s=20)
            await eventually(lambda: dropped.requested == ends, 10, "a commit asked for all")
        finally:
            await crashed.crash()
        assert dropped.out_of_order == []
        assert await committed_offsets(settings) == dict.fromkeys(range(INPUT_PARTITIONS))
        before = await usage_rows(url)
        assert len(before) == n
        first = outcomes_of(await tails.accepted.sync())
        assert len(first) == n

        worker = start_worker(settings)
        await tails.accepted.wait_for(2 * n, within_s=20)
        await wait_committed(settings, ends, within_s=10)
        await worker.stop()

        assert await usage_rows(url) == before
        outcomes = outcomes_of(await tails.accepted.sync())
        assert len(outcomes) == 2 * n
        stored = await stored_by_reference(url)
        grouped = by_source(outcomes)
        assert sorted(grouped) == sorted(p.source for p in produced)
        for record in produced:
            first_delivery, redelivery = grouped[record.source]
            assert redelivery["status"] == "created", redelivery
            assert without_processed_at(redelivery) == without_processed_at(first_delivery)
            assert redelivery["usageId"] == stored[record.reference].usage_id
        assert await tails.rejected.sync() == []
        assert await tails.dlq.sync() == []


# --- 2. crash after the database commit, before the outcomes ------------------


async def test_crash_before_outcomes_gives_every_record_its_first_outcome(
    settings: Settings, start_worker: Callable[[Settings], RunningWorker]
) -> None:
    url = settings.require_database_url()
    await load_demo_reference(url)
    n = 45
    refused = [
        Outgoing(
            usage_event("crash-publish-unknown", 0).replace(b"demo.usage", b"no.such"),
            0,
            b"crash-publish-unknown",
            None,
        ),
        Outgoing(b"{not json", 1, b"crash-publish-garbage", None),
    ]
    async with tails_of(settings) as tails:
        produced = await produce(settings, [*sequence("crash-publish", 0, n), *refused])
        valid, invalid = produced[:n], produced[n:]
        ends = await input_log_end(tails, produced)

        blocked = OutcomesNeverAcknowledged()
        crashed = await start_hand_built(settings, producer=blocked)
        try:
            await asyncio.wait_for(blocked.reached.wait(), timeout=20)
            held = [json.loads(r.value) for r in blocked.held if r.topic != settings.topic_dlq]
            # The database committed before the first outcome was handed to the broker.
            held_created = {o["externalReference"] for o in held if o["status"] == "created"}
            assert held_created
            assert set(await stored_by_reference(url)) == held_created
        finally:
            await crashed.crash(blocked.stuck)
        assert await committed_offsets(settings) == dict.fromkeys(range(INPUT_PARTITIONS))
        before = await usage_rows(url)
        assert await tails.accepted.sync() == []

        worker = start_worker(settings)
        await tails.accepted.wait_for(n, within_s=20)
        await wait_committed(settings, ends, within_s=10)
        await worker.stop()

        after = dict(await usage_rows(url))
        assert all(after[usage_id] == row for usage_id, row in before), "a stored row changed"
        accepted = outcomes_of(await tails.accepted.sync())
        assert_one_created_outcome_each(valid, accepted, await stored_by_reference(url))
        rejected = outcomes_of(await tails.rejected.sync())
        assert sorted(by_source(rejected)) == sorted(p.source for p in invalid)
        assert all(o["status"] == "rejected" for o in rejected)
        published = by_source([*accepted, *rejected])
        for outcome in held:
            [again] = published[(outcome["source"]["partition"], outcome["source"]["offset"])]
            assert without_processed_at(again) == without_processed_at(outcome)
        dead = await tails.dlq.sync()
        assert sorted(r.value for r in dead) == sorted(r.value for r in refused)


# --- 3. the database goes away mid-stream -------------------------------------


async def test_database_outage_retries_and_never_rejects(
    kafka_bootstrap: str,
    own_postgres: EmbeddedPostgres,
    observed_stores: list[ObservedStore],
    start_worker: Callable[[Settings], RunningWorker],
) -> None:
    url = await prepared_database(own_postgres)
    settings = make_settings(kafka_bootstrap, url)
    await create_topics(settings)
    async with tails_of(settings) as tails:
        warm_up = await produce(settings, sequence("up", 0, 60))
        worker = start_worker(settings)
        await tails.accepted.wait_for(len(warm_up), within_s=20)
        [store] = observed_stores

        # A stream in small waves; Postgres is killed while it flows.
        stream = asyncio.create_task(
            produce(settings, sequence("stream", 0, 300), chunk=30, pause_s=0.1)
        )
        try:
            conn = await asyncpg.connect(url)
            try:

                async def streaming() -> bool:
                    return int(await conn.fetchval("SELECT count(*) FROM usages")) >= 120

                await eventually(streaming, 20, "the stream being stored")
            finally:
                await conn.close()
            await asyncio.to_thread(own_postgres.kill)
            await wait_retrying(store, tails, 3)
        finally:
            streamed = await stream
        committed_down = await committed_offsets(settings)
        accepted_down = len(await tails.accepted.sync())
        while_down = await produce(settings, sequence("down", 0, 60))
        await wait_retrying(store, tails, 3)
        # Down: nothing refused, nothing dead-lettered, no outcome and no commit more.
        assert await tails.rejected.sync() == []
        assert await tails.dlq.sync() == []
        assert len(await tails.accepted.sync()) == accepted_down
        assert await committed_offsets(settings) == committed_down
        everything = warm_up + streamed + while_down
        assert committed_down != await input_log_end(tails, everything)

        await asyncio.to_thread(own_postgres.start)
        await tails.accepted.wait_for(len(everything), within_s=30)
        await wait_committed(settings, await input_log_end(tails, everything), within_s=15)
        counters = await worker.stop()

        assert counters.by_status == {"created": len(everything)}
        accepted = outcomes_of(await tails.accepted.sync())
        assert_one_created_outcome_each(everything, accepted, await stored_by_reference(url))
        assert await tails.rejected.sync() == []
        assert await tails.dlq.sync() == []


# --- 4. two workers in one group ----------------------------------------------


async def test_two_workers_in_one_group_store_each_reference_once(
    kafka_bootstrap: str, database_url: str, start_worker: Callable[[Settings], RunningWorker]
) -> None:
    settings = make_settings(kafka_bootstrap, database_url, batch_max_records=100)
    await create_topics(settings)
    await load_demo_reference(database_url)
    originals = sequence("pair", 0, 2000)
    # Re-deliveries of the same reference and payload on another partition, produced
    # next to the original, so that the two workers race for the same reference.
    chunks: list[Outgoing] = []
    for start in range(0, len(originals), 100):
        part = originals[start : start + 100]
        again = [
            Outgoing(r.value, (r.partition + 1) % INPUT_PARTITIONS, r.key, r.reference)
            for r in part[::20]
        ]
        chunks += part + again
    async with tails_of(settings) as tails:
        ports = free_port(), free_port()
        first, second = (
            start_worker(settings.model_copy(update={"metrics_port": p})) for p in ports
        )
        await wait_group_members(settings, 2, within_s=15)
        # The broker may list a member whose join has not returned to it yet: wait until
        # both say they are in the group, or one could stop before it took any record.
        for port in ports:
            await wait_ready(port, within_s=15)
        producing = asyncio.create_task(produce(settings, chunks, chunk=105, pause_s=0.05))
        try:
            conn = await asyncpg.connect(database_url)
            try:

                async def half_stored() -> bool:
                    return int(await conn.fetchval("SELECT count(*) FROM usages")) >= 1000

                await eventually(half_stored, 30, "half of the usages stored")
            finally:
                await conn.close()
            first_counters = await first.stop()
        finally:
            produced = await producing
        ends = await input_log_end(tails, produced)
        await wait_committed(settings, ends, within_s=30)
        await tails.accepted.wait_for(len(produced), within_s=10)
        second_counters = await second.stop()

        assert first_counters.records > 0
        assert second_counters.records > 0
        stored = await stored_by_reference(database_url)
        assert sorted(stored) == sorted(r.reference for r in originals)
        grouped = by_source(outcomes_of(await tails.accepted.sync()))
        assert sorted(grouped) == sorted(p.source for p in produced), "an outcome per record"
        created_from: dict[str, set[SourceKey]] = defaultdict(set)
        for record in produced:
            outcomes = grouped[record.source]
            # Repeats are allowed (a rebalance re-delivers); they must all say the same.
            assert len({(o["status"], o["usageId"]) for o in outcomes}) == 1, outcomes
            row = stored[record.reference]
            assert outcomes[0]["usageId"] == row.usage_id
            expected = "created" if row.source == record.source else "duplicate"
            assert outcomes[0]["status"] == expected, (record, outcomes[0])
            if expected == "created":
                created_from[record.reference].add(record.source)
        assert all(len(sources) == 1 for sources in created_from.values())
        assert len(created_from) == len(originals)
        assert await tails.rejected.sync() == []
        assert await tails.dlq.sync() == []


# --- 5. graceful stop while the database is away ------------------------------


async def test_graceful_stop_while_database_is_down_abandons_the_batch(
    kafka_bootstrap: str,
    own_postgres: EmbeddedPostgres,
    observed_stores: list[ObservedStore],
    start_worker: Callable[[Settings], RunningWorker],
) -> None:
    url = await prepared_database(own_postgres)
    grace_s = 1.5
    settings = make_settings(kafka_bootstrap, url, shutdown_grace_s=grace_s)
    await create_topics(settings)
    async with tails_of(settings) as tails:
        first_wave = await produce(settings, sequence("kept", 0, 30))
        worker = start_worker(settings)
        await tails.accepted.wait_for(30, within_s=20)
        committed_before = await input_log_end(tails, first_wave)
        await wait_committed(settings, committed_before, within_s=10)

        await asyncio.to_thread(own_postgres.kill)
        [store] = observed_stores
        second_wave = await produce(settings, sequence("abandoned", 0, 30))
        await wait_retrying(store, tails, 2)
        loop = asyncio.get_running_loop()
        stopping_at = loop.time()
        counters = await worker.stop(timeout=grace_s + 10)
        took_s = loop.time() - stopping_at
        assert took_s < grace_s + 3.0, f"stop took {took_s:.1f} s with a {grace_s} s grace"
        assert counters.records == len(first_wave)
        assert await committed_offsets(settings) == committed_before
        assert len(await tails.accepted.sync()) == len(first_wave)
        assert await tails.rejected.sync() == []
        assert await tails.dlq.sync() == []

        await asyncio.to_thread(own_postgres.start)
        everything = first_wave + second_wave
        successor = start_worker(settings)
        await tails.accepted.wait_for(len(everything), within_s=20)
        await wait_committed(settings, await input_log_end(tails, everything), within_s=10)
        await successor.stop()

        accepted = outcomes_of(await tails.accepted.sync())
        assert_one_created_outcome_each(everything, accepted, await stored_by_reference(url))
        assert await tails.rejected.sync() == []
        assert await tails.dlq.sync() == []


# --- 6. a crash takes the batch in flight with it -------------------------------


class StuckStore(ObservedStore):
    """Writes hang, like a statement stuck behind a lock; notes the tasks stuck in them."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self.stuck = asyncio.Event()
        self.writers: list[asyncio.Task[Any]] = []

    @contextlib.asynccontextmanager
    async def batch(self) -> AsyncIterator[BatchWritePort]:
        writer = asyncio.current_task()
        assert writer is not None
        self.writers.append(writer)
        self.stuck.set()
        await asyncio.Event().wait()
        async with super().batch() as batch:
            yield batch


async def test_crashed_worker_leaves_no_batch_running(
    settings: Settings,
    start_worker: Callable[[Settings], RunningWorker],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Cancelling the worker (how the fixtures simulate kill -9) must end the batch in
    flight too; a batch that outlives its worker keeps retrying against closed clients
    and can still write or commit after the "crash"."""
    await load_demo_reference(settings.require_database_url())
    stores: list[StuckStore] = []

    async def open_stuck(opened: Settings) -> StuckStore:
        store = StuckStore(await open_store(opened))
        stores.append(store)
        return store

    monkeypatch.setattr(bootstrap, "open_store", open_stuck)
    await produce(settings, sequence("orphan", 0, 6))
    worker = start_worker(settings)
    await eventually(lambda: bool(stores) and stores[0].stuck.is_set(), 20, "a stuck write")
    await worker.crash()
    outliving = [task for task in stores[0].writers if not task.done()]
    try:
        assert outliving == [], "the batch task outlived the cancelled worker"
    finally:
        for task in outliving:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
