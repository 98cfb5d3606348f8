"""Talking to topics directly: producing raw values, reading records back, and the
consumer group's committed offsets on the input topic.

Log ends are the high watermarks of Fetch responses, not ListOffsets: the embedded
broker (tansu) under-reports the latest offset when the last batch holds several
records (DESIGN.md), and a consumer that reads from offset 0 sees the true end.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord

from tests.support.settings import INPUT_PARTITIONS
from tests.support.waiting import eventually
from usage_ingest.kafka.connection import connection_options
from usage_ingest.settings import Settings

Offsets = dict[int, int]  # partition → offset


async def produce_values(
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


async def read_to_log_end(
    settings: Settings, topic: str, partitions: int = 1, within_s: float = 60.0
) -> tuple[list[ConsumerRecord[bytes, bytes]], Offsets]:
    """Every record of `topic` below the high watermarks of fetch responses sent after
    this call began, and those high watermarks: an exact count. (A long-lived consumer
    may hold a high watermark from a fetch answered before the latest records were
    produced, so a new one reads.)"""
    reader = AIOKafkaConsumer(
        **connection_options(settings),
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=100,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    records: list[ConsumerRecord[bytes, bytes]] = []
    await reader.start()
    try:
        reader.assign(tps)
        await reader.seek_to_beginning(*tps)

        async def caught_up() -> bool:
            batches = await reader.getmany(timeout_ms=100, max_records=20_000)
            for messages in batches.values():
                records.extend(messages)
            held = Counter(r.partition for r in records)
            return all(
                (end := reader.highwater(tp)) is not None and held[tp.partition] >= end
                for tp in tps
            )

        await eventually(caught_up, within_s, f"reading {topic} up to its log end")
        ends = {tp.partition: int(reader.highwater(tp)) for tp in tps}
    finally:
        await reader.stop()
    return records, ends


async def read_all(
    settings: Settings, topic: str, partitions: int = 1, within_s: float = 60.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of `topic` up to its log end (see `read_to_log_end`)."""
    records, _ = await read_to_log_end(settings, topic, partitions, within_s)
    return records


async def committed_offsets(settings: Settings) -> dict[int, int | None]:
    """The group's committed offsets on the input topic (without joining the group)."""
    consumer = AIOKafkaConsumer(
        **connection_options(settings), group_id=settings.group_id, enable_auto_commit=False
    )
    await consumer.start()
    try:
        return {
            p: await consumer.committed(TopicPartition(settings.topic_events, p))
            for p in range(INPUT_PARTITIONS)
        }
    finally:
        await consumer.stop()


async def wait_committed(settings: Settings, ends: Offsets, within_s: float) -> float:
    """Until the committed offsets equal `ends` (an empty partition needs no commit);
    returns when that was seen (monotonic clock)."""
    last: dict[int, int | None] = {}

    async def reached() -> bool:
        nonlocal last
        last = await committed_offsets(settings)
        return {p: last.get(p) or 0 for p in ends} == ends

    try:
        await eventually(reached, within_s, "committed offsets at the log end")
    except AssertionError as exc:
        raise AssertionError(f"committed offsets {last}, log end {ends}") from exc
    return time.monotonic()
