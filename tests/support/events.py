"""Valid usage events, sequence-numbered, produced to the input topic: where each
record landed and what the worker must make of it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer

from tests.support.broker import Offsets
from tests.support.settings import INPUT_PARTITIONS
from usage_ingest.kafka.connection import connection_options
from usage_ingest.settings import Settings

SourceKey = tuple[int, int]  # (partition, offset) of an input record


def usage_event(reference: str, index: int) -> bytes:
    """A valid event for the demo reference data (contract 1, or debtor 1 every other)."""
    day, minute = 1 + index % 28, index % 50
    body: dict[str, Any] = {
        "externalReference": reference,
        "productIdent": "demo.usage",
        "startDate": f"2026-03-{day:02d}T10:{minute:02d}:00Z",
        "endDate": f"2026-03-{day:02d}T10:{minute + 1:02d}:00+00:00",
        "unitQuantities": [{"unit": "minute", "quantity": str(1 + index % 7)}],
    }
    if index % 2:
        body["debtorId"] = 1
    else:
        body["contractId"] = 1
    return json.dumps(body).encode()


@dataclass(frozen=True)
class Outgoing:
    """A record to produce and what the worker must make of it."""

    value: bytes | None
    partition: int
    key: bytes | None
    reference: str | None  # the usage it must store; None: it must be rejected
    may_reject: bool = False  # valid, but resolution may still refuse it


@dataclass(frozen=True)
class Sent:
    """A produced record: where it landed and what it must become."""

    partition: int
    offset: int
    reference: str | None  # None: a rejection (and a dead letter) is expected
    may_reject: bool = False  # either stored under `reference` or rejected, not both

    @property
    def source(self) -> SourceKey:
        return (self.partition, self.offset)


def sequence(prefix: str, start: int, count: int) -> list[Outgoing]:
    """Sequence-numbered valid events `prefix-000000`..., round-robin over the partitions."""
    records = []
    for number in range(start, start + count):
        reference = f"{prefix}-{number:07d}"
        records.append(
            Outgoing(
                usage_event(reference, number),
                number % INPUT_PARTITIONS,
                reference.encode(),
                reference,
            )
        )
    return records


async def produce(
    settings: Settings, records: Sequence[Outgoing], chunk: int = 0, pause_s: float = 0.0
) -> list[Sent]:
    """Produce to the input topic, acks=all; returns where each record landed (the
    producer's offsets, since the embedded broker's ListOffsets under-reports)."""
    producer = AIOKafkaProducer(
        **connection_options(settings),
        acks="all",
        enable_idempotence=False,
        linger_ms=5,
        max_request_size=4 * 1024 * 1024,
    )
    await producer.start()
    sent: list[Sent] = []
    try:
        step = chunk or len(records) or 1
        for begin in range(0, len(records), step):
            part = records[begin : begin + step]
            futures = [
                await producer.send(
                    settings.topic_events, r.value, key=r.key, partition=r.partition
                )
                for r in part
            ]
            acked = await asyncio.gather(*futures)
            sent += [
                Sent(m.partition, m.offset, r.reference, r.may_reject)
                for r, m in zip(part, acked, strict=True)
            ]
            if pause_s:
                await asyncio.sleep(pause_s)
    finally:
        await producer.stop()
    return sent


def log_end(sent: Iterable[Sent]) -> Offsets:
    """Log end of each input partition of a fresh topic, from the producer's offsets."""
    ends = dict.fromkeys(range(INPUT_PARTITIONS), 0)
    for record in sent:
        ends[record.partition] = max(ends[record.partition], record.offset + 1)
    return ends
