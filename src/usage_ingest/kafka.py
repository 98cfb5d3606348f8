"""The Kafka adapter: the only module that talks to aiokafka.

It hands the pipeline plain `InputRecord`s, takes `OutputRecord`s back, and
turns aiokafka's errors into the project's own (`BrokerUnavailable`, retryable;
`CommitRefused`, the group moved on).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    CommitFailedError,
    KafkaError,
    TopicAlreadyExistsError,
)
from aiokafka.helpers import create_ssl_context
from aiokafka.structs import OffsetAndMetadata

from usage_ingest.errors import BrokerUnavailable, UsageIngestError
from usage_ingest.settings import SecurityProtocol, Settings

Partition = tuple[str, int]
Header = tuple[str, bytes]


class CommitRefused(UsageIngestError):
    """The group rebalanced before the commit: the new owner re-delivers the records."""


@dataclass(frozen=True, slots=True)
class InputRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[Header, ...]
    timestamp_ms: int


@dataclass(frozen=True, slots=True)
class OutputRecord:
    topic: str
    key: bytes | None
    value: bytes | None  # None is a null value (a tombstone), kept as such
    headers: tuple[Header, ...] = ()


def connection_options(settings: Settings) -> dict[str, Any]:
    """Bootstrap servers and security (TLS, SASL) shared by every client."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "security_protocol": settings.kafka_security_protocol.value,
    }
    if settings.kafka_security_protocol in (SecurityProtocol.SSL, SecurityProtocol.SASL_SSL):
        options["ssl_context"] = create_ssl_context(
            cafile=settings.kafka_ssl_cafile,
            certfile=settings.kafka_ssl_certfile,
            keyfile=settings.kafka_ssl_keyfile,
        )
    if settings.kafka_sasl_mechanism is not None:
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism.value
        options["sasl_plain_username"] = settings.kafka_sasl_username
        password = settings.kafka_sasl_password
        options["sasl_plain_password"] = password.get_secret_value() if password else None
    return options


RevokeCallback = Callable[[set[Partition]], Awaitable[None]]


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, on_revoked: RevokeCallback) -> None:
        self._on_revoked = on_revoked

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._on_revoked({(tp.topic, tp.partition) for tp in revoked})

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        """Nothing to do: fetching starts from the committed offsets."""


