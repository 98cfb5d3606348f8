"""Wiring: builds the store, consumer, producer and pipeline from settings.

Tests call the same functions with their own broker and database.
"""

from __future__ import annotations

import asyncio

import structlog

from usage_ingest.errors import DependencyUnavailable
from usage_ingest.kafka import EventConsumer, OutputProducer
from usage_ingest.pipeline import Counters, Pipeline
from usage_ingest.settings import Settings
from usage_ingest.store import Store

log = structlog.get_logger("usage_ingest.worker")


async def open_store(settings: Settings) -> Store:
    return await Store.open(
        settings.require_database_url(),
        max_size=settings.db_pool_max_size,
        statement_timeout_s=settings.db_statement_timeout_s,
    )


async def run_worker(settings: Settings, stop: asyncio.Event) -> Counters:
    """Run the worker until `stop` is set: the shutdown flow of SPEC.md §6.

    Stop fetching, finish (or after the grace, abandon) the batch in flight,
    leave the group, close the clients, and report what was done.
    """
    store = await open_store(settings)
    producer = OutputProducer(settings)
    pipeline: Pipeline | None = None

    async def on_revoked(partitions: set[tuple[str, int]]) -> None:
        if pipeline is not None:
            await pipeline.on_partitions_revoked(partitions)

    consumer = EventConsumer(settings, on_revoked)
    pipeline = Pipeline(settings, store, consumer, producer)
    started: list[EventConsumer | OutputProducer] = []
    try:
        for client in (producer, consumer):
            await pipeline.retrying(f"start {type(client).__name__}", client.start, stop)
            started.append(client)
        log.info(
            "worker_started",
            topic=settings.topic_events,
            group_id=settings.group_id,
            bootstrap_servers=settings.kafka_bootstrap_servers,
        )
        await pipeline.run(stop)
    except DependencyUnavailable:
        if not stop.is_set():
            raise
        log.warning("stopped_while_dependency_unavailable")
    except Exception:
        log.exception("worker_failed")
        raise
    finally:
        for client in reversed(started):
            await client.stop()
        await store.close()
        log.info(
            "worker_stopped",
            batches=pipeline.counters.batches,
            records=pipeline.counters.records,
            **pipeline.counters.by_status,
        )
    return pipeline.counters
