"""The overview's figures: the consumer group's lag as the broker sees it (the same
report as `usage-ingest lag`), the API's and the workers' readiness, the outcomes of the
last hour, and which of them are past an alert threshold of `ops/prometheus-alerts.yml`.

Every source may be away on its own: a broker that does not answer, a database that
fails, a store method that raises; the page still renders and says which is unavailable.
What asks the broker is cached for a couple of seconds (`BrokerViewCache`), so that many
browsers polling the overview cost the broker one request per interval.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TypeVar

import structlog

from usage_ingest import alert_thresholds
from usage_ingest.api.console.chart import Chart, outcome_chart, rejection_ratio
from usage_ingest.api.routes.operations import READINESS_TIMEOUT_S
from usage_ingest.errors import UsageIngestError
from usage_ingest.kafka.connection import broker_answers
from usage_ingest.lag import LagReport, read_lag_report
from usage_ingest.settings import Settings
from usage_ingest.store.store import Store
from usage_ingest.store.worker_reports import WorkerStatus
from usage_ingest.times import utc_now

log = structlog.get_logger("usage_ingest.api.console")
T = TypeVar("T")

CACHE_TTL_S = 2.0
READ_TIMEOUT_S = 3.0  # for each source: the broker, the workers' reports, the outcomes
CHART_MINUTES = 60
# The window of UsageIngestRejectionRateHigh's rate().
RATIO_WINDOW = timedelta(minutes=10)
# A source that fails so is shown as unavailable; anything else is a defect, and raises.
_UNAVAILABLE = (UsageIngestError, TimeoutError)


@dataclass(frozen=True, slots=True)
class BrokerView:
    """What the broker said, read at most every CACHE_TTL_S seconds."""

    lag: LagReport | None
    lag_error: str | None
    broker_ready: bool


LagReader = Callable[[Settings, str, list[str]], Awaitable[LagReport]]
BrokerCheck = Callable[[Settings], Awaitable[bool]]


class BrokerViewCache:
    """The group's lag and the broker's readiness, shared by every request for a couple
    of seconds; one read at a time."""

    def __init__(
        self,
        settings: Settings,
        *,
        ttl_s: float = CACHE_TTL_S,
        read_lag: LagReader = read_lag_report,
        check_broker: BrokerCheck = broker_answers,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._ttl_s = ttl_s
        self._read_lag = read_lag
        self._check_broker = check_broker
        self._clock = clock
        self._lock = asyncio.Lock()
        self._view: BrokerView | None = None
        self._read_at = float("-inf")

    async def get(self) -> BrokerView:
        async with self._lock:
            if self._view is None or self._clock() - self._read_at >= self._ttl_s:
                self._view = await self._read()
                self._read_at = self._clock()
            return self._view

    async def _read(self) -> BrokerView:
        settings = self._settings
        lag, ready = await asyncio.gather(
            _within(self._read_lag(settings, settings.group_id, [settings.topic_events])),
            self._check_broker(settings),
            return_exceptions=True,
        )
        if isinstance(lag, BaseException) and not isinstance(lag, _UNAVAILABLE):
            raise lag
        if isinstance(ready, BaseException):
            raise ready
        if isinstance(lag, BaseException):
            log.warning("console_lag_unavailable", error=str(lag) or type(lag).__name__)
            return BrokerView(None, str(lag) or "the broker did not answer in time", ready)
        return BrokerView(lag, None, ready)


async def _within(call: Awaitable[T]) -> T:
    """`call`, or TimeoutError after READ_TIMEOUT_S (asyncio.timeout, not wait_for, which
    on 3.11 can swallow a cancellation that lands as the call completes)."""
    async with asyncio.timeout(READ_TIMEOUT_S):
        return await call


@dataclass(frozen=True, slots=True)
class Alerts:
    """The figures past a threshold of the alert rules (`alert_thresholds`)."""

    offset_lag: bool = False  # UsageIngestLagGrowing: a topic's backlog
    time_lag: bool = False  # UsageIngestTimeLagHigh
    time_lag_partitions: frozenset[int] = frozenset()
    rejection_ratio: bool = False  # UsageIngestRejectionRateHigh
    workers_not_ready: frozenset[str] = frozenset()  # UsageIngestWorkerNotReady
    no_worker: bool = False  # UsageIngestWorkerDown, for all of them

    @property
    def any(self) -> bool:
        return bool(
            self.offset_lag
            or self.time_lag
            or self.rejection_ratio
            or self.workers_not_ready
            or self.no_worker
        )


def alerts_of(
    lag: LagReport | None, workers: list[WorkerStatus] | None, ratio: float | None
) -> Alerts:
    """Which figures to highlight. The rules also wait (`for:`) and watch the backlog
    grow before they fire; the console shows the threshold crossed, at once."""
    slow = frozenset(
        p.partition
        for p in (lag.partitions if lag else ())
        if p.time_lag_s > alert_thresholds.TIME_LAG_S
    )
    live = [w for w in workers or () if not w.stale]
    return Alerts(
        offset_lag=lag is not None
        and any(t.offset_lag > alert_thresholds.OFFSET_LAG for t in lag.topics),
        time_lag=bool(slow),
        time_lag_partitions=slow,
        rejection_ratio=ratio is not None and ratio > alert_thresholds.REJECTION_RATIO,
        workers_not_ready=frozenset(w.worker_id for w in workers or () if w.stale or not w.ready),
        no_worker=workers is not None and not live,
    )


@dataclass(frozen=True, slots=True)
class Overview:
    now: datetime
    broker: BrokerView
    database_ready: bool
    workers: list[WorkerStatus] | None  # None: unavailable
    chart: Chart | None  # None: unavailable
    rejection_ratio: float | None
    alerts: Alerts
    problems: dict[str, str] = field(default_factory=dict)  # what is unavailable, and why


async def _guarded(what: str, call: Awaitable[T], problems: dict[str, str]) -> T | None:
    try:
        return await _within(call)
    except _UNAVAILABLE as exc:
        log.warning("console_source_unavailable", source=what, error=str(exc))
        problems[what] = str(exc) or type(exc).__name__
        return None


async def read_overview(store: Store, cache: BrokerViewCache) -> Overview:
    now = utc_now()
    since = now - timedelta(minutes=CHART_MINUTES)
    problems: dict[str, str] = {}
    broker, database, workers, counts = await asyncio.gather(
        cache.get(),
        store.answers(READINESS_TIMEOUT_S),
        _guarded("workers", store.worker_statuses(), problems),
        _guarded("outcomes", store.outcome_counts(since), problems),
    )
    chart = None if counts is None else outcome_chart(counts, now, CHART_MINUTES)
    ratio = None if counts is None else rejection_ratio(counts, now - RATIO_WINDOW)
    return Overview(
        now,
        broker,
        database,
        workers,
        chart,
        ratio,
        alerts_of(broker.lag, workers, ratio),
        problems,
    )
