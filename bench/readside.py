"""The read side of the API (SPEC-API.md, "The read side") against a large table.

A fresh database (the template's, migrated by the project's own migrations) gets
`READ_USAGES` stored usages over `READ_CONTRACTS` contracts and three months, written by
one `INSERT ... SELECT ... FROM generate_series` statement (not through the worker: seconds,
not minutes), then `VACUUM ANALYZE`. The real API, `usage-ingest api`, runs as a subprocess
with a `USAGE.READ` key made by `usage-ingest api-key create`; httpx asks it, one request
at a time:

- one page of `GET /usages` for one contract and month, over different contracts;
- `GET /usage-summaries` for one contract-month by day, and for all contracts by contract;
- the CSV export of one month, streamed and counted on the client without keeping it,
  while a thread samples the API process's RSS.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final

import asyncpg
import httpx
import psutil

from bench import procfs
from bench.environment import BenchEnvironment, Topics
from bench.measurements import Check, percentile
from bench.worker import worker_executable
from usage_ingest.dev.embedded import free_port
from usage_ingest.settings import ENV_PREFIX

READ_USAGES: Final = 1_000_000
READ_CONTRACTS: Final = 500
# Three months of start dates; the one measured is the middle one.
PERIOD_START: Final = "2026-03-01T00:00:00Z"
PERIOD_DAYS: Final = 92  # March, April, May
MONTH: Final = ("2026-04-01T00:00:00Z", "2026-05-01T00:00:00Z")
PAGE_REQUESTS: Final = 200
PAGE_SIZE: Final = 100
WARM_UP_REQUESTS: Final = 20
SUMMARY_REPEATS: Final = 5
_FIRST_CONTRACT: Final = 7_000_000
_RSS_SAMPLE_S: Final = 0.01
_READY_TIMEOUT_S: Final = 60.0
_REQUEST_TIMEOUT_S: Final = 120.0

# One statement ($1 usages, $2 the first contract id, $3 contracts, $4 the first instant,
# $5 the period in seconds): every usage has one unit quantity, every 50th a second one (about 1.02
# lines per usage), an exact decimal near 1 with three decimals; start dates uniform over
# the three months; the unit follows the product, so by contract and unit a month's
# summary has 2 groups per contract (1000 in all: one page).
SEED_SQL: Final = """
INSERT INTO usages (
    external_reference, contract_id, debtor_id, inventory_id, product_item_id,
    product_ident, description, start_date, end_date, operating_site, tax_location,
    performance_location, service_country, unit_quantities, properties, billable,
    payload_hash, raw_payload, source_topic, source_partition, source_offset, received_at
)
SELECT
    'bench-read-' || g, c, 9000000 + c % 200, c * 10 + p, 100 + p, 'prod.bench.' || p,
    CASE WHEN g % 4 = 0 THEN 'metered usage ' || g END,
    s, s + interval '1 hour', 'DE-FRA', '{"country":"DE","city":"Frankfurt"}'::jsonb,
    NULL, 'DE',
    CASE WHEN g % 50 = 0
        THEN jsonb_build_array(
            jsonb_build_object('unit', u, 'quantity', q),
            jsonb_build_object('unit', CASE u WHEN 'GB' THEN 'h' ELSE 'GB' END, 'quantity', q))
        ELSE jsonb_build_array(jsonb_build_object('unit', u, 'quantity', q))
    END,
    CASE WHEN g % 3 = 0 THEN '[{"name":"region","value":"eu-central"}]'::jsonb END,
    g % 10 <> 0,
    encode(sha256(convert_to('bench-read-' || g, 'UTF8')), 'hex'),
    json_build_object(
        'externalReference', 'bench-read-' || g, 'contractId', c,
        'productIdent', 'prod.bench.' || p, 'startDate', s, 'endDate', s + interval '1 hour',
        'operatingSite', 'DE-FRA', 'taxLocation', json_build_object('country', 'DE'),
        'unitQuantities', json_build_array(json_build_object('unit', u, 'quantity', q))
    )::text,
    'bench.readside.events', (g % 6)::integer, g / 6, s + interval '2 minutes'
