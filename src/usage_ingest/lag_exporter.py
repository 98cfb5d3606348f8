"""`usage-ingest lag --serve PORT`: the group's lag as the broker sees it, for Prometheus.

The workers export lag too, but only while they run: when every worker is dead or
stuck their figures stop or vanish, which is exactly when an alert is needed. This
exporter reads the same report as `usage-ingest lag` (`read_lag_report`) every
`interval_s` seconds, whether or not a worker runs, and serves the last one read:

* `/metrics`: Prometheus text format, metric names prefixed `usage_ingest_group_`;
* `/healthz`: 200 while the process and its event loop are alive.

A refresh that fails (the broker is away, the topic is missing) is counted and
logged as one line; the exporter carries on. Figures older than `stale_after_s`
are no longer exported: a lag nobody could read is not shown as current.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import structlog
import uvicorn
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from usage_ingest.errors import ConfigurationError
from usage_ingest.lag import LagReport, read_lag_report
from usage_ingest.serving import QuietServer, listen
from usage_ingest.settings import Settings

log = structlog.get_logger("usage_ingest.lag_exporter")

# The states a Kafka consumer group can be in; each is a series of `..._group_state`,
# 1 for the current one, so that a rule can ask for `state="Empty"` even while it is 0.
GROUP_STATES = ("Stable", "PreparingRebalance", "CompletingRebalance", "Empty", "Dead", "Unknown")
DEFAULT_INTERVAL_S = 15.0
# A refresh that hangs (a broker that accepts connections and never answers) is given up.
REFRESH_TIMEOUT_S = 30.0
_CLOSE_TIMEOUT_S = 5
_PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"

ReadReport = Callable[[], Awaitable[LagReport]]


def stale_after(interval_s: float) -> float:
    """How long the last report stays exported without a successful refresh: a few
    failed refreshes in a row, so that one hiccup does not reset the alerts' `for`."""
    return max(4 * interval_s, 60.0)


@dataclass
class LagSnapshot:
    """The last report read, when it was read, and how many refreshes failed."""

    group_id: str
    stale_after_s: float
    report: LagReport | None = None
    refreshed_at: float | None = None  # Unix time of the last successful refresh
    failures: int = 0
    failing: bool = False  # the last refresh failed: the next success is logged

    def succeeded(self, report: LagReport, now: float) -> None:
        self.report, self.refreshed_at, self.failing = report, now, False

    def failed(self) -> None:
        self.failures += 1
        self.failing = True

    def current(self, now: float) -> LagReport | None:
        """The report to export now: None once it is older than `stale_after_s`."""
        if self.refreshed_at is None or now - self.refreshed_at > self.stale_after_s:
            return None
        return self.report


class LagCollector(Collector):
    """The snapshot as Prometheus series, built at each scrape: a partition that is no
    longer in the report has no series any more."""

    def __init__(self, snapshot: LagSnapshot, clock: Callable[[], float] = time.time) -> None:
        self._snapshot = snapshot
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        snapshot = self._snapshot
        report = snapshot.current(self._clock())
        if report is not None:
            yield from _partition_families(report)
            yield from _group_families(report)
        group = [snapshot.group_id]
        refreshed = GaugeMetricFamily(
            "usage_ingest_group_last_refresh_timestamp_seconds",
            "Unix time of the exporter's last successful read of the group; 0 before the first.",
            labels=["group"],
        )
        refreshed.add_metric(group, snapshot.refreshed_at or 0.0)
        failures = CounterMetricFamily(
            "usage_ingest_group_refresh_failures",
            "Reads of the group's lag that failed (broker away, topic missing...).",
            labels=["group"],
        )
        failures.add_metric(group, snapshot.failures)
        yield from (refreshed, failures)


def _partition_families(report: LagReport) -> Iterator[Metric]:
    labels = ["group", "topic", "partition"]
    committed = GaugeMetricFamily(
        "usage_ingest_group_committed_offset",
        "Offset the group committed on the partition, as the broker has it.",
        labels=labels,
    )
    log_end = GaugeMetricFamily(
        "usage_ingest_group_log_end_offset", "Log end of the partition.", labels=labels
    )
    offset_lag = GaugeMetricFamily(
        "usage_ingest_group_offset_lag",
        "Records on the partition the group has not committed.",
        labels=labels,
    )
    time_lag = GaugeMetricFamily(
        "usage_ingest_group_time_lag_seconds",
        "Age of the oldest record the group has not committed; 0 when caught up.",
        labels=labels,
    )
    for p in report.partitions:
        key = [report.group_id, p.topic, str(p.partition)]
        if p.committed is not None:  # a group that never committed has no committed offset
            committed.add_metric(key, p.committed)
        log_end.add_metric(key, p.log_end)
        offset_lag.add_metric(key, p.offset_lag)
        time_lag.add_metric(key, p.time_lag_s)
    yield from (committed, log_end, offset_lag, time_lag)


