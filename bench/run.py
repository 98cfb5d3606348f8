"""One benchmark run: start the servers, run the selected measurements in order, and turn
their results into the table and the JSON document."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Final

from rich.console import Console

from bench import procfs
from bench.environment import BenchEnvironment, Preloaded, Topics
from bench.measurements import (
    STORAGE_METHODS,
    Check,
    ConsumeLimit,
    CpuCeiling,
    LatencyResult,
    MemoryRun,
    PipelineResult,
    StorageLimit,
    build_rows,
    measure_consume_limit,
    measure_kafka_floor,
    measure_latency,
    measure_memory,
    measure_naive,
    measure_pipeline,
    measure_storage_limit,
    percentile,
)
from bench.naive import NaiveResult
from bench.profile import summarise
from bench.readside import (
    PAGE_SIZE,
    READ_CONTRACTS,
    ReadSideResult,
    measure_readside,
    median,
)
from bench.report import MIB, Row
from bench.workload import EventStream, build_reference

MEASUREMENTS: Final = (
    "limit",
    "pipeline",
    "refusals",
    "two-workers",
    "naive",
    "latency",
    "memory",
    "readside",
)
PROJECT: Final = Path(__file__).resolve().parents[1]

# Targets of the issue, on this 2-core machine.
TARGET_VS_RAW_INSERT: Final = 0.6  # over the raw set-based insert (unnest, 5000 rows)
TARGET_VS_COPY_UPSERT: Final = 0.4  # over COPY into a temp table + INSERT ... ON CONFLICT
TARGET_WORKER_CPU_US: Final = 35.0  # the worker's CPU per event
TARGET_VALIDATE_PER_S: Final = 100_000.0  # validate_record alone, one core
TARGET_REFUSALS_KEPT: Final = 1.10  # worker CPU with refusals stored, over without
RAW_INSERT: Final = "unnest_5000"
COPY_UPSERT: Final = "copy_upsert"
TARGET_VS_NAIVE: Final = 15.0
TARGET_P99_MS: Final = 250.0
TARGET_MEMORY_BAND: Final = 0.2
# A second worker can only help when the single-worker run left a core's worth of idle CPU
# (half a core at least); below that the verdict is "not decidable here".
MIN_HEADROOM_CORES: Final = 0.5
_MEMORY_RUNS: Final = 2  # the small and the large backlog
# The read side (SPEC-API.md), over 1M stored usages.
TARGET_PAGE_P99_MS: Final = 50.0  # one page of GET /usages, one contract and month
TARGET_SUMMARY_DAY_MS: Final = 200.0  # one contract-month by day
TARGET_SUMMARY_ALL_S: Final = 3.0  # every contract of a month, by contract
TARGET_CSV_LINES_PER_S: Final = 50_000.0  # the CSV export of one month
TARGET_CSV_RSS_GROWTH_MIB: Final = 50.0  # the API's RSS while it streams

_err = Console(stderr=True, highlight=False, width=160)


@dataclass(slots=True)
class BenchOptions:
    events: int
    partitions: int
    seed: int
    latency_rate: float
    latency_seconds: float
    backlog_small: int
    backlog_large: int
    memory_records: int
    naive_records: int
    naive_seconds: float
    quick: bool
    only: tuple[str, ...]
    out: Path
    worker_env: dict[str, str] = field(default_factory=dict)
    profile: Path | None = None
    workdir: Path | None = None
    drain_timeout_s: float = 1200.0


@dataclass(slots=True)
class Results:
    workload: Preloaded | None = None
    consume: ConsumeLimit | None = None
    kafka_floor: ConsumeLimit | None = None
    storage: StorageLimit | None = None
    cpu_ceiling: CpuCeiling | None = None
    pipeline: PipelineResult | None = None
    two_workers: PipelineResult | None = None
    without_refusals: PipelineResult | None = None  # bench.refusals_not_stored
    naive: NaiveResult | None = None
    latency: LatencyResult | None = None
    memory: list[MemoryRun] = field(default_factory=list)
    readside: ReadSideResult | None = None
    checks: list[Check] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    profile: dict[str, Any] | None = None


class _Clock:
    def __init__(self) -> None:
        self.started = time.monotonic()

    def say(self, message: str) -> None:
        _err.print(f"[dim][bench {time.monotonic() - self.started:6.1f}s][/] {message}")

    @contextlib.contextmanager
    def step(self, name: str, timings: dict[str, float]) -> Iterator[None]:
        started = time.monotonic()
        yield
        timings[name] = round(time.monotonic() - started, 1)


@contextlib.contextmanager
def _workdir(given: Path | None) -> Iterator[Path]:
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        yield given
        return
    with tempfile.TemporaryDirectory(prefix="usage-ingest-bench-") as tmp:
        yield Path(tmp)


async def run_bench(opts: BenchOptions) -> tuple[dict[str, Any], list[Row]]:
    clock = _Clock()
    started_at = datetime.now(UTC)
    load_start = procfs.load_average()
    git_info = _git()
    results = Results()
    with _workdir(opts.workdir) as workdir:
        env = BenchEnvironment(workdir)
        clock.say(f"starting the embedded broker and PostgreSQL in {env.workdir}")
        env.start()
        try:
            versions = await env.versions()
            await _measure(env, opts, results, clock)
        except BaseException:
            clock.say(f"[red]failed[/]; logs were in {env.workdir} (--workdir keeps them)")
            raise
        finally:
            env.stop()
    duration = time.monotonic() - clock.started
    rows = table_rows(results)
    document = {
        "benchmark": "usage-ingest",
        "schemaVersion": 1,
        "startedAt": started_at.isoformat(timespec="seconds"),
        "durationSeconds": round(duration, 1),
        "git": git_info,
        "machine": _machine(versions, load_start),
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(opts).items()},
        "stepSeconds": results.timings,
        "results": _results_json(results),
        "table": [row.as_json() for row in rows],
        "ratios": _ratios(results),
        "checks": [c.as_json() for c in results.checks],
        "profile": results.profile,
    }
    return document, rows


async def _measure(  # noqa: PLR0915 - the run, step by step
    env: BenchEnvironment, opts: BenchOptions, results: Results, clock: _Clock
) -> None:
    selected = set(opts.only)
    timings = results.timings
    model = build_reference(opts.seed)
    clock.say(
        "loading reference data into the template database: "
        + ", ".join(f"{k} {v:,}" for k, v in model.summary().items())
    )
    with clock.step("template", timings):
        await env.prepare_template(model.reference_file)

    if selected & {"limit", "pipeline", "refusals", "two-workers", "naive"}:
        topics = Topics.named("workload", env.run)
        await env.create_topics(topics, opts.partitions)
        clock.say(f"preloading {opts.events:,} events on {opts.partitions} partitions")
        with clock.step("preload", timings):
            results.workload = await env.preload(
                topics.events, EventStream(model, opts.seed, "wl").take(opts.events)
            )
        tally = results.workload.tally
        clock.say(
            f"workload: {tally.events:,} events ({tally.value_bytes / tally.events:.0f} bytes "
            f"on average) in {results.workload.seconds:.1f} s; expected outcomes "
            + ", ".join(f"{k} {v:,}" for k, v in sorted(tally.by_outcome.items()))
        )
    workload = results.workload
    timeout = opts.drain_timeout_s

    if "limit" in selected and workload is not None:
        clock.say("limit: raw aiokafka consume of the workload topic")
        with clock.step("consume_limit", timings):
            results.consume, records = await measure_consume_limit(env, workload, keep=True)
        clock.say(f"limit: consumed at {results.consume.per_second:,.0f} records/s")
        clock.say("limit: the worker's Kafka I/O alone (consume, one outcome each, commit)")
        with clock.step("kafka_floor", timings):
            results.kafka_floor = await measure_kafka_floor(env, workload)
        clock.say(
            f"limit: Kafka I/O alone {results.kafka_floor.per_second:,.0f} events/s, "
            f"{_us_per_record(results.kafka_floor):.1f} CPU µs/event"
        )
        with clock.step("build_rows", timings):
            rows, results.cpu_ceiling = await build_rows(env, records)
        del records
        clock.say(f"limit: storing {len(rows):,} rows by {len(STORAGE_METHODS)} methods")
        with clock.step("storage_limit", timings):
            results.storage = await measure_storage_limit(env, rows)
        del rows
        storage = results.storage
        clock.say(
            "limit: "
            + ", ".join(f"{m} {storage.per_second(m):,.0f} rows/s" for m in storage.seconds)
        )

    if "pipeline" in selected and workload is not None:
        clock.say(f"pipeline: 1 worker drains {workload.records:,} events")
        with clock.step("pipeline", timings):
            results.pipeline = await measure_pipeline(
                env,
                workload,
                name="pipeline",
                workers=1,
                worker_env=opts.worker_env,
                timeout_s=timeout,
                profile=opts.profile,
            )
        results.checks += results.pipeline.checks
        clock.say(f"pipeline: {results.pipeline.drained.per_second:,.0f} events/s")
        if results.pipeline.profile:
            with contextlib.suppress(OSError):
                summary = summarise(Path(results.pipeline.profile))
                results.profile = summary.as_json()
                clock.say("pipeline profile:\n" + "\n".join(summary.lines()))

    if "refusals" in selected and workload is not None:
        clock.say(f"refusals: the worker without keeping them drains {workload.records:,} events")
        with clock.step("without_refusals", timings):
            results.without_refusals = await measure_pipeline(
                env,
                workload,
                name="norefusals",
                workers=1,
                worker_env=opts.worker_env,
                timeout_s=timeout,
                module="bench.refusals_not_stored",
            )
        results.checks += results.without_refusals.checks

    if "two-workers" in selected and workload is not None:
        clock.say(f"two workers: 2 processes in one group drain {workload.records:,} events")
        with clock.step("two_workers", timings):
            results.two_workers = await measure_pipeline(
                env,
                workload,
                name="twoworkers",
                workers=2,
                worker_env=opts.worker_env,
                timeout_s=timeout,
            )
        results.checks += results.two_workers.checks
        clock.say(f"two workers: {results.two_workers.drained.per_second:,.0f} events/s")

    if "naive" in selected and workload is not None:
        clock.say(
            f"naive: one record at a time, up to {opts.naive_records:,} records "
            f"or {opts.naive_seconds:g} s"
        )
        with clock.step("naive", timings):
            results.naive, checks = await measure_naive(
                env, workload, max_records=opts.naive_records, max_seconds=opts.naive_seconds
            )
        results.checks += checks
        clock.say(f"naive: {results.naive.per_second:,.0f} events/s")

    if workload is not None:
        await env.delete_topics([workload.topic])

    if "latency" in selected:
        clock.say(f"latency: {opts.latency_rate:g} events/s offered for {opts.latency_seconds:g} s")
        with clock.step("latency", timings):
            results.latency, checks = await measure_latency(
                env,
                model,
                seed=opts.seed,
                partitions=opts.partitions,
                rate=opts.latency_rate,
                seconds=opts.latency_seconds,
                worker_env=opts.worker_env,
            )
        results.checks += checks
        lat = results.latency
        clock.say(
            f"latency: p50 {lat.percentile(50):.0f} ms, p99 {lat.percentile(99):.0f} ms, "
            f"max {max(lat.latencies_ms, default=math.nan):.0f} ms; broker alone: p50 "
            f"{percentile(lat.floor_ms, 50):.0f} ms, p99 {percentile(lat.floor_ms, 99):.0f} ms"
        )

    if "memory" in selected:
        with clock.step("memory", timings):
            results.memory, checks = await measure_memory(
                env,
                model,
                seed=opts.seed,
                partitions=opts.partitions,
                backlogs=(opts.backlog_small, opts.backlog_large),
                measured=opts.memory_records,
                worker_env=opts.worker_env,
                timeout_s=timeout,
                progress=clock.say,
            )
        results.checks += checks
        clock.say(
            "memory: peak RSS "
            + ", ".join(
                f"{run.backlog:,} backlog {run.drained.peak_rss_bytes[0] / MIB:.1f} MiB"
                for run in results.memory
            )
        )
    await _measure_readside(env, selected, results, clock)


async def _measure_readside(
    env: BenchEnvironment, selected: set[str], results: Results, clock: _Clock
) -> None:
    """The API's read side over a large table (bench/readside.py)."""
    if "readside" not in selected:
        return
    with clock.step("readside", results.timings):
        results.readside, checks = await measure_readside(env, progress=clock.say)
    results.checks += checks
    r = results.readside
    clock.say(
        f"read side: page p99 {percentile(r.page_ms, 99):.1f} ms, summaries "
        f"{median(r.summary_day_ms):.0f} / {median(r.summary_all_ms):.0f} ms, CSV "
        f"{r.csv.per_second:,.0f} lines/s, RSS +{r.csv.rss_growth_bytes / MIB:.1f} MiB"
    )


