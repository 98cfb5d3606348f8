"""The batch loop: fetch, validate, resolve, store, publish, commit.

The commit protocol (SPEC.md §6) lives here, in `Pipeline._process`:

1. every record of the batch gets its verdict (validation, then resolution
   against reference data fetched once for the batch);
2. accepted usages are written in one statement; the database has committed;
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
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

import structlog

from usage_ingest.domain.messages import OutcomeError
from usage_ingest.domain.outcomes import (
    CREATED,
    DUPLICATE,
    REJECTED,
    Status,
    instant,
    outcome_json,
    source,
)
from usage_ingest.domain.records import InputRecord, OutputRecord, Partition, StoredUsage, UsageRow
from usage_ingest.domain.resolution import ReferenceKeys, ReferenceSnapshot, Resolution, resolve
from usage_ingest.domain.validation import (
    InvalidEvent,
    ValidEvent,
    json_text,
    unit_quantities_json,
    validate_record,
)
from usage_ingest.errors import DependencyUnavailable, ErrorCode, StoreRefusedData
from usage_ingest.kafka.consumer import CommitRefused
from usage_ingest.ports import ConsumerPort, ProducerPort, StorePort
from usage_ingest.settings import Settings
from usage_ingest.worker.metrics import WorkerMetrics

log = structlog.get_logger("usage_ingest.worker.pipeline")
T = TypeVar("T")

# Dead-letter headers (SPEC.md §8). A header from an earlier failure is replaced.
H_CODE = "usage-ingest.error.code"
H_MESSAGE = "usage-ingest.error.message"
H_RETRYABLE = "usage-ingest.error.retryable"
H_TOPIC = "usage-ingest.source.topic"
H_PARTITION = "usage-ingest.source.partition"
H_OFFSET = "usage-ingest.source.offset"
H_FAILED_AT = "usage-ingest.failed-at"
H_REPLAY_COUNT = "usage-ingest.replay-count"
DEAD_LETTER_HEADERS = frozenset(
    {H_CODE, H_MESSAGE, H_RETRYABLE, H_TOPIC, H_PARTITION, H_OFFSET, H_FAILED_AT, H_REPLAY_COUNT}
)
_MAX_HEADER_MESSAGE = 1000


@dataclass(slots=True)
class Counters:
    """Outcomes since start, for the shutdown summary."""

    batches: int = 0
    records: int = 0
    by_status: dict[str, int] = field(default_factory=dict)

    def add(self, by_status: dict[Status, int]) -> None:
        for status, count in by_status.items():
            self.records += count
            self.by_status[status] = self.by_status.get(status, 0) + count


class _MinuteSummary:
    """One info line a minute: throughput, outcomes and lag, for a glance at the logs."""

    PERIOD_S = 60.0

    def __init__(self) -> None:
        self._started = time.monotonic()
        self._by_status: dict[str, int] = {}

    def add(self, by_status: dict[Status, int]) -> None:
        for status, count in by_status.items():
            self._by_status[status] = self._by_status.get(status, 0) + count

    def maybe_log(self, metrics: WorkerMetrics) -> None:
        elapsed = time.monotonic() - self._started
        if elapsed < self.PERIOD_S:
            return
        records = sum(self._by_status.values())
        now_ms = int(time.time() * 1000)
        log.info(
            "worker_progress",
            records=records,
            per_second=round(records / elapsed, 1),
            offset_lag=sum(p.offset_lag() or 0 for p in metrics.partitions.values()),
            time_lag_s=max((p.time_lag_s(now_ms) for p in metrics.partitions.values()), default=0),
            **self._by_status,
        )
        self._started = time.monotonic()
        self._by_status = {}


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class Verdict:
    """What the pipeline knows about one record while the batch is decided."""

    record: InputRecord
    checked: ValidEvent | InvalidEvent
    resolution: Resolution | None = None
    refusal: tuple[OutcomeError, ...] = ()
    row: UsageRow | None = None
    stored: StoredUsage | None = None

    @property
    def reference(self) -> str | None:
        if isinstance(self.checked, ValidEvent):
            return self.checked.event.external_reference
        return self.checked.external_reference

    @property
    def errors(self) -> tuple[OutcomeError, ...]:
        """Why the record is refused; empty once it is stored."""
        if isinstance(self.checked, InvalidEvent):
            return self.checked.errors
        return self.refusal

    @property
    def status(self) -> Status:
        if self.errors:
            return REJECTED
        stored, record = self.stored, self.record
        assert stored is not None
        same_source = (stored.source_topic, stored.source_partition, stored.source_offset) == (
            record.topic,
            record.partition,
            record.offset,
        )
        return CREATED if same_source else DUPLICATE


class BatchAbandoned(Exception):
    """The batch will not commit: its records are fetched again."""


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
        self.metrics = metrics or WorkerMetrics()
        self._summary = _MinuteSummary()
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
        delay = self._settings.retry_initial_backoff_s
        attempt = 0
        while True:
            try:
                return await action()
            except DependencyUnavailable as exc:
                attempt += 1
                if stop is not None and stop.is_set():
                    raise
                self.metrics.retries.labels(what).inc()
                log.warning(
                    "dependency_unavailable",
                    action=what,
                    attempt=attempt,
                    error=str(exc),
                    retry_in_s=round(delay, 2),
                )
                started = time.monotonic()
                await _sleep_unless_stopped(delay * random.uniform(0.8, 1.2), stop)  # noqa: S311
                self.metrics.waiting.labels(what).inc(time.monotonic() - started)
                delay = min(delay * 2, self._settings.retry_max_backoff_s)

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
        """Steps 1 and 2 of the protocol: every record's outcome, usages stored."""
        verdicts = [Verdict(r, self._validate(r)) for r in records]
        valid = [v for v in verdicts if isinstance(v.checked, ValidEvent)]
        if valid:
            await self._resolve(valid)
            await self._store_resolved(valid)
        now = instant(self._clock())
        outgoing = [self._outcome_record(v, now) for v in verdicts]
        for verdict in verdicts:
            if verdict.errors:
                _log_rejection(verdict)
                outgoing.append(self._dead_letter(verdict, now))
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

    async def _store_resolved(self, valid: list[Verdict]) -> None:
        """Write the resolved usages; the first record of a reference in the batch
        is the one written, later ones are compared with it like any re-delivery."""
        first_rows: dict[str, UsageRow] = {}
        for verdict in valid:
            if verdict.row is not None:
                first_rows.setdefault(verdict.row.external_reference, verdict.row)
        if not first_rows:
            return
        with self.metrics.db_round_trip.labels("store_usages").time():
            stored = await self._store_isolating(list(first_rows.values()))
        for verdict in valid:
            if verdict.row is None:
                continue
            held = stored.get(verdict.row.external_reference)
            if isinstance(held, OutcomeError):
                verdict.refusal = (held,)
                verdict.row = None
            elif held is not None and held.payload_hash != verdict.row.payload_hash:
                verdict.refusal = (
                    OutcomeError(
                        code=ErrorCode.EXTERNAL_REFERENCE_CONFLICT,
                        field="externalReference",
                        message=f"usage {held.usage_id} already holds this externalReference "
                        "with a different payload; it is left unchanged",
                    ),
                )
                verdict.row = None
            else:
                verdict.stored = held

    async def _store_isolating(self, rows: list[UsageRow]) -> dict[str, StoredUsage | OutcomeError]:
        """Store the batch in one statement; if the database refuses a value, store
        row by row to find the refused record, so it cannot block its partition."""
        try:
            return dict(await self.retrying("store_usages", lambda: self._store.store_usages(rows)))
        except StoreRefusedData as exc:
            log.warning("batch_refused_by_database", rows=len(rows), error=str(exc))
        result: dict[str, StoredUsage | OutcomeError] = {}
        for row in rows:
            try:
                result.update(await self._store_one(row))
            except StoreRefusedData as exc:
                result[row.external_reference] = OutcomeError(
                    code=ErrorCode.SCHEMA_VIOLATION,
                    message=f"the database refused the record: {exc}",
                )
        return result

    async def _store_one(self, row: UsageRow) -> dict[str, StoredUsage]:
        return await self.retrying("store_usage", lambda: self._store.store_usages([row]))

    async def _publish(self, outgoing: list[OutputRecord]) -> None:
        """Step 3: every outcome and dead letter acknowledged; retry only what failed."""
        pending = outgoing
        delay = self._settings.retry_initial_backoff_s
        while pending:
            pending = await self._producer.publish(pending)
            if pending:
                log.warning(
                    "publish_incomplete", unacknowledged=len(pending), retry_in_s=round(delay, 2)
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._settings.retry_max_backoff_s)

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

    # --- messages ------------------------------------------------------------

    def _outcome_record(self, verdict: Verdict, processed_at: str) -> OutputRecord:
        """The outcome message (§5), keyed by the externalReference (or, when none
        could be read, by the input key) on the accepted or rejected topic."""
        record, checked, resolution = verdict.record, verdict.checked, verdict.resolution
        status, errors, reference = verdict.status, verdict.errors, verdict.reference
        where = source(record.topic, record.partition, record.offset, record.timestamp_ms)
        if not isinstance(checked, ValidEvent):
            value = outcome_json(status, reference, where, processed_at, errors=errors)
        elif resolution is None:
            event = checked.event
            value = outcome_json(
                status,
                reference,
                where,
                processed_at,
                contract_id=event.contract_id,
                debtor_id=event.debtor_id if event.contract_id is None else None,
                product_ident=event.product_ident,
                errors=errors,
                warnings=checked.warnings,
            )
        else:
            contract, inventory = resolution.contract, resolution.inventory
            stored = verdict.stored
            value = outcome_json(
                status,
                reference,
                where,
                processed_at,
                usage_id=None if stored is None or errors else stored.usage_id,
                contract_id=contract.id,
                debtor_id=contract.debtor_id,
                inventory_id=inventory.id,
                product_ident=checked.event.product_ident,
                billable=None if errors else inventory.billable,
                errors=errors,
                warnings=checked.warnings,
            )
        if status == REJECTED:
            key = reference.encode() if reference else record.key
            return OutputRecord(self._settings.topic_rejected, key, value)
        assert reference is not None
        return OutputRecord(self._settings.topic_accepted, reference.encode(), value)

    def _dead_letter(self, verdict: Verdict, failed_at: str) -> OutputRecord:
        """The refused record itself, unchanged, with the headers of §8."""
        record = verdict.record
        errors = verdict.errors
        kept = tuple((k, v) for k, v in record.headers if k not in DEAD_LETTER_HEADERS)
        message = "; ".join(f"{e.field}: {e.message}" if e.field else e.message for e in errors)
        ours = (
            (H_CODE, errors[0].code.value),
            (H_MESSAGE, message[:_MAX_HEADER_MESSAGE]),
            (H_RETRYABLE, "true" if all(e.code.retryable for e in errors) else "false"),
            (H_TOPIC, record.topic),
            (H_PARTITION, str(record.partition)),
            (H_OFFSET, str(record.offset)),
            (H_FAILED_AT, failed_at),
            (H_REPLAY_COUNT, str(replay_count(record.headers))),
        )
        headers = kept + tuple((k, v.encode()) for k, v in ours)
        return OutputRecord(self._settings.topic_dlq, record.key, record.value, headers)


