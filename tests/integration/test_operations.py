"""What an on-call engineer sees: lag before and after the worker runs, outcome
metrics split by status and code, and readiness through a database outage."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from tests.support.broker import produce_values
from tests.support.database import DEMO_REFERENCE
from tests.support.settings import create_topics, make_settings
from tests.support.worker import RunningWorker
from usage_ingest.dev.embedded import free_port
from usage_ingest.dev.postgres import EmbeddedPostgres
from usage_ingest.domain.reference import read_reference_file
from usage_ingest.lag import read_lag_report
from usage_ingest.settings import Settings
from usage_ingest.store.store import open_store

CLI = str(Path(sys.executable).with_name("usage-ingest"))


def event(reference: str, product: str = "demo.usage", minutes: int = 1) -> bytes:
    return json.dumps(
        {
            "externalReference": reference,
            "contractId": 1,
            "productIdent": product,
            "startDate": "2026-11-22T10:00:00Z",
            "endDate": "2026-11-22T10:05:00Z",
            "unitQuantities": [{"unit": "minute", "quantity": minutes}],
        }
    ).encode()


# 20 new usages, 5 re-sent unchanged, 3 for an unknown product, 2 unreadable.
WORKLOAD = (
    [event(f"ops-{i}") for i in range(20)]
    + [event(f"ops-{i}") for i in range(5)]
    + [event(f"ops-unknown-{i}", product="no.such.product") for i in range(3)]
    + [b"{not json", b""]
)
EXPECTED = {
    ("created", ""): 20,
    ("duplicate", ""): 5,
    ("rejected", "UNKNOWN_PRODUCT"): 3,
    ("rejected", "MALFORMED_MESSAGE"): 2,
}


@pytest.fixture
async def own_postgres(tmp_path: Path) -> AsyncIterator[EmbeddedPostgres]:
    """A Postgres of this test's own, so that it can be stopped."""
    server = EmbeddedPostgres(tmp_path / "pg")
    await asyncio.to_thread(server.start)
    yield server
    await asyncio.to_thread(server.stop)


def lag_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "USAGE_INGEST_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "USAGE_INGEST_GROUP_ID": settings.group_id,
        "USAGE_INGEST_TOPIC_EVENTS": settings.topic_events,
    }
    return subprocess.run(
        [CLI, "lag", *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


async def wait_for(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if await condition():  # type: ignore[misc]
            return
        await asyncio.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def outcome_counts(metrics_text: str) -> dict[tuple[str, str], int]:
    counts = {}
    for line in metrics_text.splitlines():
        if line.startswith("usage_ingest_events_total{"):
            labels, value = line.removeprefix("usage_ingest_events_total{").split("} ")
            parsed = dict(part.split("=") for part in labels.split(","))
            key = (parsed["status"].strip('"'), parsed["code"].strip('"'))
            counts[key] = int(float(value))
    return counts


async def test_lag_metrics_and_readiness_as_operators_see_them(
    kafka_bootstrap: str, own_postgres: EmbeddedPostgres
) -> None:
    port = free_port()
    settings = make_settings(kafka_bootstrap, own_postgres.url, metrics_port=port)
    await create_topics(settings)
    store = await open_store(settings)
    await store.migrate()
    await store.load_reference(read_reference_file(DEMO_REFERENCE))
    await store.close()

    # While no worker runs, the whole backlog is lag.
    await produce_values(kafka_bootstrap, settings.topic_events, list(WORKLOAD))
    before = lag_cli(settings, "--json", "--max-lag", "0")
    report = json.loads(before.stdout)
    assert report["offsetLag"] == len(WORKLOAD)
    assert report["timeLagSeconds"] > 0
    assert before.returncode == 1, "--max-lag 0 must fail while records wait"
    assert "offset lag 30 exceeds 0" in report["exceeded"]

    worker = RunningWorker(settings).start()
    try:

        async def caught_up() -> bool:
            return (
                await read_lag_report(settings, settings.group_id, [settings.topic_events])
            ).offset_lag == 0

        await wait_for(caught_up, 60, "the worker to catch up")
        after = lag_cli(settings, "--json", "--max-lag", "0", "--max-time-lag", "0")
        assert after.returncode == 0, after.stdout + after.stderr
        assert json.loads(after.stdout)["offsetLag"] == 0
        assert json.loads(after.stdout)["timeLagSeconds"] == 0

        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            metrics = (await http.get("/metrics")).text
            assert outcome_counts(metrics) == EXPECTED
            assert "usage_ingest_worker_up 1.0" in metrics
            lags = [
                line.rsplit(" ", 1)[1]
                for line in metrics.splitlines()
                if line.startswith("usage_ingest_offset_lag{")
            ]
            assert lags, "no per-partition lag exported"
            assert set(lags) == {"0.0"}
            assert (await http.get("/healthz")).status_code == 200
            assert (await http.get("/readyz")).status_code == 200

            # The database goes away: not ready. It comes back: ready again.
            await asyncio.to_thread(own_postgres.kill)

            async def readiness_is(status: int) -> bool:
                return (await http.get("/readyz")).status_code == status

            await wait_for(lambda: readiness_is(503), 20, "/readyz to turn 503")
            body = (await http.get("/readyz")).json()
            assert body["checks"] == {"group": True, "database": False, "broker": True}
            await asyncio.to_thread(own_postgres.start)
            await wait_for(lambda: readiness_is(200), 30, "/readyz to recover")
    finally:
        await worker.stop()


async def test_lag_of_a_group_that_committed_and_stopped(
    settings: Settings, start_worker: Callable[[Settings], RunningWorker]
) -> None:
    store = await open_store(settings)
    await store.load_reference(read_reference_file(DEMO_REFERENCE))
    await store.close()
    await produce_values(settings.kafka_bootstrap_servers, settings.topic_events, [event("first")])
    worker = start_worker(settings)

    async def caught_up() -> bool:
        return (
            await read_lag_report(settings, settings.group_id, [settings.topic_events])
        ).offset_lag == 0

    await wait_for(caught_up, 60, "the first event to be committed")
    await worker.stop()

    await produce_values(
        settings.kafka_bootstrap_servers,
        settings.topic_events,
        [event(f"late-{i}") for i in range(7)],
    )
    report = await read_lag_report(settings, settings.group_id, [settings.topic_events])
    assert report.offset_lag == 7
    assert sum(p.committed or 0 for p in report.partitions) == 1
    table = lag_cli(settings)
    assert table.returncode == 0
    assert settings.topic_events in table.stdout
    assert "total" in table.stdout
