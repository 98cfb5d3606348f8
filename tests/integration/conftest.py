"""Real servers for integration tests, started and stopped by the fixtures.

Which servers, in order of preference:
1. existing ones named by environment variables
   (`USAGE_INGEST_TEST_KAFKA_BOOTSTRAP_SERVERS`, `USAGE_INGEST_TEST_DATABASE_URL`,
   the latter an admin URL on which fresh databases are created);
2. Apache Kafka and Postgres containers, when a Docker engine answers;
3. the embedded broker and Postgres of `usage_ingest.dev.embedded` (pip packages only).

Every test gets its own database, topics and consumer group, so tests never
see each other's data.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import os
import uuid
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from pydantic import SecretStr

from usage_ingest.dev.embedded import EmbeddedBroker, EmbeddedPostgres
from usage_ingest.kafka import ensure_topics
from usage_ingest.settings import Settings
from usage_ingest.store import open_store
from usage_ingest.worker.metrics import Counters
from usage_ingest.worker.runtime import run_worker

pytestmark = pytest.mark.integration

# The embedded broker holds a group join for about half the session timeout.
TEST_SESSION_TIMEOUT_MS = 3000
INPUT_PARTITIONS = 3


@functools.cache
def _docker_engine_answers() -> bool:
    """True when a Docker engine answers; asked once, and only when one may exist."""
    if not (os.environ.get("DOCKER_HOST") or Path("/var/run/docker.sock").exists()):
        return False
    import docker  # type: ignore[import-untyped]

    # A failed probe can leave its socket for the garbage collector to find later,
    # and the ResourceWarning it raises then would fail whatever test is running.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            client = docker.from_env(timeout=2)
            try:
                client.ping()
            finally:
                client.close()
        except Exception:  # noqa: BLE001 - any failure means "no engine here"
            return False
        finally:
            gc.collect()
    return True


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    existing = os.environ.get("USAGE_INGEST_TEST_KAFKA_BOOTSTRAP_SERVERS")
    if existing:
        yield existing
    elif _docker_engine_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer("confluentinc/cp-kafka:7.6.1").with_kraft() as kafka:
            yield kafka.get_bootstrap_server()
    else:
        with EmbeddedBroker() as broker:
            yield broker.bootstrap_servers


@pytest.fixture(scope="session")
def postgres_admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    existing = os.environ.get("USAGE_INGEST_TEST_DATABASE_URL")
    if existing:
        yield existing
    elif _docker_engine_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16-alpine", driver=None) as pg:
            yield pg.get_connection_url()
    else:
        with EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "data") as server:
            yield server.url


def _with_database(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


async def create_database(admin_url: str) -> str:
    """A fresh, migrated database; returns its URL."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    url = _with_database(admin_url, name)
    settings = Settings(database_url=SecretStr(url))
    store = await open_store(settings)
    try:
        await store.migrate()
    finally:
        await store.close()
    return url


@pytest.fixture
async def database_url(postgres_admin_url: str) -> str:
    return await create_database(postgres_admin_url)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


def make_settings(kafka_bootstrap: str, database_url: str | None, **overrides: Any) -> Settings:
    """Settings with topics and a group of their own."""
    run = uuid.uuid4().hex[:8]
    values: dict[str, Any] = {
        "kafka_bootstrap_servers": kafka_bootstrap,
        "database_url": SecretStr(database_url) if database_url else None,
        "group_id": f"g-{run}",
        "topic_events": f"events-{run}",
        "topic_accepted": f"accepted-{run}",
        "topic_rejected": f"rejected-{run}",
        "topic_dlq": f"dlq-{run}",
        "kafka_session_timeout_ms": TEST_SESSION_TIMEOUT_MS,
        "batch_max_wait_ms": 100,
        "retry_initial_backoff_s": 0.05,
        "retry_max_backoff_s": 0.5,
        "shutdown_grace_s": 5.0,
        "metrics_port": 0,  # tests that read metrics ask for a free port
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
async def settings(kafka_bootstrap: str, database_url: str) -> Settings:
    settings = make_settings(kafka_bootstrap, database_url)
    await create_topics(settings)
    return settings


async def create_topics(settings: Settings) -> None:
    await ensure_topics(settings, [settings.topic_events], partitions=INPUT_PARTITIONS)
    await ensure_topics(settings, settings.output_topics)


@dataclass
class RunningWorker:
    """A worker running in this event loop, as `usage-ingest run` would."""

    settings: Settings
    stop_event: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[Counters] | None = None

    def start(self) -> RunningWorker:
        self.task = asyncio.create_task(run_worker(self.settings, self.stop_event))
        return self

    async def stop(self, timeout: float = 30.0) -> Counters:
        assert self.task is not None
        self.stop_event.set()
        return await asyncio.wait_for(self.task, timeout)

    async def crash(self) -> None:
        """Abandon everything at once, like kill -9: no commit, no goodbye."""
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


@pytest.fixture
async def start_worker() -> AsyncIterator[Callable[[Settings], RunningWorker]]:
    workers: list[RunningWorker] = []

    def start(settings: Settings) -> RunningWorker:
        worker = RunningWorker(settings).start()
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        if worker.task is not None and not worker.task.done():
            await worker.crash()


# --- talking to topics directly ---------------------------------------------


async def produce(
    bootstrap: str,
    topic: str,
    values: list[bytes | None],
    keys: list[bytes | None] | None = None,
    headers: list[list[tuple[str, bytes]]] | None = None,
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    await producer.start()
    try:
        futures = []
        for index, value in enumerate(values):
            futures.append(
                await producer.send(
                    topic,
                    value,
                    key=keys[index] if keys else None,
                    headers=headers[index] if headers else None,
                )
            )
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


@dataclass(frozen=True)
class Message:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]


async def read_topic(
    bootstrap: str, topic: str, expected: int, timeout: float = 30.0, settle: float = 0.5
) -> list[Message]:
    """Every record of `topic` from the beginning; waits for at least `expected`, then
    a little longer so that extra (unwanted) records would show up too."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    messages: list[Message] = []
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        settled_at: float | None = None
        loop = asyncio.get_running_loop()
        while loop.time() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                messages.extend(
                    Message(r.topic, r.partition, r.offset, r.key, r.value, dict(r.headers or ()))
                    for r in records
                )
            if len(messages) >= expected:
                settled_at = settled_at or loop.time()
                if loop.time() - settled_at >= settle:
                    break
    finally:
        await consumer.stop()
    return messages


async def committed_offsets(settings: Settings) -> dict[int, int | None]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=settings.group_id,
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        return {
            p: await consumer.committed(TopicPartition(settings.topic_events, p))
            for p in range(INPUT_PARTITIONS)
        }
    finally:
        await consumer.stop()


DEMO_REFERENCE = Path(__file__).parents[2] / "src" / "usage_ingest" / "dev" / "demo_reference.json"