class EventConsumer:
    """The input topic, read in batches, with offsets committed explicitly."""

    def __init__(self, settings: Settings, on_revoked: RevokeCallback) -> None:
        self._topic = settings.topic_events
        self._listener = _Listener(on_revoked)
        self._consumer = AIOKafkaConsumer(
            **connection_options(settings),
            group_id=settings.group_id,
            client_id="usage-ingest",
            enable_auto_commit=False,
            # A group with no committed offset starts at the beginning (SPEC.md §6).
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_poll_records=settings.batch_max_records,
            session_timeout_ms=settings.kafka_session_timeout_ms,
            heartbeat_interval_ms=max(settings.kafka_session_timeout_ms // 10, 100),
            max_poll_interval_ms=settings.kafka_max_poll_interval_ms,
            rebalance_timeout_ms=settings.kafka_max_poll_interval_ms,
        )

    async def start(self) -> None:
        self._consumer.subscribe([self._topic], listener=self._listener)
        try:
            await self._consumer.start()
        except KafkaError as exc:
            await self._consumer.stop()
            raise BrokerUnavailable(f"cannot join the consumer group: {exc}") from exc

    async def stop(self) -> None:
        await self._consumer.stop()

    async def fetch(self, max_records: int, timeout_ms: int) -> list[InputRecord]:
        try:
            batches = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        except KafkaError as exc:
            raise BrokerUnavailable(f"fetch failed: {exc}") from exc
        return [
            InputRecord(
                m.topic,
                m.partition,
                m.offset,
                m.key,
                m.value,
                tuple(m.headers or ()),
                m.timestamp,
            )
            for messages in batches.values()
            for m in messages
        ]

    def assignment(self) -> set[Partition]:
        return {(tp.topic, tp.partition) for tp in self._consumer.assignment()}

    async def commit(self, next_offsets: dict[Partition, int]) -> None:
        """Commit, per partition, the offset of the next record to read."""
        offsets = {
            TopicPartition(topic, partition): OffsetAndMetadata(offset, "")
            for (topic, partition), offset in next_offsets.items()
        }
        try:
            await self._consumer.commit(offsets)
        except CommitFailedError as exc:
            raise CommitRefused(str(exc)) from exc
        except KafkaError as exc:
            raise BrokerUnavailable(f"commit failed: {exc}") from exc

    async def rewind(self, partitions: Iterable[Partition]) -> None:
        """Go back to the committed offsets, so unfinished records are fetched again."""
        assigned = self._consumer.assignment()
        for topic, partition in partitions:
            tp = TopicPartition(topic, partition)
            if tp not in assigned:
                continue
            try:
                committed = await self._consumer.committed(tp)
            except KafkaError as exc:
                raise BrokerUnavailable(f"cannot read committed offset: {exc}") from exc
            if committed is None:
                await self._consumer.seek_to_beginning(tp)
            else:
                self._consumer.seek(tp, committed)

    def highwater(self, partition: Partition) -> int | None:
        value: int | None = self._consumer.highwater(TopicPartition(*partition))
        return value


class OutputProducer:
    """Outcomes and dead letters, each acknowledged by all in-sync replicas."""

    def __init__(self, settings: Settings) -> None:
        self._producer = AIOKafkaProducer(
            **connection_options(settings),
            client_id="usage-ingest",
            acks="all",
            # An idempotent producer would need InitProducerId, which not every
            # Kafka-compatible broker offers; repeats are harmless here (§6).
            enable_idempotence=False,
            linger_ms=5,
            max_request_size=max(settings.max_message_bytes * 2, 1_048_576),
        )

    async def start(self) -> None:
        try:
            await self._producer.start()
        except KafkaError as exc:
            await self._producer.stop()
            raise BrokerUnavailable(f"cannot connect the producer: {exc}") from exc

    async def stop(self) -> None:
        await self._producer.stop()

    async def publish(self, records: Sequence[OutputRecord]) -> list[OutputRecord]:
        """Send all records and wait for every acknowledgement.

        Returns the records that were not acknowledged (empty when all were), so
        the caller can retry exactly those.
        """
        pending: list[tuple[OutputRecord, asyncio.Future[Any]]] = []
        unsent: list[OutputRecord] = []
        for record in records:
            try:
                future = await self._producer.send(
                    record.topic, record.value, key=record.key, headers=list(record.headers)
                )
            except KafkaError:
                unsent.append(record)
                continue
            pending.append((record, future))
        results = await asyncio.gather(*(f for _, f in pending), return_exceptions=True)
        failed = [
            r
            for (r, _), res in zip(pending, results, strict=True)
            if isinstance(res, BaseException)
        ]
        return unsent + failed


async def ensure_topics(
    settings: Settings, topics: Iterable[str], partitions: int = 1
) -> list[str]:
    """Create the topics that do not exist yet; returns those it created."""
    admin = AIOKafkaAdminClient(**connection_options(settings), client_id="usage-ingest-admin")
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        missing = [t for t in topics if t not in existing]
        if missing:
            # Another process may create the same topic at the same moment.
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(
                    [
                        NewTopic(name, num_partitions=partitions, replication_factor=1)
                        for name in missing
                    ]
                )
    except KafkaError as exc:
        raise BrokerUnavailable(f"cannot create topics: {exc}") from exc
    finally:
        await admin.close()
    return missing


async def follow(
    settings: Settings,
    topics: Sequence[str],
    on_value: Callable[[bytes], None],
    stop: asyncio.Event,
) -> None:
    """Hand every new record of `topics` to `on_value` until `stop` (no group, no commits)."""
    consumer = AIOKafkaConsumer(
        *topics, **connection_options(settings), group_id=None, auto_offset_reset="latest"
    )
    try:
        await consumer.start()
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=200)
            for messages in batches.values():
                for message in messages:
                    on_value(message.value or b"")
    except KafkaError as exc:
        raise BrokerUnavailable(f"cannot follow {', '.join(topics)}: {exc}") from exc
    finally:
        await consumer.stop()