# --- the table ------------------------------------------------------------------------------


def _ratios(results: Results) -> dict[str, float | None]:
    pipeline = results.pipeline
    ratios: dict[str, float | None] = {
        "pipelineOverStorageLimit": None,
        "pipelineOverRawInsert": None,
        "pipelineOverCopyUpsert": None,
        "pipelineOverNaive": None,
        "pipelineOverConsumeLimit": None,
        "twoWorkersOverOne": None,
        "memoryLargeOverSmall": None,
    }
    if pipeline is not None and results.workload is not None:
        rows_per_s = _pipeline_rows_per_s(results)
        if results.storage is not None and rows_per_s is not None:
            best = results.storage.per_second(results.storage.best)
            ratios["pipelineOverStorageLimit"] = round(rows_per_s / best, 3)
            for name, method in (
                ("pipelineOverRawInsert", RAW_INSERT),
                ("pipelineOverCopyUpsert", COPY_UPSERT),
            ):
                if method in results.storage.seconds:
                    ratios[name] = round(rows_per_s / results.storage.per_second(method), 3)
        if results.naive is not None and results.naive.per_second:
            ratios["pipelineOverNaive"] = round(
                pipeline.drained.per_second / results.naive.per_second, 2
            )
        if results.consume is not None and results.consume.per_second:
            ratios["pipelineOverConsumeLimit"] = round(
                pipeline.drained.per_second / results.consume.per_second, 3
            )
        if results.two_workers is not None and pipeline.drained.per_second:
            ratios["twoWorkersOverOne"] = round(
                results.two_workers.drained.per_second / pipeline.drained.per_second, 3
            )
    if len(results.memory) == _MEMORY_RUNS and results.memory[0].drained.peak_rss_bytes[0]:
        small, large = (m.drained.peak_rss_bytes[0] for m in results.memory)
        ratios["memoryLargeOverSmall"] = round(large / small, 3)
    return ratios


