"""What POST /usages publishes with: a `Publisher` (a started `OutputProducer` in
tests), or an `OnDemandProducer` that starts on first use; and `publish_acknowledged`,
its one wait for the broker's acknowledgements."""

import asyncio
from collections.abc import Sequence
from typing import Protocol

from usage_ingest.domain.records import OutputRecord
from usage_ingest.errors import BrokerUnavailable
from usage_ingest.kafka.producer import OutputProducer
from usage_ingest.settings import Settings


class Publisher(Protocol):
    async def publish(self, records: Sequence[OutputRecord]) -> list[OutputRecord]: ...


async def publish_acknowledged(
    publisher: Publisher, records: Sequence[OutputRecord], timeout_s: float
) -> None:
    """Publish every record and wait, once, for all their acknowledgements; raise
    `BrokerUnavailable` (503) unless every one was acknowledged within `timeout_s`.
    Some may have been published then: publishing them again is harmless (§6)."""
    try:
        unacknowledged = await asyncio.wait_for(publisher.publish(records), timeout_s)
    except TimeoutError:
        unacknowledged = list(records)
    if unacknowledged:
        topics = sorted({record.topic for record in unacknowledged})
        raise BrokerUnavailable(
            f"the broker did not acknowledge {len(unacknowledged)} of {len(records)} "
            f"records on {', '.join(topics)}"
        )


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
