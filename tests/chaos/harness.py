"""The fault harness of the chaos suite: real worker processes, a TCP proxy that
breaks connections on command, sequence-numbered producers, and a checker that
counts what was stored, lost, doubled or left without an outcome.

Everything here runs in the test's event loop or as child processes of the test:
no Docker, no root, no network namespaces. The worker under test is always the
real `usage-ingest run` (or `faulty_worker.py`, which is `usage-ingest run` with
one deterministic fault point), so a kill is a real SIGKILL of a real process.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import inspect
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord
from pydantic import SecretStr

from usage_ingest.domain.reference import read_reference_file
from usage_ingest.kafka.connection import connection_options
from usage_ingest.settings import Settings
from usage_ingest.store.store import Store

PROJECT = Path(__file__).parents[2]
EXE = str(Path(sys.executable).parent / "usage-ingest")
FAULTY_WORKER = str(Path(__file__).with_name("faulty_worker.py"))
DEMO_REFERENCE = PROJECT / "src" / "usage_ingest" / "dev" / "demo_reference.json"
INPUT_PARTITIONS = 3
POLL_S = 0.05
# Every scenario is repeatable: its random choices come from this seed.
SEED = int(os.environ.get("CHAOS_SEED", "20261122"))

Offsets = dict[int, int]
SourceKey = tuple[int, int]  # (partition, offset) of an input record


# --- waiting --------------------------------------------------------------------


async def eventually(
    condition: Callable[[], bool | Awaitable[bool]], within_s: float, what: str
) -> None:
    """Poll `condition` until it holds; fail naming `what` after `within_s` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if loop.time() >= deadline:
            raise AssertionError(f"not within {within_s:g} s: {what}")
        await asyncio.sleep(POLL_S)


# --- events -----------------------------------------------------------------------


def usage_event(reference: str, index: int) -> bytes:
    """A valid event for the demo reference data (contract 1, or debtor 1 every other)."""
    day, minute = 1 + index % 28, index % 50
    body: dict[str, Any] = {
        "externalReference": reference,
        "productIdent": "demo.usage",
        "startDate": f"2026-03-{day:02d}T10:{minute:02d}:00Z",
        "endDate": f"2026-03-{day:02d}T10:{minute + 1:02d}:00+00:00",
        "unitQuantities": [{"unit": "minute", "quantity": str(1 + index % 7)}],
    }
    if index % 2:
        body["debtorId"] = 1
    else:
        body["contractId"] = 1
    return json.dumps(body).encode()


@dataclass(frozen=True)
class Outgoing:
    """A record to produce and what the worker must make of it."""

    value: bytes | None
    partition: int
    key: bytes | None
    reference: str | None  # the usage it must store; None: it must be rejected
    may_reject: bool = False  # valid, but resolution may still refuse it


@dataclass(frozen=True)
class Sent:
    """A produced record: where it landed and what it must become."""

    partition: int
    offset: int
    reference: str | None  # None: a rejection (and a dead letter) is expected
    may_reject: bool = False  # either stored under `reference` or rejected, not both

    @property
    def source(self) -> SourceKey:
        return (self.partition, self.offset)


def sequence(prefix: str, start: int, count: int) -> list[Outgoing]:
    """Sequence-numbered valid events `prefix-000000`..., round-robin over the partitions."""
    records = []
    for number in range(start, start + count):
        reference = f"{prefix}-{number:07d}"
        records.append(
            Outgoing(
                usage_event(reference, number),
                number % INPUT_PARTITIONS,
                reference.encode(),
                reference,
            )
        )
    return records


def client_options(settings: Settings) -> dict[str, Any]:
    """Bootstrap servers and security for the harness's own clients."""
    return connection_options(settings)