def _us_per_record(measured: ConsumeLimit) -> float:
    return 1e6 * measured.cpu_s / max(measured.records, 1)


def _pipeline_rows_per_s(results: Results) -> float | None:
    """The pipeline's rate in stored rows per second: its events/s times the share of the
    workload's events that become a row (the storage limit stores exactly those rows)."""
    if results.pipeline is None or results.workload is None:
        return None
    workload = results.workload
    share = workload.tally.by_outcome["created"] / max(workload.records, 1)
    return results.pipeline.drained.per_second * share


def _storage_ratio_rows(results: Results, ratios: dict[str, float | None]) -> list[Row]:
    """The pipeline's stored rows/s over the same rows stored without Kafka or validation."""
    rows: list[Row] = []
    rows_per_s = _pipeline_rows_per_s(results)
    for name, method, target in (
        ("pipelineOverRawInsert", RAW_INSERT, TARGET_VS_RAW_INSERT),
        ("pipelineOverCopyUpsert", COPY_UPSERT, TARGET_VS_COPY_UPSERT),
    ):
        ratio = ratios[name]
        if ratio is not None:
            rows.append(
                Row(
                    f"pipeline / storage, {method}",
                    ratio,
                    "x",
                    f">= {target}",
                    ratio >= target,
                    "stored rows/s over the same rows stored that way, measured in this run",
                )
            )
    ratio = ratios["pipelineOverStorageLimit"]
    if ratio is not None and results.storage is not None and rows_per_s is not None:
        rows.append(
            Row(
                "pipeline / storage limit (fastest)",
                ratio,
                "x",
                note=f"over {results.storage.best}, a physical limit no idempotent writer reaches",
            )
        )
    return rows


