"""The operations server: /metrics, /healthz, /readyz."""

from __future__ import annotations

import asyncio

import pytest

from usage_ingest.dev.embedded import free_port
from usage_ingest.worker.metrics import PartitionProgress, WorkerMetrics
from usage_ingest.worker.operations import serve_operations


async def get(port: int, path: str, method: str = "GET") -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    response = (await reader.read()).decode()
    writer.close()
    await writer.wait_closed()
    status = int(response.split(" ", 2)[1])
    return status, response.split("\r\n\r\n", 1)[1]


@pytest.fixture
async def server_with(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    servers = []

    async def start(checks: dict[str, bool]) -> tuple[int, WorkerMetrics]:
        metrics = WorkerMetrics()
        port = free_port()

        async def readiness() -> dict[str, bool]:
            return checks

        servers.append(await serve_operations("127.0.0.1", port, metrics, readiness))
        return port, metrics

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def test_metrics_are_served_in_prometheus_text_format(server_with) -> None:  # type: ignore[no-untyped-def]
    port, metrics = await server_with({"database": True})
    metrics.events.labels("rejected", "NO_INVENTORY").inc(3)
    progress = metrics.progress(("usage.events", 2))
    progress.committed, progress.high_watermark = 7, 10
    status, body = await get(port, "/metrics")
    assert status == 200
    assert 'usage_ingest_events_total{code="NO_INVENTORY",status="rejected"} 3.0' in body
    assert 'usage_ingest_offset_lag{partition="2",topic="usage.events"} 3.0' in body


async def test_healthz_answers_while_the_loop_runs(server_with) -> None:  # type: ignore[no-untyped-def]
    port, _ = await server_with({"database": False})
    assert (await get(port, "/healthz"))[0] == 200


@pytest.mark.parametrize(
    ("checks", "status", "gauge"),
    [({"database": True, "broker": True}, 200, 1), ({"database": False, "broker": True}, 503, 0)],
)
async def test_readyz_reflects_the_checks(server_with, checks, status, gauge) -> None:  # type: ignore[no-untyped-def]
    port, metrics = await server_with(checks)
    answer, body = await get(port, "/readyz")
    assert answer == status
    assert '"database"' in body
    assert metrics.ready._value.get() == gauge


async def test_unknown_paths_and_methods_are_refused(server_with) -> None:  # type: ignore[no-untyped-def]
    port, _ = await server_with({})
    assert (await get(port, "/nope"))[0] == 404
    assert (await get(port, "/metrics", "POST"))[0] == 405


def test_time_lag_is_zero_when_nothing_waits() -> None:
    assert PartitionProgress(committed=5, high_watermark=5).time_lag_s(10_000) == 0
    assert PartitionProgress(oldest_unprocessed_ms=4_000).time_lag_s(10_000) == 6.0
    assert PartitionProgress(committed=None, high_watermark=4).offset_lag() == 4
