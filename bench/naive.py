"""The naive worker: one record at a time, the way many teams start. Benchmark code only.

For each record: validate it, fetch its reference data (one query), insert its row (one
statement), publish its outcome (and its dead letter, if refused) with `send_and_wait`,
commit its offset; then the next record. The business rules are the project's own
(`Pipeline.decide` on a batch of one record: the same validation, resolution, row and
outcome), so the comparison with the real worker isolates the I/O pattern: per record,
two database round trips, one or two acknowledged sends and one offset commit.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from usage_ingest.domain.records import InputRecord, OutputRecord, Partition
from usage_ingest.settings import Settings
from usage_ingest.store.store import Store
from usage_ingest.worker.pipeline import Pipeline


class _NotUsed:
    """`Pipeline.decide` needs neither a consumer nor a producer: the naive loop does
    its own fetching, publishing and committing."""

    async def fetch(self, max_records: int, timeout_ms: int) -> list[InputRecord]:
        raise NotImplementedError

    def highwater(self, partition: Partition) -> int | None:
        raise NotImplementedError

    async def commit(self, next_offsets: dict[Partition, int]) -> None:
        raise NotImplementedError

    async def rewind(self, partitions: Iterable[Partition]) -> None:
        raise NotImplementedError

    async def publish(self, records: Sequence[OutputRecord]) -> list[OutputRecord]:
        raise NotImplementedError


@dataclass(slots=True)
class NaiveResult:
    records: int
    seconds: float
    cpu_s: float
    join_s: float
    by_status: Counter[str] = field(default_factory=Counter)

    @property
    def per_second(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "seconds": round(self.seconds, 3),
            "eventsPerSecond": round(self.per_second, 1),
            "cpuSecondsPer1kEvents": round(1000 * self.cpu_s / max(self.records, 1), 4),
            "startToFirstRecordSeconds": round(self.join_s, 3),
            "byStatus": dict(sorted(self.by_status.items())),
        }


async def run_naive(settings: Settings, *, max_records: int, max_seconds: float) -> NaiveResult:
    """Process records one by one until `max_records` are done or `max_seconds` passed.

    The clock starts when the first record arrives (the group join is left out)."""
    started = time.monotonic()
    store = await Store.open(settings.require_database_url(), max_size=1)
    logic = Pipeline(settings, store, _NotUsed(), _NotUsed())
    consumer = AIOKafkaConsumer(
        settings.topic_events,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=settings.group_id,
        client_id="bench-naive",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=settings.kafka_session_timeout_ms,
        heartbeat_interval_ms=max(settings.kafka_session_timeout_ms // 10, 100),
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        client_id="bench-naive",
        acks="all",
        enable_idempotence=False,
    )
    await producer.start()
    await consumer.start()
    result = NaiveResult(0, 0.0, 0.0, 0.0)
    try:
        message = await consumer.getone()
        clock, cpu = time.monotonic(), time.process_time()
        result.join_s = clock - started
        while True:
            record = InputRecord(
                message.topic,
                message.partition,
                message.offset,
                message.key,
                message.value,
                tuple(message.headers or ()),
                message.timestamp,
            )
            outcomes, outgoing = await logic.decide([record])
            for out in outgoing:
                await producer.send_and_wait(
                    out.topic, out.value, key=out.key, headers=list(out.headers)
                )
            await consumer.commit(
                {
                    TopicPartition(message.topic, message.partition): OffsetAndMetadata(
                        message.offset + 1, ""
                    )
                }
            )
            result.records += 1
            result.by_status[outcomes[0].status] += 1
            if result.records >= max_records or time.monotonic() - clock >= max_seconds:
                break
            message = await consumer.getone()
        result.seconds = time.monotonic() - clock
        result.cpu_s = time.process_time() - cpu
    finally:
        await consumer.stop()
        await producer.stop()
        await store.close()
    return result