def table_rows(results: Results) -> list[Row]:
    """Every row of the printed table, in its order."""
    ratios = _ratios(results)
    return [
        *_pipeline_rows(results),
        *_limit_rows(results),
        *_ceiling_rows(results),
        *_storage_ratio_rows(results, ratios),
        *_pipeline_ratio_rows(ratios),
        *_refusal_rows(results),
        *_latency_rows(results),
        *_memory_rows(results, ratios),
        *_two_worker_rows(results, ratios),
        *_readside_rows(results),
    ]


def _pipeline_rows(results: Results) -> list[Row]:
    """The real worker draining the backlog."""
    pipeline = results.pipeline
    if pipeline is None:
        return []
    d = pipeline.drained
    return [
        Row(
            "pipeline: sustained throughput",
            d.per_second,
            "events/s",
            note=f"{d.window_records:,} events in {d.window_s:.1f} s, first commit → log end",
        ),
        Row("pipeline: stored rows", _pipeline_rows_per_s(results), "rows/s"),
        Row(
            "pipeline: CPU per 1k events",
            d.cpu_s_per_1k,
            "CPU s",
            note=f"worker process; {d.cores.get('workers', 0):.2f} cores busy",
        ),
        Row(
            "pipeline: worker CPU per event",
            d.cpu_s_per_1k * 1000,
            "µs",
            f"<= {TARGET_WORKER_CPU_US:g}",
            d.cpu_s_per_1k * 1000 <= TARGET_WORKER_CPU_US,
            "every rule, outcome and dead letter",
        ),
        Row("pipeline: peak RSS", d.peak_rss_bytes[0] / MIB, "MiB", note="VmHWM"),
        Row(
            "pipeline: batches",
            None,
            "",
            note=_batch_note(pipeline.worker_metrics[0] if pipeline.worker_metrics else {}),
        ),
        Row(
            "pipeline: start → first commit (excluded)",
            d.started_to_first_commit_s,
            "s",
            note="process start-up and group join",
        ),
        Row(
            "machine: busy cores during pipeline",
            d.cores.get("machine"),
            "cores",
            note=_cores_note(d.cores),
        ),
    ]


