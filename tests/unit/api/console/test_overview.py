"""The overview's figures: which are past an alert threshold, the broker's answers
cached for a couple of seconds, and a source that fails shown as unavailable."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from usage_ingest import alert_thresholds
from usage_ingest.api.console import overview
from usage_ingest.api.console.overview import Alerts, BrokerViewCache, alerts_of, read_overview
from usage_ingest.errors import BrokerUnavailable, StatementTimedOut, StoreUnavailable
from usage_ingest.lag import LagReport, PartitionLag
from usage_ingest.settings import Settings
from usage_ingest.store.worker_reports import OutcomeCount, WorkerStatus

NOW = datetime(2026, 5, 1, 10, 0, tzinfo=UTC)


def report(*partitions: tuple[int, float]) -> LagReport:
    """Partitions as (offset lag, time lag in seconds)."""
    return LagReport(
        "g",
        "Stable",
        ("m-1",),
        tuple(
            PartitionLag("events", i, 10, 10 + lag, lag, seconds)
            for i, (lag, seconds) in enumerate(partitions)
        ),
    )


def worker(worker_id: str, *, ready: bool = True, stale: bool = False) -> WorkerStatus:
    checks = {"group": ready, "database": True, "broker": True}
    return WorkerStatus(worker_id, "host", 1, ready, checks, NOW, NOW, stale)


def test_nothing_is_highlighted_below_every_threshold() -> None:
    lag = report((alert_thresholds.OFFSET_LAG // 2, 1.0), (alert_thresholds.OFFSET_LAG // 2, 2.0))
    alerts = alerts_of(lag, [worker("w1")], alert_thresholds.REJECTION_RATIO)
    assert alerts == Alerts()
    assert not alerts.any


def test_a_topics_backlog_past_the_threshold_is_highlighted_summed_over_partitions() -> None:
    half = alert_thresholds.OFFSET_LAG // 2 + 1
    assert alerts_of(report((half, 0.0), (half, 0.0)), [worker("w1")], None).offset_lag


def test_a_partitions_time_lag_past_the_threshold_is_highlighted() -> None:
    alerts = alerts_of(report((1, 1.0), (1, alert_thresholds.TIME_LAG_S + 1)), [worker("w1")], None)
    assert alerts.time_lag
    assert alerts.time_lag_partitions == {1}
    assert alerts.any


def test_a_rejection_ratio_past_the_threshold_is_highlighted() -> None:
    assert alerts_of(None, [], alert_thresholds.REJECTION_RATIO + 0.01).rejection_ratio
    assert not alerts_of(None, [], None).rejection_ratio


def test_a_worker_not_ready_or_gone_is_highlighted() -> None:
    workers = [worker("ok"), worker("cold", ready=False), worker("gone", stale=True)]
    alerts = alerts_of(None, workers, None)
    assert alerts.workers_not_ready == {"cold", "gone"}
    assert not alerts.no_worker


def test_no_live_worker_at_all_is_highlighted_unless_the_reports_are_unavailable() -> None:
    assert alerts_of(None, [], None).no_worker
    assert alerts_of(None, [worker("gone", stale=True)], None).no_worker
    assert not alerts_of(None, None, None).no_worker  # unknown, not none


@dataclass
class FakeBroker:
    reads: int = 0
    fail: Exception | None = None
    ready: bool = True
    gate: asyncio.Event | None = None

    async def read_lag(self, _settings: Settings, group: str, topics: list[str]) -> LagReport:
        self.reads += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        assert (group, topics) == ("g-test", ["events-test"])
        return report((self.reads, 0.0))

    async def answers(self, _settings: Settings) -> bool:
        return self.ready


@dataclass
class Clock:
    now: float = 100.0

    def __call__(self) -> float:
        return self.now


SETTINGS = Settings(group_id="g-test", topic_events="events-test")


def cache_of(broker: FakeBroker, clock: Clock) -> BrokerViewCache:
    return BrokerViewCache(
        SETTINGS, ttl_s=2.0, read_lag=broker.read_lag, check_broker=broker.answers, clock=clock
    )


async def test_the_broker_is_asked_at_most_once_per_interval() -> None:
    broker, clock = FakeBroker(), Clock()
    cache = cache_of(broker, clock)
    first = await cache.get()
    clock.now += 1.9
    assert await cache.get() is first
    assert broker.reads == 1
    clock.now += 0.1
    second = await cache.get()
    assert broker.reads == 2
    assert second.lag is not None
    assert second.lag.offset_lag == 2


async def test_browsers_polling_at_once_share_one_read() -> None:
    broker = FakeBroker(gate=asyncio.Event())
    cache = cache_of(broker, Clock())
    waiting = [asyncio.create_task(cache.get()) for _ in range(5)]
    await asyncio.sleep(0)
    broker.gate.set()  # type: ignore[union-attr]
    views = await asyncio.gather(*waiting)
    assert broker.reads == 1
    assert all(view is views[0] for view in views)


async def test_a_broker_that_is_away_is_said_so_and_read_again_later() -> None:
    broker, clock = FakeBroker(fail=BrokerUnavailable("cannot describe group g-test")), Clock()
    broker.ready = False
    cache = cache_of(broker, clock)
    view = await cache.get()
    assert view.lag is None
    assert view.lag_error == "cannot describe group g-test"
    assert not view.broker_ready
    broker.fail, broker.ready = None, True
    clock.now += 2
    assert (await cache.get()).lag is not None


async def test_a_defect_in_the_lag_read_is_not_hidden() -> None:
    cache = cache_of(FakeBroker(fail=KeyError("bug")), Clock())
    with pytest.raises(KeyError):
        await cache.get()


@dataclass
class FakeStore:
    workers: list[WorkerStatus] | Exception = field(default_factory=list)
    counts: list[OutcomeCount] | Exception = field(default_factory=list)
    database_up: bool = True
    since: list[datetime] = field(default_factory=list)

    async def answers(self, timeout_s: float) -> bool:
        return self.database_up

    async def worker_statuses(self) -> list[WorkerStatus]:
        if isinstance(self.workers, Exception):
            raise self.workers
        return self.workers

    async def outcome_counts(self, since: datetime) -> list[OutcomeCount]:
        self.since.append(since)
        if isinstance(self.counts, Exception):
            raise self.counts
        return self.counts


async def test_the_overview_reads_every_source() -> None:
    minute = datetime.now(UTC).replace(second=0, microsecond=0)
    store = FakeStore(
        workers=[worker("w1")],
        counts=[OutcomeCount(minute, "created", "", 9), OutcomeCount(minute, "rejected", "X", 1)],
    )
    view = await read_overview(store, cache_of(FakeBroker(), Clock()))  # type: ignore[arg-type]
    assert view.database_ready
    assert view.broker.broker_ready
    assert view.workers == [worker("w1")]
    assert view.chart is not None
    assert view.chart.totals == {"created": 9, "duplicate": 0, "rejected": 1}
    assert view.rejection_ratio == pytest.approx(0.1)
    assert view.alerts.rejection_ratio  # 10 % is past 5 %
    assert view.problems == {}
    assert view.now - store.since[0] == timedelta(hours=1)


async def test_a_source_that_fails_is_unavailable_and_the_rest_still_shows() -> None:
    store = FakeStore(
        workers=StatementTimedOut("worker statuses: statement timeout"),
        counts=StoreUnavailable("outcomes: timeout"),
        database_up=False,
    )
    view = await read_overview(store, cache_of(FakeBroker(), Clock()))  # type: ignore[arg-type]
    assert view.workers is None
    assert view.chart is None
    assert not view.database_ready
    assert view.problems == {
        "workers": "worker statuses: statement timeout",
        "outcomes": "outcomes: timeout",
    }
    assert view.broker.lag is not None
    assert not view.alerts.no_worker


async def test_a_broker_that_hangs_is_unavailable_after_the_read_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(overview, "READ_TIMEOUT_S", 0.01)
    view = await cache_of(FakeBroker(gate=asyncio.Event()), Clock()).get()  # never opened
    assert view.lag is None
    assert view.lag_error == "the broker did not answer in time"
