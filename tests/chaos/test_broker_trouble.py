"""Scenario 3, broker trouble: a TCP proxy between the worker and the broker first
resets every connection, then turns into a black hole for the worker's connections,
mid-batch, for longer than the session timeout. Meanwhile a second worker joins:
the group drops the silent member and hands its partitions, uncommitted batch
included, to the newcomer. When the black hole heals, the first worker's late
commit must be refused, its batch abandoned, and it must rejoin; nothing may be
lost and no row doubled.

(The embedded broker expires a silent member only when the group rebalances, which
is why the newcomer is needed; Apache Kafka's coordinator expires it on a timer.)

The broker is one of this test's own: tansu advertises its listener address in
metadata, so it is started with the proxy's port as its advertised address, and
every client (the worker's and the test's) goes through the proxy.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.chaos.checker import check
from tests.chaos.figures import record
from tests.chaos.harness import Chaos, unique
from tests.support.broker import wait_committed
from tests.support.database import count_usages
from tests.support.events import log_end, produce, sequence
from tests.support.waiting import eventually
from usage_ingest.dev.broker import EmbeddedBroker
from usage_ingest.dev.embedded import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

EVENTS = 6000
SESSION_TIMEOUT_MS = 3000
CUT_S = 2.0


async def test_broker_connections_dropped_and_stalled_past_the_session_timeout(
    chaos: Chaos,
) -> None:
    started = time.monotonic()
    proxy_port = free_port()
    broker = EmbeddedBroker(advertised_port=proxy_port)
    await asyncio.to_thread(broker.start)
    try:
        proxy = await chaos.proxy(broker.port, port=proxy_port)
        url = await chaos.database()
        settings = await chaos.settings(
            url,
            bootstrap=f"127.0.0.1:{proxy_port}",
            kafka_session_timeout_ms=SESSION_TIMEOUT_MS,
            batch_max_records=250,
        )
        sent = await produce(settings, sequence(unique("net"), 0, EVENTS))
        worker = chaos.worker(settings)
        worker.start()

        async def stored_at_least(n: int) -> bool:
            return await count_usages(url) >= n

        await eventually(lambda: stored_at_least(EVENTS // 5), 60, "the worker under way")
        proxy.cut()
        await asyncio.sleep(CUT_S)
        proxy.heal()
        resumed_at = await count_usages(url)
        await eventually(lambda: stored_at_least(resumed_at + 500), 60, "progress after the cut")
        proxy.stall(new_too=False)
        stalled_since = time.monotonic()
        rival = chaos.worker(settings, "rival")
        rival.start()
        # The rival gets partitions only once the silent worker's session has expired; what
        # is stored before that may be the silent worker's batches already past the broker.
        await eventually(rival.joined, 60, "the rival joining the group")
        joined_at = await count_usages(url)
        await eventually(lambda: stored_at_least(joined_at + 500), 60, "the rival taking over")
        assert worker.running, worker.output()[-3000:]
        proxy.heal()
        healed = time.monotonic()

        stalled_s = time.monotonic() - stalled_since
        caught_up = await wait_committed(settings, log_end(sent), within_s=90)
        assert await worker.terminate() == 0
        assert await rival.terminate() == 0
        verdict = await check(settings, url, sent)
        abandoned = worker.count("batch_abandoned")
        rejoined = [
            e["message"]
            for e in worker.log_events()
            if e.get("event") == "library_log" and "rejoin" in e["message"].replace("-", "")
        ]
        record(
            "3 broker cut + black hole",
            verdict,
            recovery_s=caught_up - healed,
            faults=f"all connections reset, {CUT_S:g} s refused; worker black-holed "
            f"{stalled_s:.1f} s (session {SESSION_TIMEOUT_MS / 1000:g} s) while a rival "
            f"took over; {abandoned} batch(es) abandoned",
            started=started,
        )
        assert verdict.clean, verdict
        assert verdict.stored == EVENTS
        assert stalled_s > SESSION_TIMEOUT_MS / 1000
        # The group moved on without it: its member id was forgotten, and it rejoined
        # (abandoning the batch it had in flight, when the black hole caught one).
        assert rejoined, worker.output()[-5000:]
    finally:
        await asyncio.to_thread(broker.stop)


async def test_sigterm_while_the_broker_hangs_stops_the_worker_promptly(chaos: Chaos) -> None:
    """A worker whose broker accepts connections but answers nothing (here: a black hole
    from the start) hangs in its clients' start, or in a group join the broker holds
    up: SIGTERM must still stop it at once, with exit 0, not when a request times out
    (40 s) or the join is released (up to the rebalance timeout, 5 minutes)."""
    proxy_port = free_port()
    broker = EmbeddedBroker(advertised_port=proxy_port)
    await asyncio.to_thread(broker.start)
    try:
        proxy = await chaos.proxy(broker.port, port=proxy_port)
        url = await chaos.database()
        settings = await chaos.settings(url, bootstrap=f"127.0.0.1:{proxy_port}")
        proxy.stall()
        worker = chaos.worker(settings)
        worker.start()
        await eventually(worker.started_up, 30, "the worker setting up")

        async def unready() -> bool:
            return await worker.readiness() == 503

        await eventually(unready, 15, "/readyz answering 503 while the broker hangs")
        assert worker.count("worker_started") == 0
        stopping_at = time.monotonic()
        assert await worker.terminate(within_s=20) == 0
        took_s = time.monotonic() - stopping_at
        assert took_s < 5, f"SIGTERM took {took_s:.1f} s"
    finally:
        await asyncio.to_thread(broker.stop)
