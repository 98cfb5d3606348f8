"""The lag exporter of `usage-ingest lag --serve`: its series, its health, its failures."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest
import structlog
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from usage_ingest import lag_exporter
from usage_ingest.errors import BrokerUnavailable, ConfigurationError
from usage_ingest.kafka.admin import GroupDescription, PartitionPosition
from usage_ingest.lag import LagReport, build_report
from usage_ingest.lag_exporter import (
    ExporterOptions,
    LagCollector,
    LagSnapshot,
    exporter_app,
    refresh_once,
    serve_lag_metrics,
    stale_after,
)
from usage_ingest.settings import Settings

NOW_MS = 1_800_000_000_000
NOW = NOW_MS / 1000
GROUP = "usage-ingest"


def report(*positions: PartitionPosition, state: str = "Stable", members: int = 2) -> LagReport:
    described = GroupDescription(GROUP, state, tuple(f"w{i}@10.0.0.{i}" for i in range(members)))
    return build_report(described, list(positions), NOW_MS)


def position(
    partition: int, committed: int | None, log_end: int, age_s: float = 0
) -> PartitionPosition:
    oldest = NOW_MS - int(age_s * 1000) if age_s else None
    return PartitionPosition("usage.events", partition, committed, 0, log_end, oldest)


def scrape(
    snapshot: LagSnapshot, now: float = NOW
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample the collector gives at `now`, by name and sorted labels."""
    registry = CollectorRegistry()
    registry.register(LagCollector(snapshot, clock=lambda: now))
    text = generate_latest(registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def labels(partition: int) -> tuple[tuple[str, str], ...]:
    return (("group", GROUP), ("partition", str(partition)), ("topic", "usage.events"))


def snapshot_of(read: LagReport, at: float = NOW) -> LagSnapshot:
    snapshot = LagSnapshot(GROUP, stale_after(15))
    snapshot.succeeded(read, at)
    return snapshot


def test_each_partition_has_its_offsets_and_lags() -> None:
    samples = scrape(snapshot_of(report(position(0, 40, 100, age_s=90.5), position(1, 7, 7))))
    assert samples[("usage_ingest_group_committed_offset", labels(0))] == 40
    assert samples[("usage_ingest_group_log_end_offset", labels(0))] == 100
    assert samples[("usage_ingest_group_offset_lag", labels(0))] == 60
    assert samples[("usage_ingest_group_time_lag_seconds", labels(0))] == pytest.approx(90.5)
    assert samples[("usage_ingest_group_offset_lag", labels(1))] == 0
    assert samples[("usage_ingest_group_time_lag_seconds", labels(1))] == 0


def test_a_group_that_never_committed_has_no_committed_offset_but_lags() -> None:
    samples = scrape(snapshot_of(report(position(0, None, 12, age_s=5))))
    assert ("usage_ingest_group_committed_offset", labels(0)) not in samples
    assert samples[("usage_ingest_group_offset_lag", labels(0))] == 12


def test_the_group_state_is_one_series_per_state_and_the_members_are_counted() -> None:
    samples = scrape(snapshot_of(report(position(0, 1, 1), state="Empty", members=0)))
    states = {
        dict(key)["state"]: value
        for (name, key), value in samples.items()
        if name == "usage_ingest_group_state"
    }
    assert states["Empty"] == 1
    assert set(states) >= {"Stable", "PreparingRebalance", "CompletingRebalance", "Dead"}
    assert sum(states.values()) == 1
    assert samples[("usage_ingest_group_members", (("group", GROUP),))] == 0


def test_a_state_kafka_may_add_later_is_exported_too() -> None:
    samples = scrape(snapshot_of(report(position(0, 1, 1), state="Assigning")))
    assert samples[("usage_ingest_group_state", (("group", GROUP), ("state", "Assigning")))] == 1


def test_a_partition_gone_from_the_report_loses_its_series() -> None:
    snapshot = snapshot_of(report(position(0, 1, 5), position(1, 2, 9)))
    assert ("usage_ingest_group_offset_lag", labels(1)) in scrape(snapshot)
    snapshot.succeeded(report(position(0, 1, 5)), NOW)
    samples = scrape(snapshot)
    assert ("usage_ingest_group_offset_lag", labels(0)) in samples
    assert not [key for key in samples if dict(key[1]).get("partition") == "1"]


def test_figures_older_than_the_staleness_limit_are_no_longer_exported() -> None:
    snapshot = snapshot_of(report(position(0, 1, 5)))
    assert ("usage_ingest_group_offset_lag", labels(0)) in scrape(snapshot, NOW + 60)
    later = scrape(snapshot, NOW + snapshot.stale_after_s + 1)
    assert {name for name, _ in later} == {
        "usage_ingest_group_last_refresh_timestamp_seconds",
        "usage_ingest_group_refresh_failures_total",
    }
    assert later[("usage_ingest_group_last_refresh_timestamp_seconds", (("group", GROUP),))] == NOW


def test_before_the_first_refresh_only_the_exporters_health_is_exported() -> None:
    samples = scrape(LagSnapshot(GROUP, 60))
    assert samples == {
        ("usage_ingest_group_last_refresh_timestamp_seconds", (("group", GROUP),)): 0,
        ("usage_ingest_group_refresh_failures_total", (("group", GROUP),)): 0,
    }


def test_staleness_allows_a_few_failed_refreshes() -> None:
    assert stale_after(15) == 60
    assert stale_after(30) == 120


async def test_a_failed_refresh_is_counted_logged_once_and_keeps_the_last_figures() -> None:
    snapshot = snapshot_of(report(position(0, 1, 5)), at=1.0)

    async def broker_away() -> LagReport:
        raise BrokerUnavailable("cannot describe group usage-ingest: connection refused")

    with structlog.testing.capture_logs() as logs:
        assert not await refresh_once(snapshot, broker_away)
        assert not await refresh_once(snapshot, broker_away)
    assert snapshot.failures == 2
    assert snapshot.report is not None
    assert snapshot.refreshed_at == 1.0
    assert [line["event"] for line in logs] == ["lag_refresh_failed", "lag_refresh_failed"]
    assert "connection refused" in logs[0]["error"]

    async def broker_back() -> LagReport:
        return report(position(0, 5, 5))

    with structlog.testing.capture_logs() as logs:
        assert await refresh_once(snapshot, broker_back)
    assert [line["event"] for line in logs] == ["lag_refresh_recovered"]
    assert snapshot.report is not None
    assert snapshot.report.offset_lag == 0
    assert snapshot.refreshed_at is not None
    assert snapshot.refreshed_at > 1.0


async def test_an_unexpected_error_or_a_hung_read_is_a_failure_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    snapshot = LagSnapshot(GROUP, 60)

    async def broken() -> LagReport:
        raise RuntimeError

    async def hangs() -> LagReport:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    monkeypatch.setattr(lag_exporter, "REFRESH_TIMEOUT_S", 0.01)
    with structlog.testing.capture_logs() as logs:
        assert not await refresh_once(snapshot, broken)
        assert not await refresh_once(snapshot, hangs)
    assert snapshot.failures == 2
    assert [line["error"] for line in logs] == ["RuntimeError", "TimeoutError"]


async def test_the_app_serves_metrics_and_health_on_get_only() -> None:
    registry = CollectorRegistry()
    registry.register(LagCollector(snapshot_of(report(position(0, 1, 5)))))
    transport = httpx.ASGITransport(app=exporter_app(registry))
    async with httpx.AsyncClient(transport=transport, base_url="http://exporter") as http:
        metrics = await http.get("/metrics")
        assert metrics.status_code == 200
        assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
        assert "usage_ingest_group_offset_lag{" in metrics.text
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        assert (await http.post("/metrics")).status_code == 405
        assert (await http.get("/metrics/")).status_code == 404


async def test_a_port_in_use_fails_at_start_with_one_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        options = ExporterOptions(GROUP, ["usage.events"], "127.0.0.1", port)
        with pytest.raises(
            ConfigurationError, match=rf"cannot serve lag metrics on 127.0.0.1:{port}"
        ):
            await serve_lag_metrics(Settings(), options, asyncio.Event())


@pytest.mark.parametrize(
    ("args", "refused"),
    [
        (["--json"], "--json"),
        (["--max-lag", "5", "--watch", "2"], "--max-lag, --watch"),
        (["--max-time-lag", "0"], "--max-time-lag"),
    ],
)
def test_serve_refuses_the_options_of_the_printed_report(args: list[str], refused: str) -> None:
    from click.testing import CliRunner

    from usage_ingest.cli import main

    with socket.socket() as taken:  # were the options not refused, it would fail at once
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = CliRunner().invoke(main, ["lag", "--serve", port, *args])
    assert result.exit_code == 2
    assert result.output.splitlines() == [
        f"usage-ingest: lag: --serve cannot be combined with {refused} (see --help)"
    ]
