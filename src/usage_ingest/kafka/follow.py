"""Following topics as they grow, with no group and no commits (`follow`): how
`usage-ingest dev` prints the outcomes the worker writes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from usage_ingest.errors import BrokerUnavailable
from usage_ingest.kafka.connection import connection_options
from usage_ingest.settings import Settings


async def follow(
    settings: Settings,
    topics: Sequence[str],
    on_value: Callable[[bytes], None],
    stop: asyncio.Event,
) -> None:
    """Hand every new record of `topics` to `on_value` until `stop` (no group, no commits)."""
    consumer = AIOKafkaConsumer(
        *topics, **connection_options(settings), group_id=None, auto_offset_reset="latest"
    )
    try:
        await consumer.start()
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=200)
            for messages in batches.values():
                for message in messages:
                    on_value(message.value or b"")
    except KafkaError as exc:
        raise BrokerUnavailable(f"cannot follow {', '.join(topics)}: {exc}") from exc
    finally:
        await consumer.stop()
