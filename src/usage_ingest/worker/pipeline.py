"""The batch loop: fetch, validate, resolve, store, publish, commit.

The commit protocol (SPEC.md §6) lives here, in `Pipeline._process`:

1. every record of the batch gets its verdict (validation, then resolution
   against reference data fetched once for the batch);
2. accepted usages are written in one statement, and every refusal in another, in
   one transaction (`worker.storing`); the database has committed;
3. every outcome and dead letter is published and acknowledged by the broker;
4. only then are the offsets committed.

A crash anywhere re-delivers the batch, and re-delivery changes no row: a
record whose usage was stored from this very source record is reported
`created` again, so the outcome of a record does not depend on how often it
was delivered. Dependency failures are retried with capped exponential
backoff and never turn into rejections.

Two batches overlap: while one waits for the broker to acknowledge its outcomes
and its offsets (steps 3 and 4), the next is validated, resolved and stored
(steps 1 and 2). Batches are still stored in order (the next is decided only
once the one before it is) and delivered in order (a batch publishes only after
the one before it committed; if that one did not, neither does this one, and
both are fetched again).
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

import structlog

from usage_ingest.domain.dead_letters import dead_letter_record
from usage_ingest.domain.messages import OutcomeError
from usage_ingest.domain.outcomes import Status
from usage_ingest.domain.records import InputRecord, OutputRecord, Partition, next_offsets
from usage_ingest.domain.resolution import ReferenceKeys, ReferenceSnapshot, Resolution, resolve
from usage_ingest.domain.validation import (
    InvalidEvent,
    ValidEvent,
    validate_record,
)
from usage_ingest.errors import BatchAbandoned, CommitRefused, ErrorCode
from usage_ingest.ports import ConsumerPort, ProducerPort, StorePort
from usage_ingest.retry import Backoff, Failure, publish_acknowledged, retry
from usage_ingest.settings import Settings
from usage_ingest.times import format_utc_millis, utc_now
from usage_ingest.worker.metrics import Counters, MinuteSummary, WorkerMetrics
from usage_ingest.worker.outcomes import Verdict, outcome_record, usage_row
from usage_ingest.worker.storing import store_batch

log = structlog.get_logger("usage_ingest.worker.pipeline")
T = TypeVar("T")

_RETRY_JITTER = 0.2  # each wait of `retrying` is within 20% of its backoff, either side


@dataclass(eq=False, slots=True)
class _Batch:
    """One batch on its way: `decided` once its usages are stored (or it failed)."""

    records: list[InputRecord]
    task: asyncio.Task[None] = field(init=False)
    decided: asyncio.Event = field(default_factory=asyncio.Event)
    committed: bool = False


async def _first_of(*waits: asyncio.Task[None] | asyncio.Event) -> None:
    """Wait until the first of these tasks is done or of these events is set."""
    watchers = [asyncio.ensure_future(w.wait()) for w in waits if isinstance(w, asyncio.Event)]
    tasks = [w for w in waits if not isinstance(w, asyncio.Event)]
    try:
        await asyncio.wait({*tasks, *watchers}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for watcher in watchers:
            watcher.cancel()


class Pipeline:
    """Consumes the input topic until told to stop."""

    def __init__(
        self,
        settings: Settings,
        store: StorePort,
        consumer: ConsumerPort,
        producer: ProducerPort,
        *,
        clock: Callable[[], datetime] = utc_now,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._consumer = consumer
        self._producer = producer
        self._clock = clock
        self._backoff = Backoff(
            settings.retry_initial_backoff_s, settings.retry_max_backoff_s, jitter=_RETRY_JITTER
        )
        # Unacknowledged records are published again after the same backoff, without jitter.
        self._publish_backoff = Backoff(
            settings.retry_initial_backoff_s, settings.retry_max_backoff_s
        )
        self.metrics = metrics or WorkerMetrics()
        self._summary = MinuteSummary()
        self._in_flight: list[_Batch] = []
        self._grace_ends: float | None = None  # set once stopping
        self.counters = Counters()

    # --- the loop ----------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Fetch and process batches until `stop` is set; then finish or abandon those
        in flight. At most two are: one being delivered, the next being decided."""
        settings = self._settings
        try:
            while not stop.is_set():
                records = await self.retrying(
                    "fetch",
                    lambda: self._consumer.fetch(
                        settings.batch_max_records, settings.batch_max_wait_ms
                    ),
                    stop,
                )
                self._summary.maybe_log(self.metrics)
                if await self._settle_done(stop) and records:
                    # A batch was abandoned after these were fetched: its partitions went
                    # back to their committed offsets, so these go back too, or a later
                    # commit would pass over the abandoned records.
                    await self._abandoned(records, stop)
                    continue
                if not records:
                    continue
                self._note_fetched(records)
                previous = self._in_flight[-1] if self._in_flight else None
                batch = _Batch(records)
                batch.task = asyncio.create_task(self._process(batch, previous))
                self._in_flight.append(batch)
                await _first_of(batch.decided, batch.task, stop)
                # This one is stored: let the one before it finish delivering.
                while len(self._in_flight) > 1 and not stop.is_set():
                    await self._settle(self._in_flight[0], stop)
        except BaseException:
            # The worker itself is cancelled, or a batch failed: the batches in flight
            # go with it, uncommitted.
            for batch in self._in_flight:
                batch.task.cancel()
            if self._in_flight:
                await asyncio.wait({b.task for b in self._in_flight})
            raise
        while self._in_flight:
            await self._settle(self._in_flight[0], stop)

    async def _settle_done(self, stop: asyncio.Event) -> bool:
        """Take the results of the batches that finished, oldest first; whether one of
        them was abandoned."""
        abandoned = False
        while self._in_flight and self._in_flight[0].task.done():
            abandoned |= await self._settle(self._in_flight[0], stop)
        return abandoned

    async def _settle(self, batch: _Batch, stop: asyncio.Event) -> bool:
        """Wait for the oldest batch (on stop, for the shutdown grace), then take its result:
        done, abandoned (fetched again from the committed offsets: returns True), or a
        failure (raised)."""
        task = batch.task
        try:
            await self._finish(task, stop)
        finally:
            self._in_flight.remove(batch)
        if task.cancelled() or isinstance(task.exception(), CommitRefused | BatchAbandoned):
            await self._abandoned(batch.records, stop)
            return True
        if (failure := task.exception()) is not None:
            raise failure
        return False

    async def _abandoned(self, records: list[InputRecord], stop: asyncio.Event) -> None:
        """The batch did not commit: fetch its records again from the committed
        offsets (those of partitions still ours; the others are the new owner's)."""
        log.info("batch_abandoned", records=len(records))
        if not stop.is_set():
            partitions = _partitions(records)
            await self.retrying("rewind", lambda: self._consumer.rewind(partitions), stop)

    async def _finish(self, task: asyncio.Task[None], stop: asyncio.Event) -> None:
        """Wait for the batch; on stop give it what is left of the shutdown grace (one
        grace for all the batches in flight), then abandon it."""
        await _first_of(task, stop)
        if not task.done():
            if self._grace_ends is None:
                self._grace_ends = time.monotonic() + self._settings.shutdown_grace_s
            await asyncio.wait({task}, timeout=max(self._grace_ends - time.monotonic(), 0))
        if not task.done():
            task.cancel()
            await asyncio.wait({task})

    async def on_partitions_revoked(self, partitions: set[Partition]) -> None:
        """Rebalance: let the batches in flight finish and commit before the
        partitions move; those that cannot within the grace are abandoned, so the new
        owner re-processes them (their commit is then never attempted)."""
        self.metrics.forget(partitions)
        tasks = {b.task for b in self._in_flight if not b.task.done()}
        if not tasks:
            return
        log.info("rebalance_waiting_for_batch", partitions=sorted(partitions))
        await asyncio.wait(tasks, timeout=self._settings.shutdown_grace_s)
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)

    async def retrying(
        self, what: str, action: Callable[[], Awaitable[T]], stop: asyncio.Event | None = None
    ) -> T:
        """Run `action`, retrying dependency failures with capped exponential backoff."""

        def report(failure: Failure) -> None:
            self.metrics.retries.labels(what).inc()
            log.warning(
                "dependency_unavailable",
                action=what,
                attempt=failure.attempt,
                error=str(failure.error),
                retry_in_s=round(failure.retry_in_s, 2),
            )

        def waited(seconds: float) -> None:
            self.metrics.waiting.labels(what).inc(seconds)

        return await retry(action, self._backoff, report, stop=stop, on_waited=waited)

    # --- one batch -----------------------------------------------------------

    async def _process(self, batch: _Batch, previous: _Batch | None) -> None:
        started = time.monotonic()
        records = batch.records
        try:
            verdicts, outgoing = await self.decide(records)
        finally:
            batch.decided.set()
        if previous is not None:
            # Deliver in order: the offsets committed for this batch would cover the
            # records of the one before it, in the same partitions.
            await asyncio.wait({previous.task})
            if not previous.committed:
                raise BatchAbandoned("the batch before it did not commit")
        await self._publish(outgoing)
        acknowledged_ms = time.time() * 1000
        offsets = next_offsets(records)
        await self.retrying("commit", lambda: self._consumer.commit(offsets))
        batch.committed = True
        self._note_committed(offsets)
        by_status = self._observe_batch(
            records, verdicts, acknowledged_ms, time.monotonic() - started
        )
        log.debug("batch_done", records=len(records), **by_status)

    async def decide(
        self, records: Sequence[InputRecord]
    ) -> tuple[list[Verdict], list[OutputRecord]]:
        """Steps 1 and 2 of the protocol: every record's outcome; usages and refusals
        stored, even when the batch has no usage (no outcome is published before)."""
        verdicts = [Verdict(r, self._validate(r)) for r in records]
        valid = [v for v in verdicts if isinstance(v.checked, ValidEvent)]
        if valid:
            await self._resolve(valid)
        now = await self._store_batch(verdicts)
        settings = self._settings
        outgoing = [outcome_record(v, now, settings) for v in verdicts]
        for verdict in verdicts:
            if verdict.errors:
                _log_rejection(verdict)
                outgoing.append(
                    dead_letter_record(verdict.record, verdict.errors, settings.topic_dlq, now)
                )
        return verdicts, outgoing

    def _validate(self, record: InputRecord) -> ValidEvent | InvalidEvent:
        try:
            return validate_record(record.value, self._settings.max_message_bytes)
        except Exception as exc:  # noqa: BLE001 - one record must never stop the worker
            return InvalidEvent(None, (self._decision_failed(record, exc),))

    def _decision_failed(self, record: InputRecord, exc: Exception) -> OutcomeError:
        """A defect met while deciding one record (SPEC.md §6: a poison record never
        blocks its partition): that record is refused and dead-lettered, the batch goes on."""
        log.error(
            "record_decision_failed",
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            error=type(exc).__name__,
            exc_info=exc,
        )
        self.metrics.decision_failures.inc()
        return OutcomeError(
            code=ErrorCode.MALFORMED_MESSAGE,
            message=f"the record could not be decided ({type(exc).__name__}); "
            "it is kept on the dead-letter topic",
        )

    async def _resolve(self, valid: list[Verdict]) -> None:
        events = [
            (v.checked.event, v.checked.usage_date)
            for v in valid
            if isinstance(v.checked, ValidEvent)
        ]
        keys = ReferenceKeys.for_events(events)
        with self.metrics.db_round_trip.labels("fetch_reference").time():
            snapshot = await self.retrying(
                "fetch_reference", lambda: self._store.fetch_reference(keys)
            )
        for verdict in valid:
            try:
                _resolve_one(verdict, snapshot)
            except Exception as exc:  # noqa: BLE001 - one record must never stop the worker
                verdict.resolution, verdict.row = None, None
                verdict.refusal = (self._decision_failed(verdict.record, exc),)

    async def _store_batch(self, verdicts: list[Verdict]) -> str:
        """Step 2: the batch's usages and refusals in one transaction, retried whole
        while the database is away; the instant the batch failed its refusals at."""

        async def attempt() -> str:
            now = format_utc_millis(self._clock())
            await store_batch(self._store, verdicts, now)
            return now

        with self.metrics.db_round_trip.labels("store_usages").time():
            return await self.retrying("store_usages", attempt)

    async def _publish(self, outgoing: list[OutputRecord]) -> None:
        """Step 3: every outcome and dead letter acknowledged; retry only what failed."""
        await publish_acknowledged(
            self._producer, outgoing, self._publish_backoff, _publish_incomplete
        )

    # --- what operators see ------------------------------------------------------

    def _note_fetched(self, records: list[InputRecord]) -> None:
        """The first record fetched of a partition is its oldest unprocessed one."""
        for record in records:
            progress = self.metrics.progress((record.topic, record.partition))
            if progress.oldest_unprocessed_ms is None and record.timestamp_ms >= 0:
                progress.oldest_unprocessed_ms = record.timestamp_ms

    def _note_committed(self, offsets: dict[Partition, int]) -> None:
        for partition, offset in offsets.items():
            progress = self.metrics.progress(partition)
            progress.committed = offset
            progress.high_watermark = self._consumer.highwater(partition)
            # The next batch's first record is the oldest unprocessed one now.
            progress.oldest_unprocessed_ms = None

    def _observe_batch(
        self,
        records: list[InputRecord],
        verdicts: list[Verdict],
        acknowledged_ms: float,
        seconds: float,
    ) -> dict[Status, int]:
        """Metrics and counters of a committed batch; its records by outcome status."""
        metrics = self.metrics
        metrics.batch_size.observe(len(records))
        metrics.batch_duration.observe(seconds)
        for record in records:
            if record.timestamp_ms >= 0:
                metrics.end_to_end.observe(max(acknowledged_ms - record.timestamp_ms, 0) / 1000)
        by_outcome = collections.Counter(
            (v.status, v.errors[0].code.value if v.errors else "") for v in verdicts
        )
        by_status: dict[Status, int] = {}
        for (status, code), count in by_outcome.items():
            metrics.events.labels(status, code).inc(count)
            by_status[status] = by_status.get(status, 0) + count
        self.counters.batches += 1
        self.counters.add(by_status)
        self._summary.add(by_status)
        return by_status


def _resolve_one(verdict: Verdict, snapshot: ReferenceSnapshot) -> None:
    checked = verdict.checked
    assert isinstance(checked, ValidEvent)
    result = resolve(checked.event, checked.usage_date, snapshot)
    if isinstance(result, Resolution):
        verdict.resolution = result
        verdict.row = usage_row(verdict.record, checked, result)
    else:
        verdict.refusal = (result,)


def _publish_incomplete(unacknowledged: int, retry_in_s: float) -> None:
    log.warning(
        "publish_incomplete", unacknowledged=unacknowledged, retry_in_s=round(retry_in_s, 2)
    )


def _log_rejection(verdict: Verdict) -> None:
    """Record-level line: where the record is and why it was refused, never its content."""
    record = verdict.record
    log.debug(
        "record_rejected",
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        external_reference=verdict.reference,
        codes=[e.code.value for e in verdict.errors],
    )


def _partitions(records: Iterable[InputRecord]) -> set[Partition]:
    return {(r.topic, r.partition) for r in records}
