"""Wiring: builds the store, consumer, producer and pipeline from settings.

Tests call the same functions with their own broker and database.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
from collections.abc import Awaitable, Callable

import structlog

from usage_ingest.errors import ConfigurationError, DependencyUnavailable
from usage_ingest.kafka.connection import broker_answers, refuse_bad_security
from usage_ingest.kafka.consumer import EventConsumer
from usage_ingest.kafka.producer import OutputProducer
from usage_ingest.settings import ENV_PREFIX, Settings
from usage_ingest.store.store import open_store
from usage_ingest.worker.metrics import Counters, WorkerMetrics
from usage_ingest.worker.operations import (
    READINESS_INTERVAL_S,
    OperationsServer,
    ReadinessCheck,
    serve_operations,
    watch_readiness,
)
from usage_ingest.worker.pipeline import Pipeline
from usage_ingest.worker.reports import WorkerReporter, this_worker

GC_THRESHOLDS = (50_000, 20, 100)
log = structlog.get_logger("usage_ingest.worker")

READINESS_TIMEOUT_S = 2.0


async def _serve_operations(
    settings: Settings, metrics: WorkerMetrics, readiness: ReadinessCheck
) -> OperationsServer | None:
    """The /metrics, /healthz and /readyz server, unless the metrics port is 0."""
    if settings.metrics_port == 0:
        return None
    try:
        server = await serve_operations(
            settings.metrics_host, settings.metrics_port, metrics, readiness
        )
    except OSError as exc:
        raise ConfigurationError(
            f"cannot serve metrics on {settings.metrics_host}:{settings.metrics_port} "
            f"({exc.strerror}): set {ENV_PREFIX}METRICS_PORT (--metrics-port)"
        ) from exc
    log.info("operations_server_started", host=settings.metrics_host, port=settings.metrics_port)
    return server


async def _start(start: Callable[[], Awaitable[None]], stop: asyncio.Event) -> None:
    """Start a client, unless `stop` is set first. Joining the group can take as long as
    the broker holds the join (up to the rebalance timeout, minutes by default); a worker
    told to stop meanwhile has no batch to finish and stops now (the caller closes the
    client either way)."""
    if stop.is_set():
        return
    starting = asyncio.ensure_future(start())
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if not starting.done():
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting
        return
    starting.result()  # its exception, if it failed


async def _start_clients(
    settings: Settings,
    pipeline: Pipeline,
    producer: OutputProducer,
    consumer: EventConsumer,
    stop: asyncio.Event,
) -> None:
    """Start the producer, then join the group: retried while the broker is away."""

    async def start_producer() -> None:
        # A broker that refuses us for good (an untrusted certificate, refused SASL
        # credentials) stops the worker with one clear line, not endless retries.
        await refuse_bad_security(settings)
        await producer.start()

    for name, start in (("OutputProducer", start_producer), ("EventConsumer", consumer.start)):
        await pipeline.retrying(f"start {name}", functools.partial(_start, start, stop), stop)
    log.info(
        "stopped_while_starting" if stop.is_set() else "worker_started",
        topic=settings.topic_events,
        group_id=settings.group_id,
        bootstrap_servers=settings.kafka_bootstrap_servers,
    )


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _being_cancelled() -> bool:
    """Whether the running task is being cancelled: abandoned, not stopped."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def run_worker(
    settings: Settings, stop: asyncio.Event, *, report_interval_s: float = READINESS_INTERVAL_S
) -> Counters:
    """Run the worker until `stop` is set: the shutdown flow of SPEC.md §6.

    Stop fetching, finish (or after the grace, abandon) the batch in flight,
    leave the group, close the clients, and report what was done.

    Every `report_interval_s` the worker checks its readiness and reports itself into the
    database (`worker.reports`); a worker that stops (not one abandoned by cancelling its
    task, as a kill would) says so in a last report.
    """
    store = await open_store(settings)
    producer = OutputProducer(settings)
    pipeline: Pipeline | None = None

    async def on_revoked(partitions: set[tuple[str, int]]) -> None:
        if pipeline is not None:
            await pipeline.on_partitions_revoked(partitions)

    consumer = EventConsumer(settings, on_revoked)
    metrics = WorkerMetrics()
    pipeline = Pipeline(settings, store, consumer, producer, metrics=metrics)

    async def readiness() -> dict[str, bool]:
        database, broker = await asyncio.gather(
            store.answers(READINESS_TIMEOUT_S), broker_answers(settings)
        )
        return {"group": consumer.in_group, "database": database, "broker": broker}

    operations: OperationsServer | None = None
    watcher = asyncio.create_task(watch_readiness(metrics, readiness, report_interval_s))
    reporter = WorkerReporter(store, metrics, this_worker(settings.group_id), report_interval_s)
    reporting = asyncio.create_task(reporter.run())
    metrics.up.set(1)
    try:
        operations = await _serve_operations(settings, metrics, readiness)
        await _start_clients(settings, pipeline, producer, consumer, stop)
        # What exists now (modules, clients, settings) lives as long as the worker: out of
        # the collector's sight, its collections scan only what the batches make.
        gc.freeze()
        # A batch makes tens of objects per record, nearly all freed by reference counting:
        # the default threshold (700) ran a collection every dozen records, about 15% of
        # the CPU of deciding a batch. Cycles are still collected, every ~50,000 objects.
        gc.set_threshold(*GC_THRESHOLDS)
        await pipeline.run(stop)
    except DependencyUnavailable:
        if not stop.is_set():
            raise
        log.warning("stopped_while_dependency_unavailable")
    except ConfigurationError:
        # A wrong setting (e.g. refused Kafka credentials): the command line reports it
        # in one line; a traceback in the log would only bury it.
        raise
    except Exception:
        log.exception("worker_failed")
        raise
    finally:
        metrics.up.set(0)
        watcher.cancel()
        await _cancel(reporting)
        # Stopping a client that never started is harmless; leaving it unclosed is not.
        await consumer.stop()
        await producer.stop()
        if not _being_cancelled():
            await reporter.last_report()
        await store.close()
        if operations is not None:
            operations.close()
            await operations.wait_closed()
        log.info(
            "worker_stopped",
            batches=pipeline.counters.batches,
            records=pipeline.counters.records,
            **pipeline.counters.by_status,
        )
    return pipeline.counters