def _resolve_one(verdict: Verdict, snapshot: ReferenceSnapshot) -> None:
    checked = verdict.checked
    assert isinstance(checked, ValidEvent)
    result = resolve(checked.event, checked.usage_date, snapshot)
    if isinstance(result, Resolution):
        verdict.resolution = result
        verdict.row = _usage_row(verdict.record, checked, result)
    else:
        verdict.refusal = (result,)


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


async def _sleep_unless_stopped(seconds: float, stop: asyncio.Event | None) -> None:
    """Back off (with jitter, not for security); wake early when stopping."""
    if stop is None:
        await asyncio.sleep(seconds)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


def replay_count(headers: Iterable[tuple[str, bytes]]) -> int:
    """The replay count a record carries; 0 for a first failure (§8)."""
    for key, value in headers:
        if key == H_REPLAY_COUNT:
            try:
                return max(int(value.decode()), 0)
            except (UnicodeDecodeError, ValueError):
                return 0
    return 0


def next_offsets(records: Iterable[InputRecord]) -> dict[Partition, int]:
    """Per partition, the offset after the last record of the batch."""
    offsets: dict[Partition, int] = {}
    for record in records:
        key = (record.topic, record.partition)
        offsets[key] = max(offsets.get(key, 0), record.offset + 1)
    return offsets


def _partitions(records: Iterable[InputRecord]) -> set[Partition]:
    return {(r.topic, r.partition) for r in records}


def _usage_row(record: InputRecord, checked: ValidEvent, resolution: Resolution) -> UsageRow:
    event, canonical = checked.event, checked.canonical
    return UsageRow(
        external_reference=event.external_reference,
        contract_id=resolution.contract.id,
        debtor_id=resolution.contract.debtor_id,
        inventory_id=resolution.inventory.id,
        product_item_id=resolution.product.id,
        product_ident=event.product_ident,
        description=event.description,
        start_date=canonical.start_date,
        end_date=canonical.end_date,
        operating_site=event.operating_site,
        tax_location=json_text(event.tax_location),
        performance_location=json_text(event.performance_location),
        service_country=event.service_country,
        unit_quantities=unit_quantities_json(event),
        properties=json_text(event.properties),
        billable=resolution.inventory.billable,
        payload_hash=checked.payload_hash,
        raw_payload=checked.raw,
        source_topic=record.topic,
        source_partition=record.partition,
        source_offset=record.offset,
    )
