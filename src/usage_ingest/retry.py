"""Retry with capped exponential backoff: how the worker and the replay wait for a
dependency to come back (SPEC.md §6: transient failures are retried, never turned into
rejections).

`retry` runs an action until it succeeds; `publish_acknowledged` publishes records until
the broker has acknowledged every one. The worker retries until it is stopped; the
replay, an operator's command, gives up after a few attempts with a clear line. Each
caller writes its own log line, so what operators read does not depend on who retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from usage_ingest.domain.records import OutputRecord
from usage_ingest.errors import DependencyUnavailable
from usage_ingest.ports import ProducerPort

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Backoff:
    """How long to wait between attempts: `initial_s` after the first failure, twice as
    long after each next one, never more than `max_s`. With `jitter`, each wait is drawn
    within that share of it either side (0.2: from 80% to 120%). `attempts` caps the
    tries; None retries until stopped."""

    initial_s: float
    max_s: float
    jitter: float = 0.0
    attempts: int | None = None

    def jittered(self, delay: float) -> float:
        """The wait for `delay` (jitter spreads retries, it is not for security)."""
        if not self.jitter:
            return delay
        return delay * random.uniform(1 - self.jitter, 1 + self.jitter)  # noqa: S311


@dataclass(frozen=True, slots=True)
class Failure:
    """A failed attempt that is about to be retried, as its log line reports it."""

    attempt: int  # 1 for the first failure
    error: Exception
    retry_in_s: float  # the backoff before jitter


async def retry(
    action: Callable[[], Awaitable[T]],
    backoff: Backoff,
    on_retry: Callable[[Failure], None],
    *,
    stop: asyncio.Event | None = None,
    on_waited: Callable[[float], None] | None = None,
    retry_on: type[Exception] = DependencyUnavailable,
) -> T:
    """Run `action` until it returns, retrying its `retry_on` failures after a backoff.

    Gives up, raising the last failure, once `backoff.attempts` are used up or `stop` is
    set; a wait ends early when `stop` is set. `on_retry` reports each failure that is
    retried, before its wait; `on_waited`, how long each wait lasted.
    """
    delay = backoff.initial_s
    attempt = 0
    while True:
        try:
            return await action()
        except retry_on as exc:
            attempt += 1
            if attempt == backoff.attempts or (stop is not None and stop.is_set()):
                raise
            on_retry(Failure(attempt, exc, delay))
        started = time.monotonic()
        await _sleep_unless_stopped(backoff.jittered(delay), stop)
        if on_waited is not None:
            on_waited(time.monotonic() - started)
        delay = min(delay * 2, backoff.max_s)


async def _sleep_unless_stopped(seconds: float, stop: asyncio.Event | None) -> None:
    """Back off; wake early when stopping."""
    if stop is None:
        await asyncio.sleep(seconds)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


class _Unacknowledged(Exception):
    """Some records of a publish were not acknowledged: they are published again."""


async def publish_acknowledged(
    producer: ProducerPort,
    records: list[OutputRecord],
    backoff: Backoff,
    on_retry: Callable[[int, float], None],
    *,
    stop: asyncio.Event | None = None,
) -> list[OutputRecord]:
    """Publish `records` until the broker has acknowledged every one, publishing again
    only those it did not. Returns the records still unacknowledged when `backoff` gives
    up (empty once every one is acknowledged). `on_retry` gets, before each wait, how
    many records are unacknowledged and the backoff before jitter."""
    pending = records

    async def publish_pending() -> None:
        nonlocal pending
        pending = await producer.publish(pending)
        if pending:
            raise _Unacknowledged

    def report(failure: Failure) -> None:
        on_retry(len(pending), failure.retry_in_s)

    with contextlib.suppress(_Unacknowledged):
        await retry(publish_pending, backoff, report, stop=stop, retry_on=_Unacknowledged)
    return pending
