"""Each measurement of the benchmark, one function each.

Every measurement gets its own consumer group, output topics and a fresh database cloned
from the reference template; the preloaded workload topic is shared by the pipeline,
two-worker, naive and raw-consume measurements.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench import procfs
from bench.environment import SESSION_TIMEOUT_MS, BenchEnvironment, Preloaded, Topics
from bench.naive import NaiveResult, run_naive
from bench.worker import Drained, Profiler, WorkerProcess, drain, stop_all
from bench.workload import (
    CREATED,
    DUPLICATE,
    MAX_MESSAGE_BYTES,
    REJECTED,
    BenchEvent,
    EventStream,
    ReferenceModel,
)
from usage_ingest.cli.lag import lag_report
from usage_ingest.domain.records import USAGE_COLUMNS, InputRecord, OutputRecord, UsageRow
from usage_ingest.domain.resolution import ReferenceKeys, ReferenceSnapshot, Resolution, resolve
from usage_ingest.domain.validation import ValidEvent, validate_record
from usage_ingest.kafka.consumer import EventConsumer
from usage_ingest.kafka.producer import OutputProducer
from usage_ingest.store.store import Store
from usage_ingest.worker.outcomes import usage_row

_COLUMNS: Final = USAGE_COLUMNS
_COPY_CHUNK: Final = 20_000
_WARM_UP_ROWS: Final = 1000


@dataclass(frozen=True, slots=True)
class Check:
    """A correctness check made along the way: the figures mean nothing if it fails."""

    name: str
    ok: bool
    detail: str

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


def _equal(name: str, actual: int, expected: int) -> Check:
    return Check(name, actual == expected, f"{actual} (expected {expected})")


def _at_least(name: str, actual: int, expected: int) -> Check:
    return Check(name, actual >= expected, f"{actual} (expected at least {expected})")


# --- the physical limit: raw consume ---------------------------------------------------------


@dataclass(slots=True)
class ConsumeLimit:
    records: int
    seconds: float
    cpu_s: float

    @property
    def per_second(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "seconds": round(self.seconds, 3),
            "recordsPerSecond": round(self.per_second, 1),
            "cpuSecondsPer1kRecords": round(1000 * self.cpu_s / max(self.records, 1), 4),
        }


async def measure_consume_limit(
    env: BenchEnvironment, workload: Preloaded, *, keep: bool
) -> tuple[ConsumeLimit, list[InputRecord]]:
    """An aiokafka consumer reads the whole topic, no processing (the worker's fetch
    settings: aiokafka's defaults). Returns the records too when `keep` (for the rows of
    the storage limit; appending them costs next to nothing)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=env.bootstrap, group_id=None, enable_auto_commit=False
    )
    await consumer.start()
    kept: list[Any] = []
    try:
        partitions = [TopicPartition(workload.topic, p) for p in sorted(workload.ends)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        remaining = dict(workload.ends)
        count = 0
        started, cpu = time.monotonic(), time.process_time()
        while remaining:
            batches = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            for tp, messages in batches.items():
                count += len(messages)
                if keep:
                    kept.extend(messages)
                if messages and messages[-1].offset + 1 >= remaining.get(tp.partition, 0):
                    remaining.pop(tp.partition, None)
        seconds, cpu_s = time.monotonic() - started, time.process_time() - cpu
    finally:
        await consumer.stop()
    records = [
        InputRecord(
            m.topic, m.partition, m.offset, m.key, m.value, tuple(m.headers or ()), m.timestamp
        )
        for m in kept
    ]
    return ConsumeLimit(count, seconds, cpu_s), records


async def measure_kafka_floor(env: BenchEnvironment, workload: Preloaded) -> ConsumeLimit:
    """The worker's Kafka I/O with no work in between: the project's own consumer (in a
    group, batches of `batch_max_records`), one outcome-sized record produced per event
    through the project's own producer, offsets committed per batch. Its CPU per event is
    what any worker written on aiokafka pays before validating anything."""
    topics = Topics.named("kafkafloor", env.run)
    await env.create_output_topics(topics)
    settings = env.settings(dataclasses.replace(topics, events=workload.topic))
    consumer = EventConsumer(settings, on_revoked=_ignore_revoked)
    producer = OutputProducer(settings)
    await producer.start()
    await consumer.start()
    try:
        remaining = {(workload.topic, p): end for p, end in workload.ends.items() if end}
        count = 0
        started = cpu = 0.0
        while remaining:
            records = await consumer.fetch(settings.batch_max_records, 1000)
            if not records:
                continue
            if not count:  # the clock starts at the first records, as the pipeline's does
                started, cpu = time.monotonic(), time.process_time()
            count += len(records)
            failed = await producer.publish(
                [OutputRecord(topics.accepted, r.key, _OUTCOME_SIZED) for r in records]
            )
            if failed:
                raise RuntimeError(f"kafka floor: {len(failed)} records were not acknowledged")
            offsets = {(r.topic, r.partition): r.offset + 1 for r in records}
            await consumer.commit(offsets)
            for tp, offset in offsets.items():
                if offset >= remaining.get(tp, offset + 1):
                    remaining.pop(tp)
        seconds, cpu_s = time.monotonic() - started, time.process_time() - cpu
    finally:
        await consumer.stop()
        await producer.stop()
    return ConsumeLimit(count, seconds, cpu_s)


# The size of a typical accepted outcome of the workload; its content costs nothing more.
_OUTCOME_SIZED: Final = b"x" * 420


async def _ignore_revoked(_partitions: object) -> None:
    return None


# --- the physical limit: raw storage ----------------------------------------------------------


@dataclass(slots=True)
class CpuCeiling:
    """What the project's pure functions cost per event on one core (in the benchmark
    process, nothing else running): `validate_record` over a sample of the workload,
    `resolve` and `usage_row` over its valid events."""

    records: int
    validate_s: float
    valid: int
    resolve_s: float

    def as_json(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "validateSeconds": round(self.validate_s, 3),
            "validatePerSecond": round(self.records / self.validate_s, 1)
            if self.validate_s
            else None,
            "validateMicrosecondsPerEvent": round(1e6 * self.validate_s / max(self.records, 1), 1),
            "resolveAndRowSeconds": round(self.resolve_s, 3),
            "resolveAndRowMicrosecondsPerEvent": round(
                1e6 * self.resolve_s / max(self.valid, 1), 1
            ),
        }


_CEILING_SAMPLE: Final = 20_000


def measure_cpu_ceiling(records: Sequence[InputRecord], snapshot: ReferenceSnapshot) -> CpuCeiling:
    """Time `validate_record` (and `resolve` + `usage_row` for the valid ones) over up to
    20k records, keeping only the sample's valid events, with this process's large heap
    (every record of the topic) frozen out of the garbage collector: the per-event cost a
    worker pays, which holds one batch at a time."""
    sample = records[:_CEILING_SAMPLE]
    gc.collect()
    gc.freeze()
    try:
        started = time.process_time()
        valid = [
            (r, checked)
            for r in sample
            if isinstance(checked := validate_record(r.value, MAX_MESSAGE_BYTES), ValidEvent)
        ]
        validate_s = time.process_time() - started
        started = time.process_time()
        for record, checked in valid:
            resolution = resolve(checked.event, checked.usage_date, snapshot)
            if isinstance(resolution, Resolution):
                usage_row(record, checked, resolution)
        resolve_s = time.process_time() - started
    finally:
        gc.unfreeze()
    return CpuCeiling(len(sample), validate_s, len(valid), resolve_s)


async def build_rows(
    env: BenchEnvironment, records: Sequence[InputRecord]
) -> tuple[list[UsageRow], CpuCeiling]:
    """The rows the pipeline stores for these records, made with the project's own
    validation, resolution (against reference data fetched with `Store.fetch_reference`)
    and `usage_row`: the first record of each externalReference that resolves. Also
    measures the CPU ceiling of those functions (`measure_cpu_ceiling`)."""
    valid: list[tuple[InputRecord, ValidEvent]] = []
    for record in records:
        checked = validate_record(record.value, MAX_MESSAGE_BYTES)
        if isinstance(checked, ValidEvent):
            valid.append((record, checked))
    keys = ReferenceKeys.for_events((v.event, v.usage_date) for _, v in valid)
    url = await env.fresh_database("reference")
    store = await Store.open(url, max_size=1)
    try:
        snapshot = await store.fetch_reference(keys)
    finally:
        await store.close()
    await env.drop_database(url)
    rows: dict[str, UsageRow] = {}
    for record, checked in valid:
        resolution = resolve(checked.event, checked.usage_date, snapshot)
        if isinstance(resolution, Resolution):
            rows.setdefault(
                checked.event.external_reference, usage_row(record, checked, resolution)
            )
    del valid
    return list(rows.values()), measure_cpu_ceiling(records, snapshot)


@dataclass(slots=True)
class StorageLimit:
    rows: int
    seconds: dict[str, float]  # method -> seconds

    def per_second(self, method: str) -> float:
        return self.rows / self.seconds[method] if self.seconds.get(method) else 0.0

    @property
    def best(self) -> str:
        return min(self.seconds, key=lambda m: self.seconds[m])

    def as_json(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "methods": {
                m: {"seconds": round(s, 3), "rowsPerSecond": round(self.per_second(m), 1)}
                for m, s in self.seconds.items()
            },
            "fastest": self.best,
            "rowsPerSecond": round(self.per_second(self.best), 1),
        }


STORAGE_METHODS: Final = {
    "copy": "COPY into usages (copy_records_to_table), chunks of up to 20k rows",
    "copy_2conn": "COPY into usages on 2 connections at once, chunks of up to 20k rows",
    "copy_upsert": "COPY into a temp table + INSERT ... ON CONFLICT DO NOTHING, same chunks",
    "unnest_5000": "raw set-based insert: INSERT ... SELECT FROM unnest(...) ON CONFLICT DO "
    "NOTHING, 5000-row batches, 1 connection",
    "store_usages_1000": "the worker's own Store.store_usages (COPY into its staging table, "
    "claim and insert, stored rows back), 1000-row batches",
}
# The raw set-based insert: what a batch costs Postgres without the answers the worker
# needs (which rows were new, and the stored hash and source of the others).
_RAW_UNNEST_INSERT: Final = """
INSERT INTO usages (
    external_reference, contract_id, debtor_id, inventory_id, product_item_id, product_ident,
    description, start_date, end_date, operating_site, tax_location, performance_location,
    service_country, unit_quantities, properties, billable, payload_hash, raw_payload,
    source_topic, source_partition, source_offset
)
SELECT * FROM unnest(
    $1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], $6::text[],
    $7::text[], $8::timestamptz[], $9::timestamptz[], $10::text[], $11::jsonb[],
    $12::jsonb[], $13::text[], $14::jsonb[], $15::jsonb[], $16::boolean[], $17::text[],
    $18::text[], $19::text[], $20::integer[], $21::bigint[]
)
ON CONFLICT (external_reference) DO NOTHING
"""


async def measure_storage_limit(env: BenchEnvironment, rows: Sequence[UsageRow]) -> StorageLimit:
    """Store the same rows into the same (fresh, empty) tables by each method; no Kafka,
    no validation. Row values are turned into tuples and column arrays before the clock
    starts. Each method runs on its own fresh database, on connections set up like the
    worker's (`jit` off), after a warm-up with its first 1000 rows (then truncated) so
    that no method pays first-use costs the busy worker has long paid."""
    # The worker stages instants as RFC 3339 text; every other method writes `usages`'
    # timestamptz columns straight, so it is given datetimes (converted before the clock).
    tuples = [_with_datetimes(r) for r in rows]
    result = StorageLimit(len(rows), {})
    for method in STORAGE_METHODS:
        url = await env.fresh_database(f"limit_{method}")
        conns = [await asyncpg.connect(url, server_settings={"jit": "off"}) for _ in range(2)]
        try:
            if method.startswith("store_usages_"):
                result.seconds[method] = await _store_by_the_worker(url, conns[0], rows)
                continue
            await _store_by(method, conns, tuples[:_WARM_UP_ROWS])
            await conns[0].execute("TRUNCATE usages")
            result.seconds[method] = await _store_by(method, conns, tuples)
            stored = await conns[0].fetchval("SELECT count(*) FROM usages")
            if stored != len(rows):
                raise RuntimeError(f"{method} stored {stored} of {len(rows)} rows")
        finally:
            for conn in conns:
                await conn.close()
            await env.drop_database(url)
    return result


async def _store_by(
    method: str, conns: Sequence[asyncpg.Connection], tuples: Sequence[tuple[Any, ...]]
) -> float:
    # At most 20k rows a chunk, and at least 8 chunks (so two connections share the work).
    size = max(min(_COPY_CHUNK, len(tuples) // 8), 500)
    chunks = [tuples[i : i + size] for i in range(0, len(tuples), size)]
    if method.startswith("unnest_"):
        batch = int(method.rpartition("_")[2])
        batches = [
            [list(c) for c in zip(*tuples[i : i + batch], strict=True)]
            for i in range(0, len(tuples), batch)
        ]
        started = time.monotonic()
        for columns in batches:
            await conns[0].execute(_RAW_UNNEST_INSERT, *columns)
        return time.monotonic() - started
    if method == "copy_upsert":
        column_list = ", ".join(_COLUMNS)
        await conns[0].execute(
            "CREATE TEMP TABLE IF NOT EXISTS bench_incoming AS "  # noqa: S608 - column names
            f"SELECT {column_list} FROM usages WITH NO DATA"  # from the dataclass
        )
        started = time.monotonic()
        for chunk in chunks:
            async with conns[0].transaction():
                await conns[0].copy_records_to_table(
                    "bench_incoming", records=chunk, columns=_COLUMNS
                )
                await conns[0].execute(
                    f"INSERT INTO usages ({column_list}) SELECT {column_list} FROM bench_incoming "  # noqa: S608
                    "ORDER BY external_reference ON CONFLICT (external_reference) DO NOTHING"
                )
                await conns[0].execute("TRUNCATE bench_incoming")
        return time.monotonic() - started
    started = time.monotonic()
    if method == "copy":
        for chunk in chunks:
            await conns[0].copy_records_to_table("usages", records=chunk, columns=_COLUMNS)
    elif method == "copy_2conn":

        async def copy_every_other(conn: asyncpg.Connection, first: int) -> None:
            for chunk in chunks[first :: len(conns)]:
                await conn.copy_records_to_table("usages", records=chunk, columns=_COLUMNS)

        await asyncio.gather(*(copy_every_other(c, i) for i, c in enumerate(conns)))
    else:
        raise ValueError(method)
    return time.monotonic() - started


def _with_datetimes(row: UsageRow) -> tuple[Any, ...]:
    values: list[Any] = list(row)
    for name in ("start_date", "end_date"):
        index = USAGE_COLUMNS.index(name)
        values[index] = datetime.fromisoformat(values[index])
    return tuple(values)


async def _store_by_the_worker(
    url: str, conn: asyncpg.Connection, rows: Sequence[UsageRow], batch: int = 1000
) -> float:
    """`Store.store_usages` as the worker calls it, batch after batch."""
    store = await Store.open(url, max_size=1)
    try:
        await store.store_usages(rows[:_WARM_UP_ROWS])
        await conn.execute("TRUNCATE usages")
        started = time.monotonic()
        for i in range(0, len(rows), batch):
            await store.store_usages(rows[i : i + batch])
        return time.monotonic() - started
    finally:
        await store.close()


# --- the pipeline (and the same with two workers) ---------------------------------------


@dataclass(slots=True)
class PipelineResult:
    workers: int
    drained: Drained
    exit_codes: list[int | None]
    checks: list[Check]
    rows_stored: int
    profile: str | None = None
    worker_metrics: list[dict[str, Any]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "workers": self.workers,
            **self.drained.as_json(),
            "rowsStored": self.rows_stored,
            "exitCodes": self.exit_codes,
            "profile": self.profile,
            "workerMetrics": self.worker_metrics,
        }


async def measure_pipeline(
    env: BenchEnvironment,
    workload: Preloaded,
    *,
    name: str,
    workers: int,
    worker_env: dict[str, str],
    timeout_s: float,
    profile: Path | None = None,
    module: str | None = None,
) -> PipelineResult:
    """The real worker (`workers` processes in one group) drains the preloaded backlog;
    with `module`, that variant of it (`bench.refusals_not_stored`)."""
    topics = dataclasses.replace(Topics.named(name, env.run), events=workload.topic)
    await env.create_output_topics(topics)
    url = await env.fresh_database(name)
    procs = [
        WorkerProcess.for_topics(env, topics, url, f"{name}-{i}", worker_env, module=module)
        for i in range(workers)
    ]
    profiler: Profiler | None = None
    try:
        for proc in procs:
            proc.start()
        if profile is not None:
            profiler = Profiler(procs[0].pid, profile)
        drained = await drain(env, procs, topics, workload.ends, timeout_s=timeout_s)
        if profiler is not None:
            await profiler.stop()
        scraped = [await proc.scrape() for proc in procs]
    finally:
        codes = await stop_all(procs)
    checks, rows = await _check_outputs(env, topics, url, workload)
    checks.append(Check(f"{name}: workers exited 0", all(c == 0 for c in codes), str(codes)))
    await env.drop_database(url)
    await env.delete_topics(topics.outputs)
    return PipelineResult(
        workers,
        drained,
        codes,
        checks,
        rows,
        str(profile) if profiler is not None and profiler.active else None,
        scraped,
    )


async def _check_outputs(
    env: BenchEnvironment, topics: Topics, url: str, workload: Preloaded
) -> tuple[list[Check], int]:
    """Rows stored, outcomes and dead letters published, and `usage-ingest lag`'s view."""
    expected = workload.tally.by_outcome
    conn = await asyncpg.connect(url)
    try:
        rows = int(await conn.fetchval("SELECT count(*) FROM usages"))
    finally:
        await conn.close()
    ends = await env.topic_ends(topics.outputs)
    accepted = sum(v for (t, _), v in ends.items() if t == topics.accepted)
    rejected = sum(v for (t, _), v in ends.items() if t == topics.rejected)
    dead = sum(v for (t, _), v in ends.items() if t == topics.dlq)
    settings = env.settings(topics)
    report = await lag_report(settings, topics.group, [topics.events])
    name = topics.group.rpartition(".")[2]
    return [
        _equal(f"{name}: usage rows", rows, expected[CREATED]),
        _at_least(f"{name}: accepted outcomes", accepted, expected[CREATED] + expected[DUPLICATE]),
        _at_least(f"{name}: rejected outcomes", rejected, expected[REJECTED]),
        _at_least(f"{name}: dead letters", dead, expected[REJECTED]),
        _equal(f"{name}: offset lag (usage-ingest lag)", report.offset_lag, 0),
    ], rows


# --- the naive worker --------------------------------------------------------------------------


async def measure_naive(
    env: BenchEnvironment, workload: Preloaded, *, max_records: int, max_seconds: float
) -> tuple[NaiveResult, list[Check]]:
    topics = dataclasses.replace(Topics.named("naive", env.run), events=workload.topic)
    await env.create_output_topics(topics)
    url = await env.fresh_database("naive")
    try:
        result = await run_naive(
            env.settings(topics, url), max_records=max_records, max_seconds=max_seconds
        )
    finally:
        await env.drop_database(url)
        await env.delete_topics(topics.outputs)
    check = Check("naive: processed records", result.records > 0, f"{result.records} records")
    return result, [check]


# --- latency at a fixed offered load ------------------------------------------------------------

_WARMUP_EVENTS: Final = 100
_TICK_S: Final = 0.01


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile; NaN when there are no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(math.ceil(q * len(ordered) / 100), 1)
    return ordered[min(rank, len(ordered)) - 1]


def _distribution(values: Sequence[float]) -> dict[str, float]:
    return {
        "count": len(values),
        "p50Ms": round(percentile(values, 50), 1),
        "p90Ms": round(percentile(values, 90), 1),
        "p99Ms": round(percentile(values, 99), 1),
        "maxMs": round(max(values, default=float("nan")), 1),
    }


@dataclass(slots=True)
class LatencyResult:
    offered_rate: float
    achieved_rate: float
    produced: int
    latencies_ms: list[float]
    worker_cores: float
    peak_rss_bytes: int
    cores: dict[str, float] = field(default_factory=dict)
    # Per second of offered load: (second, p50, p99, max) of the events sent in it.
    series: list[tuple[int, float, float, float]] = field(default_factory=list)
    floor_ms: list[float] = field(default_factory=list)
    worker_metrics: dict[str, Any] = field(default_factory=dict)

    def percentile(self, q: float) -> float:
        return percentile(self.latencies_ms, q)

    def as_json(self) -> dict[str, Any]:
        return {
            "offeredRate": self.offered_rate,
            "achievedRate": round(self.achieved_rate, 1),
            "produced": self.produced,
            "measured": len(self.latencies_ms),
            "p50Ms": round(self.percentile(50), 1),
            "p90Ms": round(self.percentile(90), 1),
            "p99Ms": round(self.percentile(99), 1),
            "p999Ms": round(self.percentile(99.9), 1),
            "maxMs": round(max(self.latencies_ms, default=float("nan")), 1),
            "workerCores": round(self.worker_cores, 3),
            "peakRssBytes": self.peak_rss_bytes,
            "coresUsed": self.cores,
            "perSecond": [
                {"second": t, "p50Ms": a, "p99Ms": b, "maxMs": c} for t, a, b, c in self.series
            ],
            "brokerFloor": _distribution(self.floor_ms),
            "workerMetrics": self.worker_metrics,
        }


async def _pace(
    producer: AIOKafkaProducer,
    topic: str,
    events: Sequence[BenchEvent],
    rate: float,
    seconds: float,
) -> tuple[int, float, list[asyncio.Future[Any]]]:
    """Send `events` at `rate` per second for `seconds`, a tick every 10 ms (each tick sends
    what is due by then); returns how many were sent, the achieved rate and the futures."""
    loop = asyncio.get_running_loop()
    produced, futures, started, tick = 0, [], loop.time(), 0
    while (elapsed := loop.time() - started) < seconds:
        due = min(int(rate * elapsed) + 1, len(events))
        while produced < due:
            event = events[produced]
            futures.append(await producer.send(topic, event.value, key=event.key))
            produced += 1
        tick += 1
        await asyncio.sleep(max(started + tick * _TICK_S - loop.time(), 0))
    return produced, produced / (loop.time() - started), futures


async def _eventually(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(0.05)
    return condition()


def _upstream(env: BenchEnvironment) -> AIOKafkaProducer:
    """The producer standing in for upstream systems: one send per event, acks=all."""
    return AIOKafkaProducer(
        bootstrap_servers=env.bootstrap,
        client_id="bench-upstream",
        acks="all",
        enable_idempotence=False,
        max_request_size=4 * 1024 * 1024,
    )


async def measure_latency_floor(
    env: BenchEnvironment,
    model: ReferenceModel,
    *,
    seed: int,
    partitions: int,
    rate: float,
    seconds: float,
) -> list[float]:
    """The broker's share of the latency: a plain aiokafka consumer in a group (aiokafka's
    default fetch settings, as the worker has) receives events offered at the same rate;
    latency is receipt time minus record timestamp, no processing at all."""
    topics = Topics.named("floor", env.run)
    await env.create_topics(topics, partitions)
    events = list(EventStream(model, seed, "floor").take(int(rate * seconds) + 1))
    consumer = AIOKafkaConsumer(
        topics.events,
        bootstrap_servers=env.bootstrap,
        group_id=topics.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=SESSION_TIMEOUT_MS,
        heartbeat_interval_ms=SESSION_TIMEOUT_MS // 10,
    )
    producer = _upstream(env)
    received: list[float] = []

    async def receive() -> None:
        while True:
            batches = await consumer.getmany(timeout_ms=200)
            now_ms = time.time() * 1000
            received.extend(now_ms - m.timestamp for ms in batches.values() for m in ms)

    await producer.start()
    await consumer.start()
    task = asyncio.create_task(receive())
    try:
        await _eventually(lambda: bool(consumer.assignment()), 30)
        produced, _, futures = await _pace(producer, topics.events, events, rate, seconds)
        await asyncio.gather(*futures)
        await _eventually(lambda: len(received) >= produced, 10)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await consumer.stop()
        await producer.stop()
        await env.delete_topics([topics.events, *topics.outputs])
    return received


class _OutcomeReader:
    """Reads the outcome topics from the start: for each outcome, its source partition and
    offset and its latency (outcome record timestamp, set by the worker's producer when it
    sent the outcome, minus the input record's timestamp in `source.timestamp`)."""

    def __init__(self, env: BenchEnvironment, topics: Topics) -> None:
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=env.bootstrap, group_id=None, enable_auto_commit=False
        )
        self._partitions = [TopicPartition(topics.accepted, 0), TopicPartition(topics.rejected, 0)]
        # (partition, offset, input record timestamp in ms, latency in ms)
        self.seen: list[tuple[int, int, float, float]] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._consumer.start()
        self._consumer.assign(self._partitions)
        await self._consumer.seek_to_beginning(*self._partitions)
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            batches = await self._consumer.getmany(timeout_ms=100)
            for messages in batches.values():
                for m in messages:
                    source = json.loads(m.value)["source"]
                    sent = datetime.fromisoformat(source["timestamp"]).timestamp() * 1000
                    self.seen.append(
                        (source["partition"], source["offset"], sent, m.timestamp - sent)
                    )

    async def wait_for(self, count: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.seen) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.seen)} of {count} outcomes after {timeout_s:g} s")
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._consumer.stop()


async def measure_latency(
    env: BenchEnvironment,
    model: ReferenceModel,
    *,
    seed: int,
    partitions: int,
    rate: float,
    seconds: float,
    worker_env: dict[str, str],
) -> tuple[LatencyResult, list[Check]]:
    """The worker runs on an empty topic; events are produced at `rate` per second (paced
    per 10 ms tick) for `seconds`; latency is measured for every outcome (after a warm-up
    of 100 events, whose outcomes are left out). Before that, the broker's own floor is
    measured at the same rate for up to 10 s (`measure_latency_floor`)."""
    floor = await measure_latency_floor(
        env, model, seed=seed, partitions=partitions, rate=rate, seconds=min(seconds, 10)
    )
    topics = Topics.named("latency", env.run)
    await env.create_topics(topics, partitions)
    url = await env.fresh_database("latency")
    worker = WorkerProcess.for_topics(env, topics, url, "latency", worker_env)
    stream = EventStream(model, seed, "lat")
    warmup = list(stream.take(_WARMUP_EVENTS))
    paced = list(stream.take(int(rate * seconds) + 1))
    reader = _OutcomeReader(env, topics)
    producer = _upstream(env)
    await producer.start()
    await reader.start()
    worker.start()
    try:
        sent = [await producer.send(topics.events, e.value, key=e.key) for e in warmup]
        warm_ends: dict[int, int] = {}
        for md in await asyncio.gather(*sent):
            warm_ends[md.partition] = max(warm_ends.get(md.partition, 0), md.offset + 1)
        await reader.wait_for(len(warmup), 60)
        meter = env.cpu_meter({"workers": [worker.pid]})
        before = meter.snapshot(time.monotonic())
        produced, achieved, futures = await _pace(producer, topics.events, paced, rate, seconds)
        await asyncio.gather(*futures)
        await reader.wait_for(len(warmup) + produced, 60)
        after = meter.snapshot(time.monotonic())
        peak = worker.peak_rss_bytes()
        scraped = await worker.scrape()
    finally:
        await reader.stop()
        await producer.stop()
        code = await worker.stop()
    measured = [(ts, ms) for p, o, ts, ms in reader.seen if o >= warm_ends.get(p, 0)]
    cores = procfs.cores_used(before, after)
    result = LatencyResult(
        rate,
        achieved,
        produced,
        [ms for _, ms in measured],
        cores.get("workers", 0.0),
        peak,
        cores,
        _per_second(measured),
        floor,
        scraped,
    )
    checks = [
        _equal("latency: outcomes measured", len(measured), produced),
        Check("latency: worker exited 0", code == 0, str(code)),
    ]
    await env.drop_database(url)
    await env.delete_topics([topics.events, *topics.outputs])
    return result, checks


def _per_second(measured: Sequence[tuple[float, float]]) -> list[tuple[int, float, float, float]]:
    """p50, p99 and max of the events offered in each second of the run."""
    if not measured:
        return []
    start = min(ts for ts, _ in measured)
    buckets: dict[int, list[float]] = {}
    for ts, ms in measured:
        buckets.setdefault(int((ts - start) // 1000), []).append(ms)
    return [
        (second, round(percentile(v, 50), 1), round(percentile(v, 99), 1), round(max(v), 1))
        for second, v in sorted(buckets.items())
    ]


# --- memory under backlog ---------------------------------------------------------------------


@dataclass(slots=True)
class MemoryRun:
    backlog: int
    measured_records: int
    preload_s: float
    drained: Drained

    def as_json(self) -> dict[str, Any]:
        return {
            "backlog": self.backlog,
            "measuredRecords": self.measured_records,
            "preloadSeconds": round(self.preload_s, 1),
            "peakRssBytes": self.drained.peak_rss_bytes[0],
            "eventsPerSecond": round(self.drained.per_second, 1),
            "rssSamples": self.drained.rss_samples,
        }


async def measure_memory(
    env: BenchEnvironment,
    model: ReferenceModel,
    *,
    seed: int,
    partitions: int,
    backlogs: Iterable[int],
    measured: int,
    worker_env: dict[str, str],
    timeout_s: float,
    progress: Any,
) -> tuple[list[MemoryRun], list[Check]]:
    """For each backlog size: a topic holding that many events (the same stream, so the
    first `measured` events are the same), a fresh worker, and its peak RSS (VmHWM) when
    its group has committed `measured` records. The worker is then stopped."""
    runs, checks = [], []
    for backlog in backlogs:
        topics = Topics.named(f"memory{backlog}", env.run)
        await env.create_topics(topics, partitions)
        progress(f"memory: preloading a backlog of {backlog:,} events")
        loaded = await env.preload(topics.events, EventStream(model, seed, "mem").take(backlog))
        url = await env.fresh_database(f"memory{backlog}")
        worker = WorkerProcess.for_topics(env, topics, url, f"memory-{backlog}", worker_env)
        try:
            worker.start()
            progress(f"memory: worker processing the first {measured:,} of {backlog:,}")
            drained = await drain(
                env, [worker], topics, loaded.ends, target=measured, timeout_s=timeout_s
            )
        finally:
            code = await worker.stop()
        checks.append(Check(f"memory {backlog}: worker exited 0", code == 0, str(code)))
        runs.append(MemoryRun(backlog, min(measured, backlog), loaded.seconds, drained))
        await env.drop_database(url)
        await env.delete_topics([topics.events, *topics.outputs])
    return runs, checks