async def produce(
    settings: Settings, records: Sequence[Outgoing], chunk: int = 0, pause_s: float = 0.0
) -> list[Sent]:
    """Produce to the input topic, acks=all; returns where each record landed (the
    producer's offsets, since the embedded broker's ListOffsets under-reports)."""
    producer = AIOKafkaProducer(
        **client_options(settings),
        acks="all",
        enable_idempotence=False,
        linger_ms=5,
        max_request_size=4 * 1024 * 1024,
    )
    await producer.start()
    sent: list[Sent] = []
    try:
        step = chunk or len(records) or 1
        for begin in range(0, len(records), step):
            part = records[begin : begin + step]
            futures = [
                await producer.send(
                    settings.topic_events, r.value, key=r.key, partition=r.partition
                )
                for r in part
            ]
            acked = await asyncio.gather(*futures)
            sent += [
                Sent(m.partition, m.offset, r.reference, r.may_reject)
                for r, m in zip(part, acked, strict=True)
            ]
            if pause_s:
                await asyncio.sleep(pause_s)
    finally:
        await producer.stop()
    return sent


def log_end(sent: Iterable[Sent]) -> Offsets:
    """Log end of each input partition of a fresh topic, from the producer's offsets."""
    ends = dict.fromkeys(range(INPUT_PARTITIONS), 0)
    for record in sent:
        ends[record.partition] = max(ends[record.partition], record.offset + 1)
    return ends


# --- topics and offsets --------------------------------------------------------------