def _limit_rows(results: Results) -> list[Row]:
    """The physical limits measured on the same machine in the same run."""
    rows: list[Row] = []
    pipeline = results.pipeline
    if results.storage is not None:
        storage = results.storage
        for method in storage.seconds:
            rows.append(
                Row(
                    f"limit: storage, {method}",
                    storage.per_second(method),
                    "rows/s",
                    note=STORAGE_METHODS[method],
                )
            )
        rows.append(
            Row(
                "limit: storage (fastest)",
                storage.per_second(storage.best),
                "rows/s",
                note=f"{storage.best}, {storage.rows:,} rows",
            )
        )
    if results.consume is not None:
        rows.append(
            Row(
                "limit: raw aiokafka consume",
                results.consume.per_second,
                "records/s",
                note=f"{results.consume.records:,} records, no processing",
            )
        )
    if results.kafka_floor is not None:
        floor = results.kafka_floor
        rows.append(
            Row(
                "limit: the worker's Kafka I/O alone, CPU",
                _us_per_record(floor),
                "µs",
                note=f"{floor.per_second:,.0f} events/s: its consumer, one outcome produced "
                "per event, a commit per batch, no work; part of the worker's CPU per event",
            )
        )
        if pipeline is not None:
            rows.append(
                Row(
                    "pipeline: worker CPU per event beyond Kafka I/O",
                    pipeline.drained.cpu_s_per_1k * 1000 - _us_per_record(floor),
                    "µs",
                    note="validation, resolution, storage, outcome encoding (same run)",
                )
            )
    return rows


