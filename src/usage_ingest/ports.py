"""The ports: what the worker's batch loop and the replay need of the outside world,
each written once. The adapters (`kafka`, `store`) implement them; unit tests use
in-memory fakes of them. Importing this loads no driver."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from usage_ingest.domain.records import (
    InputRecord,
    OutputRecord,
    Partition,
    RejectionRow,
    StoredUsage,
    UsageRow,
)
from usage_ingest.domain.resolution import ReferenceKeys, ReferenceSnapshot


class BatchWritePort(Protocol):
    """One batch's writes, all in one database transaction (SPEC.md §6, §7)."""

    async def store_usages(self, rows: Sequence[UsageRow]) -> dict[str, StoredUsage]:
        """Insert the rows whose external reference is new; per reference, the row that
        holds it now. If the database refuses a value (`StoreRefusedData`), only this
        call's writes are undone: the batch may go on with other rows."""
        ...

    async def store_rejections(self, rows: Sequence[RejectionRow], failed_at: str) -> None:
        """Keep the refusals; a source record already kept adds no second row."""
        ...


class StorePort(Protocol):
    async def fetch_reference(self, keys: ReferenceKeys) -> ReferenceSnapshot: ...

    def batch(self) -> AbstractAsyncContextManager[BatchWritePort]:
        """A transaction for one batch's writes: committed when the block ends normally,
        rolled back when it raises."""
        ...


class ConsumerPort(Protocol):
    async def fetch(self, max_records: int, timeout_ms: int) -> list[InputRecord]: ...

    def highwater(self, partition: Partition) -> int | None: ...

    async def commit(self, next_offsets: dict[Partition, int]) -> None: ...

    async def rewind(self, partitions: Iterable[Partition]) -> None: ...


class ProducerPort(Protocol):
    async def publish(self, records: Sequence[OutputRecord]) -> list[OutputRecord]: ...


class ReaderPort(Protocol):
    async def fetch(self, max_records: int, timeout_ms: int) -> list[InputRecord]: ...

    async def done(self) -> bool: ...

    async def commit(self, next_offsets: dict[Partition, int]) -> None: ...