FROM (
    SELECT
        g,
        $2::bigint + g % $3::integer AS c,
        (g / $3::integer) % 4 AS p,
        CASE WHEN (g / $3::integer) % 4 < 2 THEN 'GB' ELSE 'h' END AS u,
        round((0.5 + random())::numeric, 3) AS q,
        $4::text::timestamptz + floor(random() * $5::integer) * interval '1 second' AS s
    FROM generate_series(1, $1::integer) AS g
) r
"""

_MONTH_LINES_SQL: Final = """
SELECT coalesce(sum(jsonb_array_length(unit_quantities)), 0)
FROM usages WHERE start_date >= $1::text::timestamptz AND start_date < $2::text::timestamptz
"""


@dataclass(slots=True)
class CsvExport:
    lines: int = 0
    seconds: float = 0.0
    first_byte_s: float = 0.0
    rss_before_bytes: int = 0
    rss_peak_bytes: int = 0
    samples: int = 0
    cores: dict[str, float] = field(default_factory=dict)

    @property
    def per_second(self) -> float:
        return self.lines / self.seconds if self.seconds > 0 else 0.0

    @property
    def rss_growth_bytes(self) -> int:
        return max(self.rss_peak_bytes - self.rss_before_bytes, 0)

    def as_json(self) -> dict[str, Any]:
        return {
            "lines": self.lines,
            "seconds": round(self.seconds, 3),
            "firstByteSeconds": round(self.first_byte_s, 3),
            "linesPerSecond": round(self.per_second, 1),
            "rssBeforeBytes": self.rss_before_bytes,
            "rssPeakBytes": self.rss_peak_bytes,
            "rssGrowthBytes": self.rss_growth_bytes,
            "rssSamples": self.samples,
            "cores": self.cores,
        }


@dataclass(slots=True)
class ReadSideResult:
    usages: int
    seed_s: float
    page_ms: list[float] = field(default_factory=list)
    summary_day_ms: list[float] = field(default_factory=list)
    summary_all_ms: list[float] = field(default_factory=list)
    summary_all_groups: int = 0
    csv: CsvExport = field(default_factory=CsvExport)
    api_cpu_s: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "usages": self.usages,
            "contracts": READ_CONTRACTS,
            "month": list(MONTH),
            "seedSeconds": round(self.seed_s, 2),
            "pageMs": {
                "requests": len(self.page_ms),
                "p50": round(percentile(self.page_ms, 50), 2),
                "p99": round(percentile(self.page_ms, 99), 2),
                "max": round(max(self.page_ms, default=float("nan")), 2),
            },
            "summaryByDayMs": [round(v, 2) for v in self.summary_day_ms],
            "summaryByContractMs": [round(v, 2) for v in self.summary_all_ms],
            "summaryByContractGroups": self.summary_all_groups,
            "csvExport": self.csv.as_json(),
            "apiCpuSeconds": round(self.api_cpu_s, 2),
        }


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# --- the data ---------------------------------------------------------------------------


async def seed_usages(url: str, count: int) -> float:
    """`count` usages by one statement, then VACUUM ANALYZE; seconds taken."""
    started = time.monotonic()
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("SELECT setseed(0.2026)")
        await conn.execute(
            SEED_SQL, count, _FIRST_CONTRACT, READ_CONTRACTS, PERIOD_START, PERIOD_DAYS * 86400
        )
        await conn.execute("VACUUM ANALYZE usages")
    finally:
        await conn.close()
    return time.monotonic() - started


async def _month_lines(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval(_MONTH_LINES_SQL, *MONTH))
    finally:
        await conn.close()


# --- the API process ----------------------------------------------------------------------


class ApiProcess:
    """`usage-ingest api` on a free port, with the bench's settings."""

    def __init__(self, environment: BenchEnvironment, database_url: str) -> None:
        topics = Topics.named("readside", environment.run)
        self.port = free_port()
        self.log_path = environment.workdir / "api.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
        env.update(
            {
                f"{ENV_PREFIX}KAFKA_BOOTSTRAP_SERVERS": environment.bootstrap,
                f"{ENV_PREFIX}DATABASE_URL": database_url,
                f"{ENV_PREFIX}TOPIC_EVENTS": topics.events,
                f"{ENV_PREFIX}METRICS_PORT": "0",
                f"{ENV_PREFIX}LOG_FORMAT": "json",
                f"{ENV_PREFIX}LOG_LEVEL": "info",
            }
        )
        self.env = env
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def create_key(self) -> str:
        """A `USAGE.READ` key made by `usage-ingest api-key create`."""
        done = subprocess.run(  # noqa: S603 - our own executable, no shell
            [
                *worker_executable(),
                "api-key",
                "create",
                "--name",
                "bench-readside",
                "--permission",
                "USAGE.READ",
            ],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        return done.stdout.strip().splitlines()[-1]

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(  # noqa: S603 - our own executable, no shell
                [*worker_executable(), "api", "--host", "127.0.0.1", "--port", str(self.port)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )

    async def wait_ready(self, client: httpx.AsyncClient) -> None:
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"the API exited ({self._proc.returncode}); see {self.log_path}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get("/healthz")).status_code == httpx.codes.OK:
                    return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"the API did not answer /healthz; see {self.log_path}")

    def cpu_seconds(self) -> float:
        times = psutil.Process(self.pid).cpu_times()
        return float(times.user + times.system)

    def stop(self) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- the requests -------------------------------------------------------------------------


def _month_params(**extra: str | int) -> list[tuple[str, str | int]]:
    return [("startDate", f"gte:{MONTH[0]}"), ("startDate", f"lt:{MONTH[1]}"), *extra.items()]


def page_params(contract: int) -> list[tuple[str, str | int]]:
    return [("contractId", contract), *_month_params(page=1, pageSize=PAGE_SIZE)]


def contract_for(index: int) -> int:
    """The contracts in a spread order (a stride prime to their number)."""
    return _FIRST_CONTRACT + (index * 197) % READ_CONTRACTS


async def _timed_get(
    client: httpx.AsyncClient, path: str, params: list[tuple[str, str | int]]
) -> tuple[float, httpx.Response]:
    started = time.perf_counter()
    response = await client.get(path, params=params)
    elapsed = 1000 * (time.perf_counter() - started)
    response.raise_for_status()
    return elapsed, response


async def _pages(client: httpx.AsyncClient, result: ReadSideResult, checks: list[Check]) -> None:
    for i in range(WARM_UP_REQUESTS):
        await _timed_get(client, "/usages", page_params(contract_for(PAGE_REQUESTS + i)))
    sizes = []
    for i in range(PAGE_REQUESTS):
        elapsed, response = await _timed_get(client, "/usages", page_params(contract_for(i)))
        result.page_ms.append(elapsed)
        sizes.append(len(response.json()))
    full = sum(1 for n in sizes if n == PAGE_SIZE)
    checks.append(
        Check("read side: every page full", full == len(sizes), f"{full} of {len(sizes)}")
    )


async def _summaries(
    client: httpx.AsyncClient, result: ReadSideResult, checks: list[Check], lines: int
) -> None:
    by_day = [("contractId", contract_for(0)), *_month_params(groupBy="day")]
    by_contract = _month_params(groupBy="contractId", pageSize=1000)
    await _timed_get(client, "/usage-summaries", by_day)  # warm-up
    for _ in range(SUMMARY_REPEATS):
        result.summary_day_ms.append((await _timed_get(client, "/usage-summaries", by_day))[0])
    response = None
    for _ in range(SUMMARY_REPEATS):
        elapsed, response = await _timed_get(client, "/usage-summaries", by_contract)
        result.summary_all_ms.append(elapsed)
    assert response is not None
    items = response.json()
    result.summary_all_groups = int(response.headers.get("X-Total-Count", len(items)))
    counted = sum(int(item["usages"]) for item in items)
    checks.append(
        Check(
            "read side: summary by contract counts every quantity of the month",
            counted == lines and result.summary_all_groups == len(items),
            f"{counted} usages per unit in {len(items)} of {result.summary_all_groups} "
            f"groups (expected {lines})",
        )
    )


class _RssSampler:
    """A thread reading a process's RSS until stopped; the peak seen."""

    def __init__(self, pid: int) -> None:
        self._process = psutil.Process(pid)
        self._stop = threading.Event()
        self.peak = 0
        self.samples = 0
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def rss(self) -> int:
        return int(self._process.memory_info().rss)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(psutil.Error):
                self.peak = max(self.peak, self.rss())
                self.samples += 1
            self._stop.wait(_RSS_SAMPLE_S)

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        self._thread.start()
        try:
            yield
        finally:
            self._stop.set()
            self._thread.join()


async def _csv_export(
    client: httpx.AsyncClient, api: ApiProcess, csv: CsvExport, meter: procfs.CpuMeter
) -> None:
    """One month as CSV, its lines counted as they arrive (newlines of each chunk: no
    quantity, reference or product of these rows holds one), nothing kept."""
    sampler = _RssSampler(api.pid)
    csv.rss_before_bytes = sampler.rss()
    newlines = 0
    with sampler.running():
        cpu_start = meter.snapshot(time.monotonic())
        started = time.perf_counter()
        headers = {"Accept": "text/csv"}
        async with client.stream("GET", "/usages", params=_month_params(), headers=headers) as r:
            r.raise_for_status()
            async for chunk in r.aiter_raw():
                if not csv.first_byte_s:
                    csv.first_byte_s = time.perf_counter() - started
                newlines += chunk.count(b"\n")
        csv.seconds = time.perf_counter() - started
        csv.cores = procfs.cores_used(cpu_start, meter.snapshot(time.monotonic()))
    csv.lines = max(newlines - 1, 0)  # the header line
    csv.rss_peak_bytes, csv.samples = sampler.peak, sampler.samples


# --- the measurement ----------------------------------------------------------------------


async def measure_readside(
    env: BenchEnvironment, *, usages: int = READ_USAGES, progress: Any = None
) -> tuple[ReadSideResult, list[Check]]:
    say = progress or (lambda _message: None)
    url = await env.fresh_database("readside")
    say(f"read side: {usages:,} usages over {READ_CONTRACTS} contracts, one INSERT ... SELECT")
    result = ReadSideResult(usages, await seed_usages(url, usages))
    lines = await _month_lines(url)
    say(f"read side: seeded in {result.seed_s:.1f} s; {lines:,} CSV lines in the month")
    checks: list[Check] = []
    api = ApiProcess(env, url)
    key = await asyncio.to_thread(api.create_key)
    api.start()
    try:
        async with httpx.AsyncClient(
            base_url=api.url, headers={"X-API-KEY": key}, timeout=_REQUEST_TIMEOUT_S
        ) as client:
            await api.wait_ready(client)
            cpu = api.cpu_seconds()
            await _pages(client, result, checks)
            await _summaries(client, result, checks, lines)
            meter = env.cpu_meter({"api": [api.pid]})
            await _csv_export(client, api, result.csv, meter)
            result.api_cpu_s = api.cpu_seconds() - cpu
        checks.append(
            Check(
                "read side: CSV export has every line of the month",
                result.csv.lines == lines,
                f"{result.csv.lines} (expected {lines})",
            )
        )
    finally:
        await asyncio.to_thread(api.stop)
    await env.drop_database(url)
    return result, checks
