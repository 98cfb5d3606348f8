"""`usage-ingest run --processes N`: N supervised worker processes in one consumer group.

Run as a user runs it: the console script, configured by environment variables, against the
test's broker and Postgres; a child is killed with SIGKILL while events stream in.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.support.broker import committed_offsets, produce_values, read_topic
from tests.support.cli import process_env, running
from tests.support.database import DEMO_REFERENCE
from tests.support.settings import create_topics, make_settings
from usage_ingest.dev.embedded import free_port
from usage_ingest.domain.reference import read_reference_file
from usage_ingest.errors import CrashLoop
from usage_ingest.settings import Settings
from usage_ingest.store.store import open_store
from usage_ingest.worker.supervisor import RestartPolicy, Supervisor

pytestmark = pytest.mark.integration

EXE = str(Path(sys.executable).parent / "usage-ingest")
EVENTS = 400
CHUNK = 20


def event(reference: str, quantity: int) -> bytes:
    return json.dumps(
        {
            "externalReference": reference,
            "contractId": 1,
            "productIdent": "demo.usage",
            "startDate": "2026-11-22T10:00:00Z",
            "endDate": "2026-11-22T10:01:00Z",
            "unitQuantities": [{"unit": "minute", "quantity": quantity}],
        }
    ).encode()


def two_free_ports() -> int:
    """A base port such that base and base + 1 are both free."""
    for _ in range(20):
        base = free_port()
        if base < 65535 and _port_is_free(base + 1):
            return base
    raise AssertionError("no two consecutive free ports")


def _port_is_free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class LogFile:
    """The JSON log lines the supervisor and its children wrote to one file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def events(self, name: str, **fields: Any) -> list[dict[str, Any]]:
        found = []
        for line in self.path.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if (
                isinstance(entry, dict)
                and entry.get("event") == name
                and all(entry.get(k) == v for k, v in fields.items())
            ):
                found.append(entry)
        return found


async def wait_until(
    condition: Callable[[], Any], what: str, timeout: float, proc: subprocess.Popen[bytes]
) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        assert proc.poll() is None, f"usage-ingest ended (code {proc.returncode}) before {what}"
        await asyncio.sleep(0.1)
    raise AssertionError(f"no {what} within {timeout} s")


