"""What POST /usages publishes with: a `Publisher` (a started `OutputProducer` in
tests), or an `OnDemandProducer` that starts on first use."""

import asyncio
from collections.abc import Sequence
from typing import Protocol

from usage_ingest.domain.records import OutputRecord
from usage_ingest.kafka.producer import OutputProducer
from usage_ingest.settings import Settings


class Publisher(Protocol):
    async def publish(self, records: Sequence[OutputRecord]) -> list[OutputRecord]: ...


class OnDemandProducer:
    """An `OutputProducer` started on first use: the API serves reference data while
    the broker is away, and a failed start is tried again on the next request."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._producer: OutputProducer | None = None
        self._lock = asyncio.Lock()

    async def publish(self, records: Sequence[OutputRecord]) -> list[OutputRecord]:
        return await (await self._started()).publish(records)

    async def _started(self) -> OutputProducer:
        async with self._lock:
            if self._producer is None:
                producer = OutputProducer(self._settings)
                await producer.start()  # BrokerUnavailable: it has stopped itself
                self._producer = producer
            return self._producer

    async def stop(self) -> None:
        async with self._lock:
            if self._producer is not None:
                await self._producer.stop()
                self._producer = None
