"""The servers of one benchmark run and what the measurements need from them.

One embedded broker (`tansu`, in-memory) and one embedded PostgreSQL (fsync off, as in
`usage-ingest dev` and the tests), started by the benchmark and stopped at its end. The
reference data is loaded once into a template database with the project's own
`Store.migrate` and `Store.load_reference`; every measurement then gets a fresh database
cloned from it (`CREATE DATABASE ... TEMPLATE`), and topics and a consumer group of its
own.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError
from pydantic import SecretStr

from bench import procfs
from bench.workload import BenchEvent, Tally
from usage_ingest.dev.broker import EmbeddedBroker
from usage_ingest.dev.postgres import EmbeddedPostgres
from usage_ingest.domain.reference import ReferenceFile
from usage_ingest.settings import Settings
from usage_ingest.store.store import Store

TEMPLATE_DATABASE: Final = "bench_template"
# The embedded broker holds a group join for about half the session timeout (DESIGN.md).
SESSION_TIMEOUT_MS: Final = 3000
_PRELOAD_WINDOW: Final = 20_000


@dataclass(frozen=True, slots=True)
class Topics:
    """The input and output topics and the consumer group of one measurement."""

    events: str
    accepted: str
    rejected: str
    dlq: str
    group: str

    @classmethod
    def named(cls, name: str, run: str) -> Topics:
        base = f"bench.{run}.{name}"
        return cls(f"{base}.events", f"{base}.accepted", f"{base}.rejected", f"{base}.dlq", base)

    @property
    def outputs(self) -> tuple[str, str, str]:
        return (self.accepted, self.rejected, self.dlq)


@dataclass(slots=True)
class Preloaded:
    """A topic filled before a measurement: where each partition ends, and what is in it."""

    topic: str
    ends: dict[int, int]
    seconds: float
    tally: Tally = field(default_factory=Tally)

    @property
    def records(self) -> int:
        return sum(self.ends.values())


class BenchEnvironment:
    """The broker and Postgres of a run (see the module docstring)."""

    def __init__(self, workdir: Path, run: str | None = None) -> None:
        self.run = run or uuid.uuid4().hex[:6]
        # A folder per run: server data and worker logs of an earlier run stay apart.
        self.workdir = workdir / f"run-{self.run}"
        self.workdir.mkdir(parents=True)
        self.broker = EmbeddedBroker(log_path=self.workdir / "broker.log")
        self.postgres = EmbeddedPostgres(self.workdir / "pgdata")
        self._databases = 0

    # --- servers ----------------------------------------------------------------------

    def start(self) -> None:
        self.broker.start()
        self.postgres.start()

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.broker.stop()
        self.postgres.stop()

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap_servers

    def broker_pid(self) -> int | None:
        return self._child("tansu", str(self.broker.port))

    def postmaster_pid(self) -> int | None:
        return self._child("postgres", str(self.postgres.datadir))

    def _child(self, *needles: str) -> int | None:
        import os  # noqa: PLC0415 - only here

        for pid in procfs.children(os.getpid()):
            line = procfs.cmdline(pid)
            if all(n in line for n in needles):
                return pid
        return None

    def cpu_meter(self, groups: dict[str, list[int]]) -> procfs.CpuMeter:
        """A meter over the given process groups, the broker, Postgres and this process."""
        import os  # noqa: PLC0415 - only here

        broker = self.broker_pid()
        meter = procfs.CpuMeter(dict(groups), self.postmaster_pid())
        meter.groups["broker"] = [broker] if broker else []
        meter.groups["bench"] = [os.getpid()]
        return meter

    async def versions(self) -> dict[str, str]:
        conn = await asyncpg.connect(self.postgres.url)
        try:
            postgres = str(await conn.fetchval("SHOW server_version"))
        finally:
            await conn.close()
        binary = Path(procfs.cmdline(self.broker_pid() or 0).split(" ")[0]).name
        return {"postgres": postgres, "broker": binary or "tansu"}

    # --- databases ------------------------------------------------------------------

    def settings(self, topics: Topics, database_url: str | None = None, **extra: Any) -> Settings:
        values: dict[str, Any] = {
            "kafka_bootstrap_servers": self.bootstrap,
            "database_url": SecretStr(database_url) if database_url else None,
            "group_id": topics.group,
            "topic_events": topics.events,
            "topic_accepted": topics.accepted,
            "topic_rejected": topics.rejected,
            "topic_dlq": topics.dlq,
            "kafka_session_timeout_ms": SESSION_TIMEOUT_MS,
            "metrics_port": 0,
        }
        values.update(extra)
        return Settings(**values)

    async def prepare_template(self, reference: ReferenceFile) -> float:
        """Migrate a template database and load the reference data into it; seconds taken."""
        started = time.monotonic()
        await self._admin(f'CREATE DATABASE "{TEMPLATE_DATABASE}"')
        url = self.postgres.database_url(TEMPLATE_DATABASE)
        store = await Store.open(url, max_size=1)
        try:
            await store.migrate()
            await store.load_reference(reference)
        finally:
            await store.close()
        # Planner statistics, as autovacuum would have them on a database in service; the
        # clones inherit them.
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("VACUUM ANALYZE")
        finally:
            await conn.close()
        return time.monotonic() - started

    async def fresh_database(self, name: str) -> str:
        """A new database with the schema and reference data of the template; its URL."""
        self._databases += 1
        database = f"bench_{self._databases:02d}_{name}"
        await self._admin(f'CREATE DATABASE "{database}" TEMPLATE "{TEMPLATE_DATABASE}"')
        return self.postgres.database_url(database)

    async def drop_database(self, url: str) -> None:
        database = url.rpartition("/")[2]
        await self._admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')

    async def _admin(self, sql: str) -> None:
        conn = await asyncpg.connect(self.postgres.url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    # --- topics ----------------------------------------------------------------------

    def _admin_client(self) -> AIOKafkaAdminClient:
        return AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, client_id="bench-admin")

    async def create_topics(self, topics: Topics, partitions: int) -> None:
        admin = self._admin_client()
        await admin.start()
        try:
            await admin.create_topics(
                [NewTopic(topics.events, partitions, 1)]
                + [NewTopic(name, 1, 1) for name in topics.outputs]
            )
        finally:
            await admin.close()

    async def create_output_topics(self, topics: Topics) -> None:
        """Fresh output topics for a measurement on an existing input topic."""
        admin = self._admin_client()
        await admin.start()
        try:
            await admin.create_topics([NewTopic(name, 1, 1) for name in topics.outputs])
        finally:
            await admin.close()

    async def delete_topics(self, names: Iterable[str]) -> None:
        """Free the broker's memory (it keeps every record in RAM)."""
        admin = self._admin_client()
        await admin.start()
        try:
            with contextlib.suppress(KafkaError):
                await admin.delete_topics(list(names))
        finally:
            await admin.close()

    async def preload(self, topic: str, events: Iterable[BenchEvent]) -> Preloaded:
        """Publish `events` to `topic` (keyed by externalReference, so a re-delivery lands in
        its original's partition after it) and learn each partition's end from the acks."""
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            client_id="bench-preload",
            acks="all",
            enable_idempotence=False,
            linger_ms=20,
            max_batch_size=512 * 1024,
            max_request_size=4 * 1024 * 1024,
        )
        result = Preloaded(topic, {}, 0.0)
        started = time.monotonic()
        await producer.start()
        try:
            pending: list[asyncio.Future[Any]] = []
            for event in events:
                result.tally.add(event)
                pending.append(await producer.send(topic, event.value, key=event.key))
                if len(pending) >= _PRELOAD_WINDOW:
                    _note_ends(result.ends, await asyncio.gather(*pending))
                    pending = []
            _note_ends(result.ends, await asyncio.gather(*pending))
        finally:
            await producer.stop()
        result.seconds = time.monotonic() - started
        return result

    async def topic_ends(self, topics: Iterable[str]) -> dict[tuple[str, int], int]:
        """Where each partition of `topics` ends: the larger of ListOffsets and the high
        watermark of a fetch response (the embedded broker under-reports the former)."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False
        )
        await consumer.start()
        try:
            partitions = [
                TopicPartition(topic, p)
                for topic in topics
                for p in sorted(consumer.partitions_for_topic(topic) or ())
            ]
            if not partitions:
                return {}
            listed = await consumer.end_offsets(partitions)
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and any(
                consumer.highwater(tp) is None for tp in partitions
            ):
                await consumer.getmany(timeout_ms=200, max_records=1)
            return {
                (tp.topic, tp.partition): max(listed.get(tp, 0), consumer.highwater(tp) or 0)
                for tp in partitions
            }
        finally:
            await consumer.stop()


def _note_ends(ends: dict[int, int], metadata: Iterable[Any]) -> None:
    for md in metadata:
        ends[md.partition] = max(ends.get(md.partition, 0), md.offset + 1)


@contextlib.contextmanager
def running(workdir: Path) -> Iterator[BenchEnvironment]:
    env = BenchEnvironment(workdir)
    try:
        env.start()
        yield env
    finally:
        env.stop()
