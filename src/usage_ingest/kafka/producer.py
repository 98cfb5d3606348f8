"""The producer of outcomes and dead letters, built on aiokafka's record batches
(`OutputProducer`), and the partitioning it shares with Kafka's default partitioner
(`murmur2`, `partition_for`).
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Iterator, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder

from usage_ingest.domain.records import OutputRecord, Partition
from usage_ingest.errors import BrokerUnavailable
from usage_ingest.kafka.connection import connection_options
from usage_ingest.settings import Settings

# Record batches of outcomes and dead letters: 1000 outcomes fill about one per partition.
_BATCH_BYTES = 256 * 1024
_PARTITIONER = DefaultPartitioner()
_MURMUR2_M, _U32 = 0x5BD1E995, 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (the Java client's `Utils.murmur2`), as aiokafka's but reading the
    key a 4-byte word at a time: about half its cost, and it runs once per outcome."""
    length = len(data)
    h = 0x9747B28C ^ length
    whole = length & ~3
    for (word,) in struct.iter_unpack("<I", data[:whole]):
        k = (word * _MURMUR2_M) & _U32
        k ^= k >> 24
        h = ((h * _MURMUR2_M) & _U32) ^ ((k * _MURMUR2_M) & _U32)
    tail = length & 3
    if tail:
        if tail == 3:  # noqa: PLR2004 - the bytes left after the last whole word
            h ^= data[whole + 2] << 16
        if tail >= 2:  # noqa: PLR2004
            h ^= data[whole + 1] << 8
        h = ((h ^ data[whole]) * _MURMUR2_M) & _U32
    h ^= h >> 13
    h = (h * _MURMUR2_M) & _U32
    return h ^ (h >> 15)


def partition_for(key: bytes | None, partitions: list[int]) -> int:
    """The partition Kafka's default partitioner gives `key` (random without one)."""
    if len(partitions) == 1:  # whatever the hash, modulo 1 it is this one
        return partitions[0]
    if key is None:
        return int(_PARTITIONER(key, partitions, partitions))
    return partitions[(murmur2(key) & 0x7FFFFFFF) % len(partitions)]


def _append(batch: BatchBuilder, record: OutputRecord) -> Any:
    """Add the record to the batch; None when the batch is full."""
    return batch.append(
        timestamp=None, key=record.key, value=record.value, headers=list(record.headers)
    )


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
            max_batch_size=_BATCH_BYTES,
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
        the caller can retry exactly those. The records go out as record batches
        built here, one per partition (more if one would pass `_BATCH_BYTES`), each
        with one acknowledgement to wait for rather than one per record.
        """
        by_partition, unsent = await self._by_partition(records)
        pending: list[tuple[list[OutputRecord], asyncio.Future[Any]]] = []
        for (topic, partition), group in by_partition.items():
            for chunk, batch in self._record_batches(group):
                batch.close()  # nothing but this chunk goes into it
                try:
                    future = await self._producer.send_batch(batch, topic, partition=partition)
                except KafkaError:
                    unsent.extend(chunk)
                    continue
                pending.append((chunk, future))
        if pending:
            await asyncio.wait([future for _, future in pending])
        failed = [
            record
            for chunk, future in pending
            if future.cancelled() or future.exception() is not None
            for record in chunk
        ]
        return unsent + failed

    async def _by_partition(
        self, records: Sequence[OutputRecord]
    ) -> tuple[dict[Partition, list[OutputRecord]], list[OutputRecord]]:
        """Records by the partition Kafka's default partitioner gives their key (murmur2,
        as the Java client; a random one without a key); those of topics whose
        partitions cannot be learnt now come back apart."""
        partitions: dict[str, list[int]] = {}
        grouped: dict[Partition, list[OutputRecord]] = {}
        unsent: list[OutputRecord] = []
        for record in records:
            if record.topic not in partitions:
                try:
                    partitions[record.topic] = sorted(
                        await self._producer.partitions_for(record.topic)
                    )
                except KafkaError:
                    partitions[record.topic] = []
            known = partitions[record.topic]
            if not known:
                unsent.append(record)
                continue
            partition = partition_for(record.key, known)
            grouped.setdefault((record.topic, partition), []).append(record)
        return grouped, unsent

    def _record_batches(
        self, records: list[OutputRecord]
    ) -> Iterator[tuple[list[OutputRecord], BatchBuilder]]:
        """The records in as few batches as `_BATCH_BYTES` allows (a batch takes its
        first record whatever its size)."""
        batch = self._producer.create_batch()
        chunk: list[OutputRecord] = []
        for record in records:
            if _append(batch, record) is None:
                if chunk:
                    yield chunk, batch
                batch, chunk = self._producer.create_batch(), []
                if _append(batch, record) is None:  # cannot happen: it is the first record
                    raise RuntimeError("an empty record batch refused a record")
            chunk.append(record)
        if chunk:
            yield chunk, batch