def _ceiling_rows(results: Results) -> list[Row]:
    """What the pure functions cost alone, and the naive worker."""
    rows: list[Row] = []
    if results.cpu_ceiling is not None:
        ceiling = results.cpu_ceiling
        per_second = ceiling.records / ceiling.validate_s
        rows.append(
            Row(
                "ceiling: validate_record alone, 1 core",
                per_second,
                "events/s",
                f">= {TARGET_VALIDATE_PER_S:,.0f}",
                per_second >= TARGET_VALIDATE_PER_S,
                f"{1e6 * ceiling.validate_s / ceiling.records:.1f} µs/event; resolve + row "
                f"{1e6 * ceiling.resolve_s / max(ceiling.valid, 1):.1f} µs more per valid event",
            )
        )
    if results.naive is not None:
        n = results.naive
        rows.append(
            Row(
                "naive worker (one record at a time)",
                n.per_second,
                "events/s",
                note=f"first {n.records:,} records in {n.seconds:.1f} s",
            )
        )
    return rows


def _pipeline_ratio_rows(ratios: dict[str, float | None]) -> list[Row]:
    """The pipeline against the naive worker and the raw consumer."""
    rows: list[Row] = []
    ratio = ratios["pipelineOverNaive"]
    if ratio is not None:
        rows.append(
            Row("pipeline / naive", ratio, "x", f">= {TARGET_VS_NAIVE:g}", ratio >= TARGET_VS_NAIVE)
        )
    ratio = ratios["pipelineOverConsumeLimit"]
    if ratio is not None:
        rows.append(Row("pipeline / raw consume", ratio, "x", note="for reference"))
    return rows


def _refusal_rows(results: Results) -> list[Row]:
    """The worker's CPU with refusals kept in Postgres, over the same worker without."""
    with_them, without = results.pipeline, results.without_refusals
    if with_them is None or without is None:
        return []
    kept = with_them.drained.cpu_s_per_1k * 1000
    not_kept = without.drained.cpu_s_per_1k * 1000
    ratio = kept / not_kept if not_kept else math.nan
    return [
        Row(
            "pipeline: worker CPU, refusals stored / not stored",
            ratio,
            "x",
            f"<= {TARGET_REFUSALS_KEPT:g}",
            ratio <= TARGET_REFUSALS_KEPT,
            f"{kept:.1f} vs {not_kept:.1f} µs per event, the same backlog in this run "
            "(without: bench.refusals_not_stored)",
        )
    ]


def _latency_rows(results: Results) -> list[Row]:
    """Latency at a fixed offered load, and the broker's own."""
    rows: list[Row] = []
    if results.latency is not None:
        lat = results.latency
        at = f"at {lat.offered_rate:g} events/s"
        p99 = lat.percentile(99)
        rows += [
            Row(
                f"latency p50 {at}",
                lat.percentile(50),
                "ms",
                note="record timestamp → outcome sent (≈ acknowledged)",
            ),
            Row(f"latency p99 {at}", p99, "ms", f"<= {TARGET_P99_MS:g}", p99 <= TARGET_P99_MS),
            Row(
                f"latency max {at}",
                max(lat.latencies_ms, default=math.nan),
                "ms",
                note=f"{len(lat.latencies_ms):,} events",
            ),
            Row(
                "latency: offered rate achieved",
                lat.achieved_rate,
                "events/s",
                note=f"worker {lat.worker_cores:.2f} cores busy",
            ),
            Row("latency: worker batches", None, "", note=_batch_note(lat.worker_metrics)),
            Row(
                f"latency floor p99 {at}, broker alone",
                percentile(lat.floor_ms, 99),
                "ms",
                note=f"p50 {percentile(lat.floor_ms, 50):.0f} ms, max "
                f"{max(lat.floor_ms, default=math.nan):.0f} ms: a plain aiokafka consumer, "
                "no processing",
            ),
        ]
    return rows


