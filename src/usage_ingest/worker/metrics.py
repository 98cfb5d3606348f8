"""What the worker tells operators: its Prometheus metrics (served on `/metrics` by
`worker.operations`), a progress line a minute, and its counts at shutdown.

Metric names are prefixed `usage_ingest_` and documented in the README.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

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

from usage_ingest.domain.outcomes import Status
from usage_ingest.domain.records import Partition

log = structlog.get_logger("usage_ingest.worker.metrics")

# The `_created` series of counters and histograms double the output and no
# dashboard or alert here uses them.
disable_created_metrics()  # type: ignore[no-untyped-call]

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
        # The last readiness check's answers (group, database, broker); None before the first.
        self.readiness_checks: dict[str, bool] | None = None

    def note_readiness(self, checks: dict[str, bool]) -> bool:
        """Keep a readiness check's answers (the worker's reports repeat them); whether
        every one of them passed."""
        ready = all(checks.values())
        self.readiness_checks = dict(checks)
        self.ready.set(1 if ready else 0)
        return ready

    def outcome_totals(self) -> dict[tuple[str, str], int]:
        """`usage_ingest_events_total` as it stands: records by (status, code) since start."""
        totals: dict[tuple[str, str], int] = {}
        for family in self.events.collect():
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    key = (sample.labels["status"], sample.labels["code"])
                    totals[key] = int(sample.value)
        return totals

    def progress(self, partition: Partition) -> PartitionProgress:
        return self.partitions.setdefault(partition, PartitionProgress())

    def forget(self, partitions: Iterable[Partition]) -> None:
        """Partitions that moved to another worker are no longer reported here."""
        for partition in partitions:
            self.partitions.pop(partition, None)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


@dataclass(slots=True)
class Counters:
    """Outcomes since start, for the shutdown summary."""

    batches: int = 0
    records: int = 0
    by_status: dict[str, int] = field(default_factory=dict)

    def add(self, by_status: dict[Status, int]) -> None:
        for status, count in by_status.items():
            self.records += count
            self.by_status[status] = self.by_status.get(status, 0) + count


class MinuteSummary:
    """One info line a minute: throughput, outcomes and lag, for a glance at the logs."""

    PERIOD_S = 60.0

    def __init__(self) -> None:
        self._started = time.monotonic()
        self._by_status: dict[str, int] = {}

    def add(self, by_status: dict[Status, int]) -> None:
        for status, count in by_status.items():
            self._by_status[status] = self._by_status.get(status, 0) + count

    def maybe_log(self, metrics: WorkerMetrics) -> None:
        elapsed = time.monotonic() - self._started
        if elapsed < self.PERIOD_S:
            return
        records = sum(self._by_status.values())
        now_ms = int(time.time() * 1000)
        log.info(
            "worker_progress",
            records=records,
            per_second=round(records / elapsed, 1),
            offset_lag=sum(p.offset_lag() or 0 for p in metrics.partitions.values()),
            time_lag_s=max((p.time_lag_s(now_ms) for p in metrics.partitions.values()), default=0),
            **self._by_status,
        )
        self._started = time.monotonic()
        self._by_status = {}
