"""The worker's consumer of the input topic (`EventConsumer`): a member of the group,
reading in batches and committing offsets explicitly, with its rebalance listener;
and `input_records`, the project's records of the messages aiokafka hands out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import OffsetAndMetadata

from usage_ingest.domain.records import InputRecord, Partition
from usage_ingest.errors import BrokerUnavailable, CommitRefused
from usage_ingest.kafka.connection import connection_options
from usage_ingest.settings import Settings

RevokeCallback = Callable[[set[Partition]], Awaitable[None]]


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, on_revoked: RevokeCallback) -> None:
        self._on_revoked = on_revoked

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._on_revoked({(tp.topic, tp.partition) for tp in revoked})

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        """Nothing to do: fetching starts from the committed offsets."""


# Once a batch has its first records, it takes more only for this long: a backlog
# fills it in a few milliseconds, and a steady trickle adds at most this latency.
_FETCH_FILL_MS = 20


class EventConsumer:
    """The input topic, read in batches, with offsets committed explicitly."""

    def __init__(self, settings: Settings, on_revoked: RevokeCallback) -> None:
        self._topic = settings.topic_events
        self._listener = _Listener(on_revoked)
        # Subscribed: holding partitions, or waiting for an assignment.
        self.in_group = False
        self._consumer = AIOKafkaConsumer(
            **connection_options(settings),
            group_id=settings.group_id,
            client_id="usage-ingest",
            enable_auto_commit=False,
            # A group with no committed offset starts at the beginning (SPEC.md §6).
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_poll_records=settings.batch_max_records,
            fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
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
        self.in_group = True

    async def stop(self) -> None:
        self.in_group = False
        await self._consumer.stop()

    async def fetch(self, max_records: int, timeout_ms: int) -> list[InputRecord]:
        """Up to `max_records` records: waits up to `timeout_ms` for the first ones,
        then keeps taking what arrives within a short linger, so a backlog is read
        in full batches (fewer round trips per record) and a trickle is not delayed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_ms / 1000
        records: list[InputRecord] = []
        while len(records) < max_records:
            wait_ms = int((deadline - loop.time()) * 1000)
            if wait_ms < 0:
                break
            batch = await self._get(max_records - len(records), wait_ms)
            if not batch:
                break
            if not records:
                deadline = min(deadline, loop.time() + _FETCH_FILL_MS / 1000)
            records.extend(batch)
        return records

    async def _get(self, max_records: int, timeout_ms: int) -> list[InputRecord]:
        try:
            batches = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        except KafkaError as exc:
            raise BrokerUnavailable(f"fetch failed: {exc}") from exc
        return input_records(batches)

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
            if tp not in self._consumer.assignment():
                # A rebalance took it while we asked (seeking it now would raise): the
                # new owner starts from the committed offset anyway.
                continue
            if committed is None:
                await self._consumer.seek_to_beginning(tp)
            else:
                self._consumer.seek(tp, committed)

    def highwater(self, partition: Partition) -> int | None:
        tp = TopicPartition(*partition)
        if tp not in self._consumer.assignment():
            return None  # revoked by a rebalance meanwhile; aiokafka would assert it is ours
        value: int | None = self._consumer.highwater(tp)
        return value


def input_records(batches: Mapping[Any, Iterable[Any]]) -> list[InputRecord]:
    """The records of what `getmany` returned (its messages by partition), in its order."""
    return [
        InputRecord(
            m.topic, m.partition, m.offset, m.key, m.value, tuple(m.headers or ()), m.timestamp
        )
        for messages in batches.values()
        for m in messages
    ]