async def read_all(
    settings: Settings, topic: str, partitions: int = 1, within_s: float = 60.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of `topic` up to the high watermark of fetch responses sent after
    this call began (the high watermark is right on the embedded broker; its
    ListOffsets is not)."""
    reader = AIOKafkaConsumer(
        **client_options(settings),
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=100,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    records: list[ConsumerRecord[bytes, bytes]] = []
    await reader.start()
    try:
        reader.assign(tps)
        await reader.seek_to_beginning(*tps)

        async def caught_up() -> bool:
            batches = await reader.getmany(timeout_ms=100, max_records=20_000)
            for messages in batches.values():
                records.extend(messages)
            held = Counter(r.partition for r in records)
            return all(
                (end := reader.highwater(tp)) is not None and held[tp.partition] >= end
                for tp in tps
            )

        await eventually(caught_up, within_s, f"reading {topic} up to its log end")
    finally:
        await reader.stop()
    return records


async def committed(settings: Settings) -> dict[int, int | None]:
    """The group's committed offsets on the input topic (without joining the group)."""
    consumer = AIOKafkaConsumer(
        **client_options(settings), group_id=settings.group_id, enable_auto_commit=False
    )
    await consumer.start()
    try:
        return {
            p: await consumer.committed(TopicPartition(settings.topic_events, p))
            for p in range(INPUT_PARTITIONS)
        }
    finally:
        await consumer.stop()


async def wait_committed(settings: Settings, ends: Offsets, within_s: float) -> float:
    """Until the committed offsets equal `ends` (an empty partition needs no commit);
    returns when that was seen (monotonic clock)."""
    last: dict[int, int | None] = {}

    async def reached() -> bool:
        nonlocal last
        last = await committed(settings)
        return {p: last.get(p) or 0 for p in ends} == ends

    try:
        await eventually(reached, within_s, "committed offsets at the log end")
    except AssertionError as exc:
        raise AssertionError(f"committed offsets {last}, log end {ends}") from exc
    return time.monotonic()


# --- the database ---------------------------------------------------------------------


async def load_demo_reference(url: str) -> None:
    store = await Store.open(url)
    try:
        await store.load_reference(read_reference_file(DEMO_REFERENCE))
    finally:
        await store.close()


async def count_usages(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM usages"))
    finally:
        await conn.close()


# --- the worker as a real process --------------------------------------------------------


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn: the worker gets SIGKILL when the test process dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()

    def hook() -> None:
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os._exit(1)

    return hook


def worker_env(settings: Settings, **overrides: str) -> dict[str, str]:
    """The environment of `usage-ingest run` for these settings: every setting as its
    USAGE_INGEST_* variable, none inherited from the test's own environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("USAGE_INGEST_", "CHAOS_"))}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, Enum):
            value = value.value
        env[f"USAGE_INGEST_{name.upper()}"] = str(value)
    env["USAGE_INGEST_LOG_FORMAT"] = "json"
    env.update(overrides)
    return env


class WorkerProcess:
    """`usage-ingest run` as a child process: start, SIGKILL, SIGTERM, restart.

    Each run writes its own log file; `log_events()` parses the JSON lines of all runs.
    `fault` ("point:n", see faulty_worker.py) runs the worker with a deterministic
    fault point instead of the plain console script.
    """

    def __init__(self, name: str, settings: Settings, log_dir: Path, metrics_port: int = 0) -> None:
        self.name = name
        self.settings = settings
        self.log_dir = log_dir
        self.metrics_port = metrics_port
        self.runs = 0
        self.exit_codes: list[int] = []
        self.stop_durations: list[float] = []  # from SIGTERM to exit, per graceful stop
        self._stop_asked: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._logs: list[Path] = []

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def start(self, fault: str | None = None, **env: str) -> WorkerProcess:
        assert not self.running, f"{self.name} is already running"
        self.runs += 1
        log = self.log_dir / f"{self.name}-run{self.runs}.log"
        self._logs.append(log)
        environment = worker_env(
            self.settings, USAGE_INGEST_METRICS_PORT=str(self.metrics_port), **env
        )
        if fault is None:
            args = [EXE, "run"]
        else:
            args = [sys.executable, FAULTY_WORKER]
            environment["CHAOS_FAULT"] = fault
        with log.open("wb") as out:
            self._proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=environment,
                cwd=PROJECT,
                preexec_fn=_die_with_parent(),  # noqa: PLW1509 - only calls prctl
            )
        return self

    def kill(self) -> None:
        """kill -9: no goodbye, no commit, the group notices after the session timeout."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self.exit_codes.append(self._proc.wait())
        self._proc = None
        self._stop_asked = None

    async def terminate(self, within_s: float = 30.0) -> int:
        """SIGTERM and wait for the graceful exit; returns the exit code."""
        self.ask_to_stop()
        return await self.wait_exit(within_s)

    def ask_to_stop(self) -> None:
        """SIGTERM, without waiting: the worker finishes its batch, commits, leaves."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGTERM)
        self._stop_asked = time.monotonic()

    async def wait_exit(self, within_s: float) -> int:
        assert self._proc is not None
        proc = self._proc
        try:
            await eventually(lambda: proc.poll() is not None, within_s, f"{self.name} to exit")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; its log ends:\n{self.output()[-4000:]}") from None
        code = proc.wait()
        self.exit_codes.append(code)
        if self._stop_asked is not None:
            self.stop_durations.append(time.monotonic() - self._stop_asked)
            self._stop_asked = None
        self._proc = None
        return code

    def started_up(self) -> bool:
        """Whether the current (or last) run got as far as installing its signal handlers:
        a SIGTERM before that ends the interpreter the default way (exit -15)."""
        return self._last_run_logged("operations_server_started")

    def joined(self) -> bool:
        """Whether the current (or last) run joined its group and got its partitions."""
        return self._last_run_logged("worker_started")

    def _last_run_logged(self, event: str) -> bool:
        if not self._logs or not self._logs[-1].exists():
            return False
        return f'"{event}"'.encode() in self._logs[-1].read_bytes()

    def output(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self._logs if p.exists())

    def log_events(self) -> list[dict[str, Any]]:
        events = []
        for line in self.output().splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict):
                    events.append(event)
        return events

    def count(self, event: str, **fields: Any) -> int:
        return sum(
            1
            for e in self.log_events()
            if e.get("event") == event and all(e.get(k) == v for k, v in fields.items())
        )

    def rss_kib(self) -> tuple[int, int]:
        """(current, peak) resident memory of the running worker, in KiB."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        values = {
            line.split(":")[0]: int(line.split()[1])
            for line in status.splitlines()
            if line.startswith(("VmRSS", "VmHWM"))
        }
        return values["VmRSS"], values["VmHWM"]

    async def readiness(self) -> int | None:
        """The HTTP status of /readyz, None when nothing answers."""
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self.metrics_port), 2
            )
        except (OSError, TimeoutError):
            return None
        try:
            writer.write(b"GET /readyz HTTP/1.0\r\n\r\n")
            await writer.drain()
            status_line = await asyncio.wait_for(reader.readline(), 10)
            return int(status_line.split()[1])
        except (OSError, TimeoutError, IndexError, ValueError):
            return None
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


