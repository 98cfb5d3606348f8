"""What the administration and the lag report ask the cluster: topics created if
missing (`ensure_topics`), a group's state and members (`describe_group`), and the
positions of its partitions (`read_positions`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from usage_ingest.errors import BrokerUnavailable
from usage_ingest.kafka.connection import connection_options
from usage_ingest.settings import Settings


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


# =============================================================================
# Consumer lag (`usage-ingest lag`, see `usage_ingest.lag`)
#
# Committed offsets are read the way a member of the group reads them, without
# joining it. The log end is the high watermark of a fetch response: some
# Kafka-compatible brokers under-report it in ListOffsets, so the larger of the
# two is taken. The record at the committed offset gives the time lag.
# =============================================================================

_LAG_FETCH_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class PartitionPosition:
    topic: str
    partition: int
    committed: int | None
    log_start: int
    log_end: int
    # Timestamp (ms) of the record at the committed offset: the oldest unprocessed one.
    oldest_unprocessed_ms: int | None


@dataclass(frozen=True, slots=True)
class GroupDescription:
    group_id: str
    state: str
    members: tuple[str, ...]


async def describe_group(settings: Settings, group_id: str) -> GroupDescription:
    """The group's state (Stable, Empty, Dead...) and its members' client ids and hosts."""
    admin = AIOKafkaAdminClient(**connection_options(settings), client_id="usage-ingest-lag")
    try:
        await admin.start()
        [response] = await admin.describe_consumer_groups([group_id])
        _, _, state, _, _, members = response.groups[0][:6]
        return GroupDescription(
            group_id,
            state or "Unknown",
            tuple(sorted(f"{m[1] or m[0]}@{m[2] or '?'}" for m in members)),
        )
    except KafkaError as exc:
        raise BrokerUnavailable(f"cannot describe group {group_id}: {exc}") from exc
    finally:
        await admin.close()


async def read_positions(
    settings: Settings, group_id: str, topics: Sequence[str]
) -> list[PartitionPosition]:
    """Committed offset, log end and oldest unprocessed record of every partition."""
    consumer = AIOKafkaConsumer(
        **connection_options(settings),
        group_id=group_id,
        client_id="usage-ingest-lag",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=1,
    )
    try:
        await consumer.start()
        partitions = await _partitions_of(consumer, topics)
        committed = {tp: await consumer.committed(tp) for tp in partitions}
        listed = await consumer.end_offsets(partitions) if partitions else {}
        starts = await consumer.beginning_offsets(partitions) if partitions else {}
        consumer.assign(partitions)
        for tp in partitions:
            consumer.seek(tp, committed[tp] if committed[tp] is not None else starts[tp])
        oldest = await _first_records(consumer, committed)
        return [
            PartitionPosition(
                tp.topic,
                tp.partition,
                committed[tp],
                starts[tp],
                max(listed.get(tp, 0), consumer.highwater(tp) or 0),
                oldest.get(tp),
            )
            for tp in partitions
        ]
    except KafkaError as exc:
        raise BrokerUnavailable(f"cannot read offsets of group {group_id}: {exc}") from exc
    finally:
        await consumer.stop()


async def _partitions_of(consumer: AIOKafkaConsumer, topics: Sequence[str]) -> list[TopicPartition]:
    known = await consumer.topics()
    missing = [t for t in topics if t not in known]
    if missing:
        raise BrokerUnavailable(f"no such topic: {', '.join(missing)}")
    return sorted(
        TopicPartition(topic, p)
        for topic in topics
        for p in consumer.partitions_for_topic(topic) or ()
    )


async def _first_records(
    consumer: AIOKafkaConsumer, committed: dict[TopicPartition, int | None]
) -> dict[TopicPartition, int]:
    """Timestamps of the records at the committed offsets. Fetches until every
    partition has shown that record, or a high watermark saying there is none."""
    first: dict[TopicPartition, int] = {}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _LAG_FETCH_TIMEOUT_S

    def caught_up(tp: TopicPartition) -> bool:
        high = consumer.highwater(tp)
        return high is not None and high <= consumer_position(tp)

    def consumer_position(tp: TopicPartition) -> int:
        offset = committed[tp]
        return offset if offset is not None else 0

    pending = set(committed)
    while pending and loop.time() < deadline:
        batches = await consumer.getmany(*pending, timeout_ms=200, max_records=len(pending))
        for tp, messages in batches.items():
            if messages:
                first.setdefault(tp, messages[0].timestamp)
                consumer.pause(tp)
        pending = {tp for tp in pending if tp not in first and not caught_up(tp)}
    return first