def healthz(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@asynccontextmanager
async def streaming(settings: Settings, references: list[str]) -> AsyncIterator[asyncio.Task[None]]:
    """Produce the events in chunks, a little apart, in the background."""

    async def go() -> None:
        for start in range(0, len(references), CHUNK):
            chunk = references[start : start + CHUNK]
            await produce_values(
                settings.kafka_bootstrap_servers,
                settings.topic_events,
                [event(ref, 1) for ref in chunk],
                keys=[ref.encode() for ref in chunk],
            )
            await asyncio.sleep(0.2)

    task = asyncio.create_task(go())
    try:
        yield task
    finally:
        if not task.done():
            task.cancel()


async def test_a_killed_child_is_restarted_and_every_event_is_stored_once(
    kafka_bootstrap: str, database_url: str, tmp_path: Path
) -> None:
    base_port = two_free_ports()
    settings = make_settings(
        kafka_bootstrap, database_url, batch_max_records=20, metrics_port=base_port
    )
    await create_topics(settings)
    store = await open_store(settings)
    try:
        await store.load_reference(read_reference_file(DEMO_REFERENCE))
    finally:
        await store.close()
    env = process_env(settings)
    env["USAGE_INGEST_METRICS_PORT"] = str(base_port)
    log = LogFile(tmp_path / "run.log")
    references = [f"proc-{i:04d}" for i in range(EVENTS)]
    db = await asyncpg.connect(database_url)
    try:
        with running(["run", "--processes", "2"], env, log.path) as proc:
            await wait_until(
                lambda: len(log.events("worker_started")) >= 2, "two workers", 20, proc
            )
            children = {e["index"]: e["pid"] for e in log.events("child_started")}
            assert sorted(children) == [0, 1]
            assert healthz(base_port)
            assert healthz(base_port + 1)

            async with streaming(settings, references) as producing:
                await wait_until(lambda: all_stored(db, 1), "a stored usage", 20, proc)
                os.kill(children[0], signal.SIGKILL)  # mid-stream
                restarted = await wait_until(
                    lambda: log.events("child_started", index=0)[1:], "child 0 restarted", 15, proc
                )
                await asyncio.wait_for(producing, 30)
            assert restarted[0]["pid"] != children[0]
            assert restarted[0]["metrics_port"] == base_port
            assert log.events("child_exited", index=0)[0]["how"] == "killed by SIGKILL"
            await wait_until(lambda: healthz(base_port), "the new child's /healthz", 10, proc)
            await wait_until(lambda: all_stored(db, EVENTS), f"{EVENTS} stored usages", 30, proc)

            proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(proc.wait, 30)
        assert code == 0, log.path.read_text()[-3000:]
        await check_every_event_once(settings, db, log, references)
    finally:
        await db.close()


async def check_every_event_once(
    settings: Settings, db: asyncpg.Connection, log: LogFile, references: list[str]
) -> None:
    """One row per event, every offset committed, an accepted outcome per event, and a
    clean stop of both children."""
    rows = await db.fetch("SELECT external_reference FROM usages")
    assert sorted(r["external_reference"] for r in rows) == references
    stopped = log.events("supervisor_stopped")
    assert [e["clean"] for e in stopped] == [True]
    assert {e["index"] for e in log.events("child_stopped", exit_code=0)} == {0, 1}
    offsets = await committed_offsets(settings)
    assert sum(o or 0 for o in offsets.values()) == len(references), offsets
    outcomes = await read_topic(
        settings.kafka_bootstrap_servers, settings.topic_accepted, len(references)
    )
    statuses: dict[str, set[str]] = {}
    for message in outcomes:
        outcome = json.loads(message.value or b"{}")
        statuses.setdefault(outcome["externalReference"], set()).add(outcome["status"])
    assert sorted(statuses) == references
    # A record re-delivered after the kill is `created` again (same source record, SPEC §5).
    assert set().union(*statuses.values()) == {"created"}


async def all_stored(db: asyncpg.Connection, expected: int) -> bool:
    count: int = await db.fetchval("SELECT count(DISTINCT external_reference) FROM usages")
    return count >= expected


CHILD = """
import os, signal, sys, time
if os.environ["USAGE_INGEST_METRICS_PORT"] == "{crashing_port}":
    sys.exit(3)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
time.sleep(60)
sys.exit(4)
"""


async def test_a_crash_loop_stops_every_child_and_ends_with_one_line() -> None:
    settings = Settings(metrics_port=20000, shutdown_grace_s=5)
    policy = RestartPolicy(initial_backoff_s=0.05, max_backoff_s=0.2, max_restarts=3)
    command = [sys.executable, "-c", CHILD.format(crashing_port=20000)]
    supervisor = Supervisor(settings, 2, command=command, policy=policy)
    with pytest.raises(CrashLoop) as raised:
        await asyncio.wait_for(supervisor.run(asyncio.Event()), 20)
    assert str(raised.value).startswith(
        "worker process 0 ended 4 times within 60 s (last: exit code 3)"
    )
    assert [c.last_exit for c in supervisor.children] == [3, 0]


async def test_sigterm_is_forwarded_and_a_second_one_exits_at_once() -> None:
    settings = Settings(metrics_port=0, shutdown_grace_s=5)
    # Each child drains "slowly" after the first SIGTERM and exits 130 at the second one.
    child = (
        "import signal, sys, time\n"
        "seen = []\n"
        "def on_term(*_):\n"
        "    seen.append(1)\n"
        "    if len(seen) > 1: sys.exit(130)\n"
        "signal.signal(signal.SIGTERM, on_term)\n"
        "while True: time.sleep(0.05)\n"
    )
    supervisor = Supervisor(settings, 2, command=[sys.executable, "-c", child])
    stop = asyncio.Event()
    task = asyncio.create_task(supervisor.run(stop))
    for _ in range(100):
        if all(c.running for c in supervisor.children):
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)  # the children install their handler
    supervisor.on_signal(signal.SIGTERM, stop)
    await asyncio.sleep(0.5)
    assert all(c.running for c in supervisor.children), "the children drain: still running"
    supervisor.on_signal(signal.SIGTERM, stop)
    assert await asyncio.wait_for(task, 10) == 130
    assert [c.last_exit for c in supervisor.children] == [130, 130]


async def test_a_child_that_cannot_start_counts_as_a_crash() -> None:
    policy = RestartPolicy(initial_backoff_s=0.01, max_backoff_s=0.01, max_restarts=2)
    supervisor = Supervisor(
        Settings(metrics_port=0), 1, command=["/nonexistent/usage-ingest"], policy=policy
    )
    with pytest.raises(CrashLoop, match=r"ended 3 times .*\(last: could not start: "):
        await asyncio.wait_for(supervisor.run(asyncio.Event()), 10)


async def test_a_child_refused_at_start_ends_the_run_at_once_with_exit_2() -> None:
    """`run --processes 2` beside a worker that holds the metrics port: the child that
    cannot serve its metrics is not restarted (it would fail the same way): every child
    is stopped, the command ends with exit 2 and the child's one line."""
    port = two_free_ports()
    env = {
        **os.environ,
        "USAGE_INGEST_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/nothing",
        "USAGE_INGEST_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
        "USAGE_INGEST_METRICS_PORT": str(port),
        "USAGE_INGEST_LOG_FORMAT": "json",
    }
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", port))
        taken.listen()
        result = await asyncio.to_thread(
            subprocess.run,
            [EXE, "run", "--processes", "2"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    said = [line for line in lines if line.startswith("usage-ingest:")]
    assert any(f"cannot serve metrics on 0.0.0.0:{port}" in line for line in said), said
    assert said[-1].startswith("usage-ingest: worker process 0 was refused at start (exit 2)")
    events = [json.loads(line) for line in lines if line.startswith("{")]
    assert "child_exited" not in {e["event"] for e in events}  # it was not restarted
    assert [e["index"] for e in events if e["event"] == "child_refused"] == [0]
    [stopping] = [e for e in events if e["event"] == "supervisor_stopping"]
    assert stopping["signal"] is None
    assert stopping["reason"] == "a worker process was refused at start"