# --- a TCP proxy the test controls --------------------------------------------------------


class TcpProxy:
    """Forwards 127.0.0.1:`port` to a target; the test breaks it on command.

    `cut()` aborts every connection and refuses new ones (accepts and resets) until
    `heal()`; `stall()` keeps connections open but forwards nothing (a black hole)
    until `heal()`, then delivers what it held, as TCP does after a partition heals.
    `stall(new_too=False)` stalls only the connections open now: whoever was
    connected is cut off, newcomers get through. With `server_ssl` the proxy
    terminates TLS: clients speak TLS to it, and it speaks plaintext to the target.
    """

    def __init__(
        self,
        target_port: int,
        *,
        target_host: str = "127.0.0.1",
        port: int = 0,
        server_ssl: ssl.SSLContext | None = None,
    ) -> None:
        self.target = (target_host, target_port)
        self.port = port
        self._server_ssl = server_ssl
        self._server: asyncio.Server | None = None
        self._stalled = False
        self._cut = False
        # Each connection (client side, upstream side) with the event its pumps wait on.
        self._links: dict[tuple[asyncio.StreamWriter, asyncio.StreamWriter], asyncio.Event] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.connections = 0

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.port, ssl=self._server_ssl
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self._abort_all()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def cut(self) -> None:
        self._cut = True
        self._abort_all()

    def stall(self, *, new_too: bool = True) -> None:
        self._stalled = new_too
        for flowing in self._links.values():
            flowing.clear()

    def heal(self) -> None:
        self._cut = False
        self._stalled = False
        for flowing in self._links.values():
            flowing.set()

    def _abort_all(self) -> None:
        for client, upstream in list(self._links):
            client.transport.abort()
            upstream.transport.abort()
        self._links.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self._cut:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        if self._cut:
            writer.transport.abort()
            up_writer.transport.abort()
            return
        link = (writer, up_writer)
        flowing = asyncio.Event()
        if not self._stalled:
            flowing.set()
        self._links[link] = flowing
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer, link)),
            asyncio.create_task(self._pump(up_reader, writer, link)),
        ]
        self._tasks.update(pumps)
        for pump in pumps:
            pump.add_done_callback(self._tasks.discard)

    async def _pump(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        link: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
    ) -> None:
        try:
            while True:
                data = await source.read(65536)
                if not data:
                    break
                flowing = self._links.get(link)
                if flowing is None:
                    break
                await flowing.wait()
                if link not in self._links:
                    break
                sink.write(data)
                await sink.drain()
        except (OSError, ssl.SSLError):
            pass
        finally:
            self._links.pop(link, None)
            for side in link:
                side.transport.abort()


# --- the checker ---------------------------------------------------------------------------


@dataclass
class Verdict:
    """What a scenario left behind, counted against what was produced."""

    events: int
    stored: int
    lost: int  # events that should have a usage row and have none
    doubled: int  # extra rows per reference + references reported `created` from two sources
    outcomes_missing: int  # source records without any outcome
    problems: list[str] = field(default_factory=list)  # every other broken promise

    @property
    def clean(self) -> bool:
        return not (self.lost or self.doubled or self.outcomes_missing or self.problems)


def _same(outcome: dict[str, Any]) -> tuple[Any, ...]:
    """What must not differ between repeated outcomes of one source record."""
    return (
        outcome.get("status"),
        outcome.get("usageId"),
        outcome.get("externalReference"),
        tuple(e.get("code") for e in outcome.get("errors") or ()),
    )


