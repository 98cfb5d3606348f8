"""`usage-ingest run` with one deterministic fault point: test code only, never in src/.

The chaos suite runs this file as a process instead of the console script when a
crash must land at an exact step of the commit protocol (SPEC.md §6). With
`CHAOS_FAULT=<point>:<n>` the process dies with `os._exit(137)` (as after kill -9:
no cleanup, no goodbye to the group, sockets closed by the kernel) the n-th time it
reaches <point>:

* `store-committed`: a batch's usages and refusals were committed to Postgres; no
  outcome sent yet.
* `outcomes-in-flight`: every outcome and dead letter of a batch was handed to the
  producer, some may be on the wire; none is acknowledged.
* `before-offset-commit`: the database committed and the broker acknowledged every
  outcome; the offset commit is not sent.

Everything else is the real worker, started through the real command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Any

from usage_ingest import cli
from usage_ingest.domain.records import OutputRecord, Partition
from usage_ingest.kafka.consumer import EventConsumer
from usage_ingest.kafka.producer import OutputProducer
from usage_ingest.store.batches import BatchWrite
from usage_ingest.store.store import Store

KILLED = 137  # the exit status of a process killed by SIGKILL, as a shell reports it


class _Countdown:
    def __init__(self, n: int) -> None:
        self.left = n

    def reached(self) -> bool:
        self.left -= 1
        return self.left <= 0


def _die() -> None:
    sys.stderr.write('{"event": "chaos_fault_point_reached"}\n')
    sys.stderr.flush()
    os._exit(KILLED)


def install(point: str, n: int) -> None:
    countdown = _Countdown(n)
    if point == "store-committed":
        real_batch = Store.batch

        @contextlib.asynccontextmanager
        async def batch(self: Store) -> AsyncIterator[BatchWrite]:
            async with real_batch(self) as writes:
                yield writes
            # The transaction of the batch's usages and refusals has committed.
            if countdown.reached():
                _die()

        Store.batch = batch  # type: ignore[method-assign]
    elif point == "outcomes-in-flight":
        real_publish = OutputProducer.publish

        async def publish(self: OutputProducer, records: Sequence[OutputRecord]) -> Any:
            if not countdown.reached():
                return await real_publish(self, records)
            for record in records:
                await self._producer.send(
                    record.topic, record.value, key=record.key, headers=list(record.headers)
                )
            # Let some of them reach the wire, but never wait for an acknowledgement.
            await asyncio.sleep(random.Random(n).uniform(0, 0.01))
            _die()
            return list(records)

        OutputProducer.publish = publish  # type: ignore[method-assign]
    elif point == "before-offset-commit":
        real_commit = EventConsumer.commit

        async def commit(self: EventConsumer, next_offsets: dict[Partition, int]) -> None:
            if countdown.reached():
                _die()
            await real_commit(self, next_offsets)

        EventConsumer.commit = commit  # type: ignore[method-assign]
    else:
        raise SystemExit(f"faulty_worker: unknown fault point {point!r}")


def main() -> None:
    point, _, n = os.environ["CHAOS_FAULT"].partition(":")
    install(point, int(n or "1"))
    cli.main(["run"], prog_name="usage-ingest")


if __name__ == "__main__":
    main()
