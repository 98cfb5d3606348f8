"""In-memory fakes of the batch loop's ports (`StorePort`, `ConsumerPort` and
`ProducerPort` of `ports.py`), records to feed them, and a `Pipeline` run on them until
every batch is drained."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime
from typing import Any

from usage_ingest.domain.records import (
    InputRecord,
    OutputRecord,
    Partition,
    RejectionRow,
    StoredUsage,
    UsageRow,
)
from usage_ingest.domain.resolution import (
    Contract,
    Inventory,
    ProductItem,
    ReferenceKeys,
    ReferenceSnapshot,
)
from usage_ingest.errors import CommitRefused, StoreRefusedData, StoreUnavailable
from usage_ingest.settings import Settings
from usage_ingest.worker.pipeline import Pipeline

TOPIC = "usage.events"
FIXED_NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def event(reference: str = "ref-1", quantity: Any = "1", **fields: Any) -> bytes:
    body = {
        "externalReference": reference,
        "contractId": 7,
        "productIdent": "voice.uk",
        "startDate": "2026-11-22T10:00:00Z",
        "endDate": "2026-11-22T10:01:00Z",
        "unitQuantities": [{"unit": "minute", "quantity": quantity}],
    }
    body.update(fields)
    return json.dumps(body).encode()


def record(value: bytes | None, offset: int = 0, partition: int = 0, **kw: Any) -> InputRecord:
    return InputRecord(
        topic=TOPIC,
        partition=partition,
        offset=offset,
        key=kw.get("key"),
        value=value,
        headers=tuple(kw.get("headers", ())),
        timestamp_ms=1_795_000_000_000,
    )


class FakeStore:
    """Reference data of one contract; usages kept in a dict like the unique index, and
    refusals in one keyed by source like `usage_rejections`. Each batch's writes are
    kept only when its `batch()` block ends normally, like a transaction."""

    def __init__(self, events: list[str] | None = None) -> None:
        self.snapshot = ReferenceSnapshot.build(
            operating_sites=["GB-LON"],
            products=[ProductItem(1, "voice.uk", "USAGE_BASED", "ACTIVE")],
            contracts=[Contract(7, 3, 100, date(2026, 1, 1), None)],
            inventories=[Inventory(11, 100, 1, date(2026, 1, 1), None, True)],
        )
        self.rows: dict[str, tuple[int, UsageRow]] = {}
        self.rejections: dict[tuple[str, int, int], tuple[str, RejectionRow]] = {}
        self.failures_left = 0  # transactions that fail as they begin: the database is down
        self.rejection_failures_left = 0  # ... that fail at their refusals, usages written
        self.refused_references: set[str] = set()
        self.calls = 0  # transactions begun
        self.committed: list[FakeBatch] = []
        # What it committed, in order: pass a `FakeConsumer`'s events to see it among
        # the publishing and the offset commits.
        self.events = events if events is not None else []

    async def fetch_reference(self, keys: ReferenceKeys) -> ReferenceSnapshot:
        return self.snapshot

    @asynccontextmanager
    async def batch(self) -> AsyncIterator[FakeBatch]:
        self.calls += 1
        if self.failures_left:
            self.failures_left -= 1
            raise StoreUnavailable("database is down")
        batch = FakeBatch(self)
        yield batch
        for reference, held in batch.rows.items():
            self.rows.setdefault(reference, held)
        for source, kept in batch.rejections.items():
            self.rejections.setdefault(source, kept)
        self.committed.append(batch)
        self.events.append(f"stored {len(batch.rows)} usages, {len(batch.rejections)} rejections")


class FakeBatch:
    """The writes of one batch, visible to the store once the batch ends normally."""

    def __init__(self, store: FakeStore) -> None:
        self.store = store
        self.rows: dict[str, tuple[int, UsageRow]] = {}
        self.rejections: dict[tuple[str, int, int], tuple[str, RejectionRow]] = {}
        self.usage_calls: list[list[UsageRow]] = []
        self.rejection_calls: list[list[RejectionRow]] = []

    async def store_usages(self, rows: Sequence[UsageRow]) -> dict[str, StoredUsage]:
        self.usage_calls.append(list(rows))
        if any(r.external_reference in self.store.refused_references for r in rows):
            raise StoreRefusedData("value out of range")
        result = {}
        for row in rows:
            held_before = self.store.rows.get(row.external_reference)
            if held_before is None and row.external_reference not in self.rows:
                self.rows[row.external_reference] = (
                    len(self.store.rows) + len(self.rows) + 1,
                    row,
                )
            usage_id, held = held_before or self.rows[row.external_reference]
            result[row.external_reference] = StoredUsage(
                usage_id,
                held is row,
                held.payload_hash,
                held.source_topic,
                held.source_partition,
                held.source_offset,
            )
        return result

    async def store_rejections(self, rows: Sequence[RejectionRow], failed_at: str) -> None:
        self.rejection_calls.append(list(rows))
        if self.store.rejection_failures_left:
            self.store.rejection_failures_left -= 1
            raise StoreUnavailable("connection lost")
        for row in rows:
            source = (row.source_topic, row.source_partition, row.source_offset)
            if source not in self.store.rejections:
                self.rejections.setdefault(source, (failed_at, row))


class FakeConsumer:
    def __init__(self, batches: list[list[InputRecord]]) -> None:
        self.batches = batches
        self.commits: list[dict[Partition, int]] = []
        self.events: list[str] = []
        self.on_drained: Callable[[], None] = lambda: None
        self.refuse_commits = 0

    async def fetch(self, max_records: int, timeout_ms: int) -> list[InputRecord]:
        await asyncio.sleep(0)
        if self.batches:
            return self.batches.pop(0)
        self.on_drained()
        return []

    async def commit(self, next_offsets: dict[Partition, int]) -> None:
        if self.refuse_commits:
            self.refuse_commits -= 1
            self.events.append("commit refused")
            raise CommitRefused("the group rebalanced")
        self.events.append("commit")
        self.commits.append(next_offsets)

    async def rewind(self, partitions: Iterable[Partition]) -> None:
        self.events.append("rewind")

    def highwater(self, partition: Partition) -> int | None:
        return None


class FakeProducer:
    def __init__(self, consumer: FakeConsumer, fail_first: int = 0) -> None:
        self.sent: list[OutputRecord] = []
        self.fail_first = fail_first
        self.consumer = consumer

    async def publish(self, records: Sequence[OutputRecord]) -> list[OutputRecord]:
        if self.fail_first:
            self.fail_first -= 1
            self.sent.extend(records[:1])
            return list(records[1:])
        self.sent.extend(records)
        self.consumer.events.append(f"published {len(records)}")
        return []

    def on(self, topic: str) -> list[dict[str, Any]]:
        return [json.loads(r.value) for r in self.sent if r.topic == topic]


def settings() -> Settings:
    return Settings(retry_initial_backoff_s=0.001, retry_max_backoff_s=0.002)


def make_pipeline(
    batches: list[list[InputRecord]], **producer: Any
) -> tuple[Pipeline, FakeStore, FakeConsumer, FakeProducer]:
    store, consumer = FakeStore(), FakeConsumer(batches)
    out = FakeProducer(consumer, **producer)
    return Pipeline(settings(), store, consumer, out, clock=lambda: FIXED_NOW), store, consumer, out


async def run_until_drained(pipeline: Pipeline, consumer: FakeConsumer) -> None:
    """Run the loop until every batch was fetched and the last one finished."""
    stop = asyncio.Event()
    consumer.on_drained = stop.set
    await asyncio.wait_for(pipeline.run(stop), 5)