async def check(
    settings: Settings, database_url: str, sent: Sequence[Sent], *, within_s: float = 60.0
) -> Verdict:
    """Read the usages table, both outcome topics and the dead letters, and compare
    them with the records produced (SPEC.md §1, §5, §6, §8)."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT external_reference, id, source_partition, source_offset FROM usages"
        )
    finally:
        await conn.close()
    problems: list[str] = []
    outcomes: dict[SourceKey, list[dict[str, Any]]] = defaultdict(list)
    for topic in (settings.topic_accepted, settings.topic_rejected):
        for message in await read_all(settings, topic, within_s=within_s):
            outcome = json.loads(message.value or b"")
            source = outcome["source"]
            if source["topic"] != settings.topic_events:
                problems.append(f"an outcome names a foreign source {source}")
                continue
            outcomes[(source["partition"], source["offset"])].append(outcome)
    dead = Counter(
        (int(h["usage-ingest.source.partition"]), int(h["usage-ingest.source.offset"]))
        for h in (
            dict(m.headers) for m in await read_all(settings, settings.topic_dlq, within_s=within_s)
        )
    )
    return judge(
        sent, [StoredRow(r[0], r[1], (r[2], r[3])) for r in rows], outcomes, dead, problems
    )


@dataclass(frozen=True)
class StoredRow:
    reference: str
    usage_id: int
    source: SourceKey


def judge(
    sent: Sequence[Sent],
    rows: Sequence[StoredRow],
    outcomes: dict[SourceKey, list[dict[str, Any]]],
    dead: Counter[SourceKey],
    problems: list[str],
) -> Verdict:
    """The verdict on what was found, for the records produced."""
    per_reference = Counter(r.reference for r in rows)
    row_of = {r.reference: r for r in rows}
    required = {s.reference for s in sent if s.reference is not None and not s.may_reject}
    allowed = {s.reference for s in sent if s.reference is not None}
    wrongly_stored = sorted(set(row_of) - allowed)
    if wrongly_stored:
        problems.append(f"{len(wrongly_stored)} rows nobody asked for: {wrongly_stored[:5]}")
    strangers = sorted(set(outcomes) - {s.source for s in sent})
    if strangers:
        problems.append(f"outcomes for records never produced: {strangers[:5]}")
    missing = 0
    created_from: dict[str, set[SourceKey]] = defaultdict(set)
    for record in sent:
        got = outcomes.get(record.source)
        if not got:
            missing += 1
            continue
        if len({_same(o) for o in got}) != 1:
            problems.append(f"{record.source}: repeated outcomes disagree: {got[:3]}")
        row = row_of.get(record.reference) if record.reference is not None else None
        problems += _judge_one(record, got[0], row, dead[record.source])
        if got[0]["status"] == "created" and record.reference is not None:
            created_from[record.reference].add(record.source)
    return Verdict(
        events=len(sent),
        stored=len(rows),
        lost=len(required - set(row_of)),
        doubled=sum(n - 1 for n in per_reference.values() if n > 1)
        + sum(1 for sources in created_from.values() if len(sources) > 1),
        outcomes_missing=missing,
        problems=problems,
    )


def _judge_one(
    record: Sent, outcome: dict[str, Any], row: StoredRow | None, dead_letters: int
) -> list[str]:
    """What is wrong with one record's outcome, row and dead letter."""
    where, status = record.source, outcome["status"]
    if record.reference is None:  # must be refused
        wrong = [] if status == "rejected" else [f"{where}: invalid record got {status}"]
        return wrong + ([] if dead_letters else [f"{where}: rejected without a dead letter"])
    if status == "rejected":
        if not record.may_reject:
            return [f"{where}: valid record rejected: {outcome.get('errors')}"]
        wrong = [] if dead_letters else [f"{where}: rejected without a dead letter"]
        return wrong + ([f"{where}: rejected, yet {record.reference} is stored"] if row else [])
    wrong = [f"{where}: accepted record {record.reference} dead-lettered"] if dead_letters else []
    if row is None:  # counted as lost, unless resolution could have refused it
        return wrong + ([f"{where}: accepted, yet no row"] if record.may_reject else [])
    if outcome.get("usageId") != row.usage_id or outcome.get("externalReference") != row.reference:
        wrong.append(f"{where}: outcome names usage {outcome.get('usageId')}")
    from_here = row.source == where
    if status == "created" and not from_here:
        wrong.append(f"{where}: `created` but the row came from elsewhere")
    if status == "duplicate" and from_here:
        wrong.append(f"{where}: the row came from here but it says duplicate")
    return wrong