def _memory_rows(results: Results, ratios: dict[str, float | None]) -> list[Row]:
    """Peak RSS under a small and a large backlog."""
    rows: list[Row] = []
    if len(results.memory) == _MEMORY_RUNS:
        small, large = results.memory
        for run in results.memory:
            rows.append(
                Row(
                    f"memory: peak RSS, {run.backlog:,} backlog",
                    run.drained.peak_rss_bytes[0] / MIB,
                    "MiB",
                    note=f"VmHWM after the first {run.measured_records:,} records committed",
                )
            )
        ratio = ratios["memoryLargeOverSmall"]
        if ratio is not None:
            rows.append(
                Row(
                    f"memory: {large.backlog:,} / {small.backlog:,} backlog",
                    ratio,
                    "x",
                    f"within {TARGET_MEMORY_BAND:.0%} of 1",
                    abs(ratio - 1) <= TARGET_MEMORY_BAND,
                )
            )
    return rows


def _two_worker_rows(results: Results, ratios: dict[str, float | None]) -> list[Row]:
    """Two workers in one group against one."""
    rows: list[Row] = []
    pipeline = results.pipeline
    if results.two_workers is not None:
        two = results.two_workers.drained
        rows.append(
            Row(
                "2 workers: throughput",
                two.per_second,
                "events/s",
                note=f"{two.cores.get('workers', 0):.2f} worker cores; " + _cores_note(two.cores),
            )
        )
        ratio = ratios["twoWorkersOverOne"]
        if ratio is not None and pipeline is not None:
            idle = (os.cpu_count() or 1) - pipeline.drained.cores.get("machine", 0.0)
            decidable = idle >= MIN_HEADROOM_CORES
            rows.append(
                Row(
                    "2 workers / 1 worker",
                    ratio,
                    "x",
                    "> 1 when CPU allows",
                    (ratio > 1.0) if decidable else None,
                    f"1 worker left {idle:.2f} of {os.cpu_count()} cores idle"
                    + ("" if decidable else ": no CPU to give a second worker"),
                )
            )
    return rows


def _readside_rows(results: Results) -> list[Row]:
    """The API's read side over the stored usages (SPEC-API.md, "The read side")."""
    r = results.readside
    if r is None:
        return []
    table = f"{r.usages:,} usages, {READ_CONTRACTS} contracts"
    p99 = percentile(r.page_ms, 99)
    day = median(r.summary_day_ms)
    every = median(r.summary_all_ms) / 1000
    csv = r.csv
    growth = csv.rss_growth_bytes / MIB
    return [
        Row(
            f"read: GET /usages page of {PAGE_SIZE}, p99",
            p99,
            "ms",
            f"<= {TARGET_PAGE_P99_MS:g}",
            p99 <= TARGET_PAGE_P99_MS,
            f"one contract and month, {len(r.page_ms)} contracts; p50 "
            f"{percentile(r.page_ms, 50):.1f} ms, max {max(r.page_ms):.1f} ms; {table}",
        ),
        Row(
            "read: GET /usage-summaries, 1 contract-month by day",
            day,
            "ms",
            f"<= {TARGET_SUMMARY_DAY_MS:g}",
            day <= TARGET_SUMMARY_DAY_MS,
            f"median of {len(r.summary_day_ms)}",
        ),
        Row(
            "read: GET /usage-summaries, all contracts by contract, 1 month",
            every,
            "s",
            f"<= {TARGET_SUMMARY_ALL_S:g}",
            every <= TARGET_SUMMARY_ALL_S,
            f"median of {len(r.summary_all_ms)}; {r.summary_all_groups:,} groups",
        ),
        Row(
            "read: CSV export of 1 month",
            csv.per_second,
            "lines/s",
            f">= {TARGET_CSV_LINES_PER_S:,.0f}",
            csv.per_second >= TARGET_CSV_LINES_PER_S,
            f"{csv.lines:,} lines in {csv.seconds:.1f} s, first byte after "
            f"{1000 * csv.first_byte_s:.0f} ms; cores busy: {_cores_note(csv.cores)}",
        ),
        Row(
            "read: API RSS growth during the CSV export",
            growth,
            "MiB",
            f"< {TARGET_CSV_RSS_GROWTH_MIB:g}",
            growth < TARGET_CSV_RSS_GROWTH_MIB,
            f"peak {csv.rss_peak_bytes / MIB:.0f} MiB - {csv.rss_before_bytes / MIB:.0f} MiB "
            f"before the request, {csv.samples:,} samples",
        ),
    ]


