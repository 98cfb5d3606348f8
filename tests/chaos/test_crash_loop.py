"""Scenario 1, the hard crash loop: a sequence-numbered stream while the worker is
killed again and again, in the spirit of Apache Kafka's bounce tests.

The stream comes in waves, one per crash, produced while the worker runs. Some
crashes are SIGKILLs at random moments once the worker makes progress; the others
land at exact steps of the commit protocol through `faulty_worker.py` (after the
database commit, while outcomes are in flight, between the acknowledgements and
the offset commit). Each crash is followed by an immediate restart, as a
supervisor would do. At the end: exactly one row per event, no gap in the
sequence, an outcome for every source record, and the committed offsets at the
log end.

`CHAOS_EVENTS` sets the stream length (default 20000) for a longer soak.
"""

from __future__ import annotations

import asyncio
import os
import random
import time

import pytest

from tests.chaos.checker import check
from tests.chaos.figures import record
from tests.chaos.harness import SEED, Chaos, unique
from tests.support.broker import wait_committed
from tests.support.database import count_usages
from tests.support.events import log_end, produce, sequence
from tests.support.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

# A wave per crash must span a few batches, or a fault point might never be reached.
EVENTS = max(int(os.environ.get("CHAOS_EVENTS", "20000")), 4000)
KILLED = 137
# Each step is one crash: a fault point of faulty_worker.py, or a SIGKILL ("kill").
PLAN = (
    "before-offset-commit",
    "kill",
    "outcomes-in-flight",
    "kill",
    "store-committed",
    "kill",
    "before-offset-commit",
    "kill",
)


async def test_hard_crash_loop_loses_nothing_and_counts_nothing_twice(chaos: Chaos) -> None:
    started = time.monotonic()
    rng = random.Random(SEED)
    url = await chaos.database()
    # A killed member stays in the group until its session expires, and the embedded
    # broker holds the next join meanwhile: a 1 s session keeps a restart near 2 s
    # (about 8 s with the usual 3 s), so eight crashes fit the time budget.
    settings = await chaos.settings(url, batch_max_records=200, kafka_session_timeout_ms=1000)
    worker = chaos.worker(settings)
    prefix = unique("seq")
    wave = -(-EVENTS // len(PLAN))  # ceil
    sent = []
    crashes: list[str] = []
    for step, fault in enumerate(PLAN):
        events = sequence(prefix, step * wave, min(wave, EVENTS - step * wave))
        before = await count_usages(url)
        streaming = asyncio.create_task(produce(settings, events, chunk=250, pause_s=0.02))
        try:
            if fault == "kill":
                worker.start()

                async def progressed(before: int = before) -> bool:
                    return await count_usages(url) > before

                await eventually(progressed, 60, "the worker storing usages again")
                await asyncio.sleep(rng.uniform(0.0, 0.8))
                worker.kill()
                crashes.append("SIGKILL")
            else:
                n = rng.randint(1, 2)
                worker.start(fault=f"{fault}:{n}")
                code = await worker.wait_exit(within_s=90)
                assert code == KILLED, f"{fault}:{n} exited {code}:\n{worker.output()[-3000:]}"
                crashes.append(f"{fault}#{n}")
        finally:
            sent += await streaming

    worker.start()
    healed = time.monotonic()
    caught_up = await wait_committed(settings, log_end(sent), within_s=120)
    # Everything may have been committed before this run: a SIGTERM before its signal
    # handlers are installed would end it the default way (-15), not gracefully.
    await eventually(worker.joined, 60, "the healed worker joining its group")
    assert await worker.terminate() == 0
    verdict = await check(settings, url, sent)
    record(
        "1 hard crash loop",
        verdict,
        recovery_s=caught_up - healed,
        faults=f"{len(crashes)} crashes: " + ", ".join(crashes),
        started=started,
    )
    assert verdict.clean, verdict
    assert verdict.stored == EVENTS
    # No gap and nothing foreign: each sequence number was produced once, and with
    # nothing lost and no row outside the sequence, each is stored exactly once.
    assert len({s.reference for s in sent}) == EVENTS