# --- the figure table -------------------------------------------------------------------------


@dataclass
class Row:
    scenario: str
    events: int
    stored: int
    lost: int
    doubled: int
    outcomes_missing: int
    recovery_s: float | None
    faults: str
    seconds: float


RESULTS: list[Row] = []
TABLE_COLUMNS = (
    ("scenario", 30),
    ("events", 7),
    ("stored", 7),
    ("lost", 5),
    ("doubled", 8),
    ("outcomes missing", 17),
    ("recovery (s)", 13),
    ("faults injected", 0),
)


def record(
    scenario: str,
    verdict: Verdict,
    *,
    recovery_s: float | None,
    faults: str,
    started: float,
) -> None:
    """One row of the table printed at the end of the session (conftest.py)."""
    RESULTS.append(
        Row(
            scenario,
            verdict.events,
            verdict.stored,
            verdict.lost,
            verdict.doubled,
            verdict.outcomes_missing,
            None if recovery_s is None else round(recovery_s, 1),
            faults,
            round(time.monotonic() - started, 1),
        )
    )


def table_lines(rows: Sequence[Row]) -> list[str]:
    def cells(values: Sequence[str]) -> str:
        return "  ".join(
            v.ljust(width) if width else v
            for v, (_, width) in zip(values, TABLE_COLUMNS, strict=True)
        )

    lines = [cells([name for name, _ in TABLE_COLUMNS])]
    for row in sorted(rows, key=lambda r: r.scenario):
        recovery = "-" if row.recovery_s is None else f"{row.recovery_s:.1f}"
        lines.append(
            cells(
                [
                    row.scenario,
                    str(row.events),
                    str(row.stored),
                    str(row.lost),
                    str(row.doubled),
                    str(row.outcomes_missing),
                    recovery,
                    row.faults,
                ]
            )
        )
    return lines


def results_json(rows: Sequence[Row]) -> str:
    return json.dumps([asdict(r) for r in sorted(rows, key=lambda r: r.scenario)], indent=2)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


# --- throw-away certificates ---------------------------------------------------------------


@dataclass(frozen=True)
class Certificates:
    ca: Path  # the CA that signed the server certificate
    other_ca: Path  # an unrelated CA: trusting it must not be enough
    server_cert: Path
    server_key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.server_cert, self.server_key)
        return context


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_certificates(directory: Path) -> Certificates:
    """Two CAs and a server certificate for 127.0.0.1 signed by the first (openssl CLI,
    P-256 keys, valid for a day)."""
    directory.mkdir(parents=True, exist_ok=True)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    for name in ("ca", "other-ca"):
        _openssl(
            "req", "-x509", *ec, "-days", "1", "-subj", f"/CN=usage-ingest test {name}",
            "-keyout", str(directory / f"{name}.key"), "-out", str(directory / f"{name}.pem"),
        )  # fmt: skip
    _openssl(
        "req", *ec, "-subj", "/CN=127.0.0.1",
        "-keyout", str(directory / "server.key"), "-out", str(directory / "server.csr"),
    )  # fmt: skip
    (directory / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl(
        "x509", "-req", "-in", str(directory / "server.csr"), "-days", "1",
        "-CA", str(directory / "ca.pem"), "-CAkey", str(directory / "ca.key"),
        "-CAcreateserial", "-extfile", str(directory / "san.cnf"),
        "-out", str(directory / "server.pem"),
    )  # fmt: skip
    return Certificates(
        directory / "ca.pem", directory / "other-ca.pem", directory / "server.pem",
        directory / "server.key",
    )  # fmt: skip