def _batch_note(metrics: dict[str, Any]) -> str:
    """The worker's own /metrics: batches, their mean size and duration, DB round trips."""
    counts, means = metrics.get("histogramCounts", {}), metrics.get("histogramMeans", {})
    batches = int(counts.get("usage_ingest_batch_size_records", 0))
    if not batches:
        return ""
    size = means.get("usage_ingest_batch_size_records", 0.0)
    duration = 1000 * means.get("usage_ingest_batch_duration_seconds", 0.0)
    fetch = 1000 * means.get("usage_ingest_db_round_trip_seconds{operation=fetch_reference}", 0.0)
    store = 1000 * means.get("usage_ingest_db_round_trip_seconds{operation=store_usages}", 0.0)
    return (
        f"{batches:,} batches of {size:.0f} records, {duration:.0f} ms each "
        f"(fetch_reference {fetch:.0f} ms, store_usages {store:.0f} ms)"
    )


def _cores_note(cores: dict[str, float]) -> str:
    parts = [f"{k} {v:.2f}" for k, v in cores.items() if k not in ("machine",)]
    return ", ".join(parts)


# --- the JSON document --------------------------------------------------------------------


def _results_json(results: Results) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if results.workload is not None:
        w = results.workload
        out["workload"] = {
            "topic": w.topic,
            "partitions": len(w.ends),
            "records": w.records,
            "preloadSeconds": round(w.seconds, 2),
            "preloadRecordsPerSecond": round(w.records / w.seconds, 1) if w.seconds else None,
            **w.tally.as_json(),
        }
    if results.consume is not None:
        out["consumeLimit"] = results.consume.as_json()
    if results.kafka_floor is not None:
        out["kafkaFloor"] = results.kafka_floor.as_json()
    if results.storage is not None:
        out["storageLimit"] = results.storage.as_json()
    if results.cpu_ceiling is not None:
        out["cpuCeiling"] = results.cpu_ceiling.as_json()
    if results.pipeline is not None:
        out["pipeline"] = results.pipeline.as_json()
    if results.two_workers is not None:
        out["twoWorkers"] = results.two_workers.as_json()
    if results.without_refusals is not None:
        out["withoutRefusals"] = results.without_refusals.as_json()
    if results.naive is not None:
        out["naive"] = results.naive.as_json()
    if results.latency is not None:
        out["latency"] = results.latency.as_json()
    if results.memory:
        out["memory"] = [run.as_json() for run in results.memory]
    if results.readside is not None:
        out["readSide"] = results.readside.as_json()
    return out


def _git() -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(  # noqa: S603 - fixed arguments
                ["git", *args],  # noqa: S607 - git from PATH
                cwd=PROJECT,
                capture_output=True,
                text=True,
                check=False,
                timeout=10,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    changed = [line for line in git("status", "--porcelain").splitlines() if line.strip()]
    return {
        "commit": git("rev-parse", "HEAD") or None,
        "dirty": bool(changed),
        "changedFiles": len(changed),
        # Identifies the code measured when the tree is dirty: the workers run `src/` as it
        # is when they start (an editable install).
        "sourceDigest": _source_digest(),
    }


def _source_digest() -> str:
    digest = hashlib.sha256()
    root = PROJECT / "src"
    for path in sorted(root.rglob("*")):
        if path.suffix in (".py", ".sql", ".json") and path.is_file():
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _machine(versions: dict[str, str], load_start: tuple[float, float, float]) -> dict[str, Any]:
    def version(package: str) -> str | None:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    return {
        "cores": os.cpu_count(),
        "cpuModel": procfs.cpu_model(),
        "memoryGiB": round(procfs.memory_total_bytes() / 1024**3, 1),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "postgres": versions.get("postgres"),
        "broker": versions.get("broker"),
        "aiokafka": version("aiokafka"),
        "asyncpg": version("asyncpg"),
        "pydantic": version("pydantic"),
        "loadAverageAtStart": list(load_start),
        "loadAverageAtEnd": list(procfs.load_average()),
    }


def run(opts: BenchOptions) -> tuple[dict[str, Any], list[Row]]:
    return asyncio.run(run_bench(opts))
