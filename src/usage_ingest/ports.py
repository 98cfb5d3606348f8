"""The ports: what the worker's batch loop and the replay need of the outside world,
each written once. The adapters (`kafka`, `store`) implement them; unit tests use
in-memory fakes of them. Importing this loads no driver."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from usage_ingest.domain.records import InputRecord, OutputRecord, Partition, StoredUsage, UsageRow
from usage_ingest.domain.resolution import ReferenceKeys, ReferenceSnapshot


class StorePort(Protocol):
    async def fetch_reference(self, keys: ReferenceKeys) -> ReferenceSnapshot: ...

    async def store_usages(self, rows: Sequence[UsageRow]) -> dict[str, StoredUsage]: ...


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
