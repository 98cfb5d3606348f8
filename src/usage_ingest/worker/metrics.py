"""What the worker tells operators: Prometheus metrics, health and readiness.

Served on the metrics port (`--metrics-port`, default 9464) by a small HTTP
server running in the worker's own event loop, so an answer from `/healthz`
also proves the loop is not blocked:

* `/metrics`: Prometheus text format;
* `/healthz`: 200 while the process and its event loop are alive;
* `/readyz`: 200 when the database and the broker answer, 503 otherwise.

Metric names are prefixed `usage_ingest_` and documented in the README.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass

import structlog
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = structlog.get_logger("usage_ingest.worker.metrics")

# The `_created` series of counters and histograms double the output and no
# dashboard or alert here uses them.
disable_created_metrics()  # type: ignore[no-untyped-call]

Partition = tuple[str, int]
ReadinessCheck = Callable[[], Awaitable[dict[str, bool]]]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)
_BATCH_BUCKETS = (1, 5, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


@dataclass(slots=True)
class PartitionProgress:
    """Where one partition stands, as this worker last saw it."""

    committed: int | None = None
    high_watermark: int | None = None
    # Timestamp (ms) of the oldest record fetched but not yet committed.
    oldest_unprocessed_ms: int | None = None

    def offset_lag(self) -> int | None:
        if self.high_watermark is None:
            return None
        return max(self.high_watermark - (self.committed or 0), 0)

    def time_lag_s(self, now_ms: int) -> float:
        if self.oldest_unprocessed_ms is None:
            return 0.0
        return max(now_ms - self.oldest_unprocessed_ms, 0) / 1000


class _PartitionCollector(Collector):
    """Per-partition gauges, computed at scrape time from the worker's progress."""

    def __init__(self, progress: dict[Partition, PartitionProgress]) -> None:
        self._progress = progress

    def collect(self) -> Iterator[GaugeMetricFamily]:
        labels = ["topic", "partition"]
        committed = GaugeMetricFamily(
            "usage_ingest_committed_offset", "Offset committed for the partition.", labels=labels
        )
        high = GaugeMetricFamily(
            "usage_ingest_high_watermark",
            "Log end of the partition (high watermark).",
            labels=labels,
        )
        lag = GaugeMetricFamily(
            "usage_ingest_offset_lag", "Records on the partition not yet committed.", labels=labels
        )
        time_lag = GaugeMetricFamily(
            "usage_ingest_time_lag_seconds",
            "Age of the oldest unprocessed record; 0 when caught up.",
            labels=labels,
        )
        now_ms = int(time.time() * 1000)
        for (topic, partition), state in sorted(self._progress.items()):
            key = [topic, str(partition)]
            if state.committed is not None:
                committed.add_metric(key, state.committed)
            if state.high_watermark is not None:
                high.add_metric(key, state.high_watermark)
            offset_lag = state.offset_lag()
            if offset_lag is not None:
                lag.add_metric(key, offset_lag)
            time_lag.add_metric(key, state.time_lag_s(now_ms))
        yield from (committed, high, lag, time_lag)


class WorkerMetrics:
    """Every metric of the worker, in a registry of its own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "usage_ingest_events", "Records processed, by outcome status and error code.",
            ["status", "code"], registry=r,
        )  # fmt: skip
        self.batch_size = Histogram(
            "usage_ingest_batch_size_records", "Records per batch.", buckets=_BATCH_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.batch_duration = Histogram(
            "usage_ingest_batch_duration_seconds", "From fetch to offset commit.",
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.end_to_end = Histogram(
            "usage_ingest_end_to_end_latency_seconds",
            "From the record's timestamp to its outcome acknowledged by the broker.",
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.db_round_trip = Histogram(
            "usage_ingest_db_round_trip_seconds", "Database round trips, by operation.",
            ["operation"], buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.retries = Counter(
            "usage_ingest_dependency_retries", "Failed attempts that were retried, by action.",
            ["action"], registry=r,
        )  # fmt: skip
        self.waiting = Counter(
            "usage_ingest_dependency_wait_seconds",
            "Time spent backing off before retrying a dependency, by action.",
            ["action"], registry=r,
        )  # fmt: skip
        self.decision_failures = Counter(
            "usage_ingest_record_decision_failures",
            "Records refused because deciding them raised an unexpected error (a defect).",
            registry=r,
        )
        self.up = Gauge("usage_ingest_worker_up", "1 while the worker runs.", registry=r)
        self.ready = Gauge(
            "usage_ingest_worker_ready",
            "1 when the last readiness check found the database and broker reachable.",
            registry=r,
        )
        self.partitions: dict[Partition, PartitionProgress] = {}
        r.register(_PartitionCollector(self.partitions))

    def progress(self, partition: Partition) -> PartitionProgress:
        return self.partitions.setdefault(partition, PartitionProgress())

    def forget(self, partitions: Iterable[Partition]) -> None:
        """Partitions that moved to another worker are no longer reported here."""
        for partition in partitions:
            self.partitions.pop(partition, None)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


READINESS_INTERVAL_S = 10.0


async def watch_readiness(
    metrics: WorkerMetrics, readiness: ReadinessCheck, interval_s: float = READINESS_INTERVAL_S
) -> None:
    """Keep `usage_ingest_worker_ready` current even when nobody asks /readyz."""
    while True:
        checks = await readiness()
        metrics.ready.set(1 if all(checks.values()) else 0)
        await asyncio.sleep(interval_s)


async def serve_operations(
    host: str, port: int, metrics: WorkerMetrics, readiness: ReadinessCheck
) -> asyncio.Server:
    """Start the `/metrics`, `/healthz`, `/readyz` server in the running loop."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            request_line = await asyncio.wait_for(reader.readline(), timeout=5)
            while (await asyncio.wait_for(reader.readline(), timeout=5)) not in (
                b"\r\n",
                b"\n",
                b"",
            ):
                pass  # headers are not needed
            method, _, rest = request_line.decode("latin-1").partition(" ")
            path = rest.split(" ", 1)[0].split("?", 1)[0]
            status, content_type, body = await _respond(method, path, metrics, readiness)
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, host, port)


async def _respond(
    method: str, path: str, metrics: WorkerMetrics, readiness: ReadinessCheck
) -> tuple[str, str, bytes]:
    if method != "GET":
        return "405 Method Not Allowed", "text/plain", b"only GET\n"
    if path == "/metrics":
        return "200 OK", "text/plain; version=0.0.4; charset=utf-8", metrics.exposition()
    if path == "/healthz":
        return "200 OK", "application/json", b'{"status":"ok"}\n'
    if path == "/readyz":
        checks = await readiness()
        ready = all(checks.values())
        metrics.ready.set(1 if ready else 0)
        body = json.dumps({"ready": ready, "checks": checks}).encode() + b"\n"
        return ("200 OK" if ready else "503 Service Unavailable"), "application/json", body
    return "404 Not Found", "text/plain", b"not found\n"
