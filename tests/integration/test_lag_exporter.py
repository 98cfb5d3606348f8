"""`usage-ingest lag --serve`: the group's lag seen from the broker while every worker is dead.

Run as an operator runs it: two `usage-ingest run` processes and the exporter, each a real
process against the test's broker and Postgres. The workers are killed with SIGKILL, events
keep arriving, and the exporter's figures show the backlog and its wait growing.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support.broker import produce_values
from tests.support.cli import process_env, running
from tests.support.database import DEMO_REFERENCE
from tests.support.waiting import eventually
from usage_ingest.dev.embedded import free_port
from usage_ingest.domain.reference import read_reference_file
from usage_ingest.lag import read_lag_report
from usage_ingest.settings import Settings
from usage_ingest.store.store import open_store

WORKERS = 2
INTERVAL_S = "0.5"
EARLY_EVENTS = 6
LATE_EVENTS = 9

Samples = dict[str, list[tuple[dict[str, str], float]]]


def event(reference: str) -> bytes:
    return json.dumps(
        {
            "externalReference": reference,
            "contractId": 1,
            "productIdent": "demo.usage",
            "startDate": "2026-11-22T10:00:00Z",
            "endDate": "2026-11-22T10:05:00Z",
            "unitQuantities": [{"unit": "minute", "quantity": 1}],
        }
    ).encode()


async def produce(settings: Settings, references: list[str]) -> None:
    await produce_values(
        settings.kafka_bootstrap_servers, settings.topic_events, [event(r) for r in references]
    )


@dataclass
class Exporter:
    """The `usage-ingest lag --serve` process and a client of its port."""

    process: subprocess.Popen[bytes]
    http: httpx.AsyncClient

    async def scrape(self) -> Samples:
        """Samples by name, each with its labels; empty while the port does not answer."""
        assert self.process.poll() is None, f"the exporter exited ({self.process.returncode})"
        try:
            response = await self.http.get("/metrics")
        except httpx.TransportError:
            return {}
        samples: Samples = {}
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                samples.setdefault(sample.name, []).append((sample.labels, sample.value))
        return samples


def total(samples: Samples, name: str) -> float | None:
    """Sum over the partitions, None while the exporter has not read them."""
    found = samples.get(name)
    return None if not found else sum(value for _, value in found)


def worst(samples: Samples, name: str) -> float:
    return max((value for _, value in samples.get(name, [])), default=0.0)


def group_state(samples: Samples) -> tuple[str | None, float | None]:
    """The state whose series is 1, and the member count."""
    states = [
        labels["state"]
        for labels, value in samples.get("usage_ingest_group_state", [])
        if value == 1
    ]
    members = samples.get("usage_ingest_group_members")
    return (states[0] if states else None), (members[0][1] if members else None)


async def caught_up(exporter: Exporter, state: str, members: int, what: str) -> Samples:
    async def settled() -> bool:
        samples = await exporter.scrape()
        lag = total(samples, "usage_ingest_group_offset_lag")
        return lag == 0 and group_state(samples) == (state, members)

    await eventually(settled, 90, what)
    return await exporter.scrape()


async def backlog_waits_longer_and_longer(exporter: Exporter, backlog: int) -> Samples:
    """The exporter counts `backlog` records, and the oldest one's wait keeps growing."""

    async def counted() -> bool:
        samples = await exporter.scrape()
        return total(samples, "usage_ingest_group_offset_lag") == backlog and (
            worst(samples, "usage_ingest_group_time_lag_seconds") > 0
        )

    await eventually(counted, 30, f"an offset lag of {backlog} that waits")
    first_wait = worst(await exporter.scrape(), "usage_ingest_group_time_lag_seconds")

    async def grew() -> bool:
        samples = await exporter.scrape()
        return worst(samples, "usage_ingest_group_time_lag_seconds") > first_wait + 1

    await eventually(grew, 30, f"the time lag to grow past {first_wait + 1:.1f} s")
    return await exporter.scrape()


def log_events(path: Path) -> list[str]:
    names = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            names.append(str(entry.get("event")))
    return names


async def test_the_exporter_sees_the_lag_grow_after_every_worker_is_killed(
    settings: Settings, tmp_path: Path
) -> None:
    store = await open_store(settings)
    try:
        await store.load_reference(read_reference_file(DEMO_REFERENCE))
    finally:
        await store.close()
    env = process_env(settings, metrics_port=0)
    port = free_port()
    exporter_args = ["lag", "--serve", str(port), "--host", "127.0.0.1", "--interval", INTERVAL_S]
    exporter_log = tmp_path / "exporter.log"
    await produce(settings, [f"early-{i}" for i in range(EARLY_EVENTS)])

    async with AsyncExitStack() as stack:
        process = stack.enter_context(running(exporter_args, env, exporter_log))
        http = await stack.enter_async_context(
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5)
        )
        exporter = Exporter(process, http)
        workers = [
            stack.enter_context(running(["run"], env, tmp_path / f"worker-{i}.log"))
            for i in range(WORKERS)
        ]
        # Both workers in the group, the first events processed: no lag, no wait.
        samples = await caught_up(exporter, "Stable", WORKERS, "two workers, caught up")
        assert total(samples, "usage_ingest_group_committed_offset") == EARLY_EVENTS
        assert worst(samples, "usage_ingest_group_time_lag_seconds") == 0
        [(_, refreshed)] = samples["usage_ingest_group_last_refresh_timestamp_seconds"]
        assert refreshed > 0

        # Every worker dies at once; events keep arriving. The workers' own lag figures are
        # gone with them: the exporter's grow.
        for worker in workers:
            worker.send_signal(signal.SIGKILL)
            worker.wait()
        await produce(settings, [f"late-{i}" for i in range(LATE_EVENTS)])
        samples = await backlog_waits_longer_and_longer(exporter, LATE_EVENTS)
        assert total(samples, "usage_ingest_group_committed_offset") == EARLY_EVENTS
        assert total(samples, "usage_ingest_group_log_end_offset") == EARLY_EVENTS + LATE_EVENTS
        # The same figures as `usage-ingest lag` reads. (Kafka drops a dead member after
        # its session timeout; the embedded broker keeps it until the next join.)
        report = await read_lag_report(settings, settings.group_id, [settings.topic_events])
        assert group_state(samples)[1] in (0, WORKERS)
        assert report.offset_lag == LATE_EVENTS

        # A worker comes back and catches up, then stops cleanly: it leaves the group,
        # which is left Empty, with no member.
        worker = stack.enter_context(running(["run"], env, tmp_path / "worker-again.log"))
        await caught_up(exporter, "Stable", 1, "the restarted worker, caught up")
        worker.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(worker.wait, 60) == 0
        samples = await caught_up(exporter, "Empty", 0, "an Empty group after a clean stop")
        assert total(samples, "usage_ingest_group_committed_offset") == EARLY_EVENTS + LATE_EVENTS
        # With the broker there all along, no read of the group failed.
        assert samples["usage_ingest_group_refresh_failures_total"][0][1] == 0

        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 30) == 0
    events = log_events(exporter_log)
    assert events[0] == "lag_exporter_started"
    assert events[-1] == "lag_exporter_stopped"