def _group_families(report: LagReport) -> Iterator[Metric]:
    state = GaugeMetricFamily(
        "usage_ingest_group_state",
        "1 for the group's current state, 0 for the others.",
        labels=["group", "state"],
    )
    for name in dict.fromkeys((*GROUP_STATES, report.state)):
        state.add_metric([report.group_id, name], 1 if name == report.state else 0)
    members = GaugeMetricFamily(
        "usage_ingest_group_members", "Members of the group.", labels=["group"]
    )
    members.add_metric([report.group_id], len(report.members))
    yield from (state, members)


# --- refreshing --------------------------------------------------------------------


async def refresh_once(snapshot: LagSnapshot, read: ReadReport) -> bool:
    """Read the report into the snapshot; a failure is counted and logged, never raised."""
    try:
        report = await asyncio.wait_for(read(), REFRESH_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - whatever the cause, the exporter carries on
        snapshot.failed()
        log.warning(
            "lag_refresh_failed",
            group=snapshot.group_id,
            error=str(exc) or type(exc).__name__,
            failures=snapshot.failures,
        )
        return False
    if snapshot.failing:
        log.info("lag_refresh_recovered", group=snapshot.group_id)
    snapshot.succeeded(report, time.time())
    return True


async def keep_refreshing(snapshot: LagSnapshot, read: ReadReport, interval_s: float) -> None:
    while True:
        await refresh_once(snapshot, read)
        await asyncio.sleep(interval_s)


# --- serving -----------------------------------------------------------------------


def exporter_app(registry: CollectorRegistry) -> Starlette:
    """`/metrics` and `/healthz`, GET only."""

    async def metrics(_request: Request) -> Response:
        return Response(generate_latest(registry), headers={"Content-Type": _PROMETHEUS_TEXT})

    async def healthz(_request: Request) -> Response:
        return Response(b'{"status":"ok"}\n', headers={"Content-Type": "application/json"})

    app = Starlette(
        routes=[Route("/metrics", metrics, methods=["GET"]), Route("/healthz", healthz)]
    )
    app.router.redirect_slashes = False
    return app


def _listen(host: str, port: int) -> list[socket.socket]:
    """Bind before anything else, so that a taken port is one clear line at start."""
    try:
        return listen(host, port)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot serve lag metrics on {host}:{port} (--host/--serve): {exc.strerror or exc}"
        ) from exc


@dataclass(frozen=True, slots=True)
class ExporterOptions:
    group_id: str
    topics: list[str]
    host: str
    port: int
    interval_s: float = DEFAULT_INTERVAL_S


async def serve_lag_metrics(
    settings: Settings, options: ExporterOptions, stop: asyncio.Event
) -> None:
    """Serve the group's lag metrics until `stop` is set."""
    sockets = _listen(options.host, options.port)
    # A refresh that fails is one `lag_refresh_failed` line carrying the client's error;
    # the client's own lines about each connection it tried would only repeat it.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    snapshot = LagSnapshot(options.group_id, stale_after(options.interval_s))
    registry = CollectorRegistry()
    registry.register(LagCollector(snapshot))
    server = QuietServer(
        uvicorn.Config(
            exporter_app(registry),
            lifespan="off",
            ws="none",
            log_config=None,
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=_CLOSE_TIMEOUT_S,
        )
    )

    def read() -> Awaitable[LagReport]:
        return read_lag_report(settings, options.group_id, options.topics)

    async def stop_when_told() -> None:
        await stop.wait()
        server.should_exit = True

    background = [
        asyncio.create_task(keep_refreshing(snapshot, read, options.interval_s)),
        asyncio.create_task(stop_when_told()),
    ]
    host, port = sockets[0].getsockname()[:2]
    log.info(
        "lag_exporter_started",
        url=f"http://{host}:{port}/metrics",
        group=options.group_id,
        topics=options.topics,
        interval_s=options.interval_s,
    )
    try:
        await server.serve(sockets=sockets)
    finally:
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        for sock in sockets:
            sock.close()
    log.info("lag_exporter_stopped", group=options.group_id)
