"""The `usage-ingest` console script, run as a user runs it: a subprocess with
`USAGE_INGEST_*` environment variables and flags (SPEC.md §9)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaProducer

from tests.support.broker import committed_offsets, read_topic
from tests.support.database import DEMO_REFERENCE
from usage_ingest.dev.embedded import free_port
from usage_ingest.domain.reference import read_reference_file
from usage_ingest.errors import ExitCode
from usage_ingest.settings import Settings
from usage_ingest.store.store import open_store

pytestmark = pytest.mark.integration

PROJECT = Path(__file__).parents[2]
EXE = str(Path(sys.executable).parent / "usage-ingest")
UNREACHABLE_DB = "postgresql://nobody@127.0.0.1:1/nothing"


def user_env(**settings: str) -> dict[str, str]:
    """This environment without any USAGE_INGEST_* variable, plus `settings`
    (given by field name, e.g. database_url=...)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("USAGE_INGEST_")}
    env.update({f"USAGE_INGEST_{name.upper()}": value for name, value in settings.items()})
    return env


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that points `usage-ingest run` at the test's broker, database,
    topics and group."""
    assert settings.database_url is not None
    return user_env(
        kafka_bootstrap_servers=settings.kafka_bootstrap_servers,
        database_url=settings.database_url.get_secret_value(),
        group_id=settings.group_id,
        topic_events=settings.topic_events,
        topic_accepted=settings.topic_accepted,
        topic_rejected=settings.topic_rejected,
        topic_dlq=settings.topic_dlq,
        kafka_session_timeout_ms=str(settings.kafka_session_timeout_ms),
        batch_max_wait_ms=str(settings.batch_max_wait_ms),
    )


def cli(
    args: list[str], env: dict[str, str], timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EXE, *args],
        env=env,
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def stderr_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


@contextmanager
def background(
    args: list[str], env: dict[str, str], out: Path, err: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Start the CLI with its output going to files; killed if the test leaves it running."""
    with (
        out.open("wb") as stdout,
        err.open("wb") as stderr,
        subprocess.Popen([EXE, *args], env=env, cwd=PROJECT, stdout=stdout, stderr=stderr) as proc,
    ):
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def wait_for(
    condition: Callable[[], object], what: str, timeout: float, proc: subprocess.Popen[bytes]
) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        assert proc.poll() is None, f"the process ended (code {proc.returncode}) before {what}"
        time.sleep(0.1)
    raise AssertionError(f"no {what} within {timeout} s")


def exit_code_after(
    proc: subprocess.Popen[bytes], sig: signal.Signals, within: float
) -> tuple[int, float]:
    start = time.monotonic()
    proc.send_signal(sig)
    code = proc.wait(timeout=within)
    return code, time.monotonic() - start


# --- migrate ---------------------------------------------------------------------------


async def test_migrate_twice_applies_everything_once(postgres_admin_url: str) -> None:
    name = f"cli_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(postgres_admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    url = postgres_admin_url.rpartition("/")[0] + "/" + name
    env = user_env(database_url=url)

    first = await asyncio.to_thread(cli, ["migrate"], env)
    assert first.returncode == 0, first.stderr
    match = re.search(r"applied (\d+) migration\(s\)", first.stdout)
    assert match, first.stdout
    applied = int(match.group(1))
    assert applied >= 1

    second = await asyncio.to_thread(cli, ["migrate"], env)
    assert second.returncode == 0, second.stderr
    assert "applied 0 migration(s)" in second.stdout

    conn = await asyncpg.connect(url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == applied
        assert await conn.fetchval("SELECT to_regclass('usages') IS NOT NULL")
    finally:
        await conn.close()


# --- bad settings: one clear line, no traceback --------------------------------------


@pytest.mark.parametrize(
    ("env", "args", "named"),
    [
        ({"max_message_bytes": "abc"}, [], "USAGE_INGEST_MAX_MESSAGE_BYTES"),
        ({}, ["--batch-max-records", "0"], "--batch-max-records"),
        ({"kafka_bootstrap_servers": "nohostport"}, [], "USAGE_INGEST_KAFKA_BOOTSTRAP_SERVERS"),
        ({}, ["--kafka-bootstrap-servers", "nohostport"], "--kafka-bootstrap-servers"),
        ({"database_url": "mysql://db/x"}, [], "USAGE_INGEST_DATABASE_URL"),
    ],
    ids=["env-not-an-int", "flag-out-of-range", "env-no-port", "flag-no-port", "env-not-postgres"],
)
def test_run_with_a_bad_setting_fails_with_one_line(
    env: dict[str, str], args: list[str], named: str
) -> None:
    result = cli(["run", *args], user_env(**{"database_url": UNREACHABLE_DB, **env}))
    assert result.returncode == ExitCode.USAGE
    lines = stderr_lines(result)
    assert len(lines) == 1, result.stderr
    assert named in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


def test_run_without_a_database_url_says_so_in_one_line() -> None:
    result = cli(["run"], user_env())
    assert result.returncode == ExitCode.USAGE
    lines = stderr_lines(result)
    assert len(lines) == 1, result.stderr
    assert "USAGE_INGEST_DATABASE_URL" in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["replay", "--code", "SCHEMA_VIOLATION"], "replay: SCHEMA_VIOLATION is not retryable"),
        (["replay", "--offset", "3"], "replay: --offset needs --partition"),
        (["run", "--no-such-flag"], "run: No such option"),
        (["no-such-command"], "No such command"),
        (["lag", "--watch", "0.1"], "lag: Invalid value for '--watch'"),
    ],
)
def test_a_wrong_command_line_is_one_line_and_exit_2(args: list[str], named: str) -> None:
    result = cli(args, user_env(database_url=UNREACHABLE_DB))
    assert result.returncode == ExitCode.USAGE, result.stderr
    [line] = stderr_lines(result)
    assert line.startswith("usage-ingest: ")
    assert named in line, line
    assert "Usage:" not in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_ctrl_c_in_lag_watch_exits_130_without_aborted(settings: Settings, tmp_path: Path) -> None:
    out, err = tmp_path / "out", tmp_path / "err"
    with background(["lag", "--watch", "0.5"], settings_env(settings), out, err) as proc:
        wait_for(out.read_bytes, "a lag report", 30, proc)
        code, _ = exit_code_after(proc, signal.SIGINT, within=10)
    assert code == ExitCode.INTERRUPTED, err.read_text()
    assert "Aborted" not in err.read_text()


def test_help_shows_each_settings_type_and_default() -> None:
    text = " ".join(cli(["run", "--help"], user_env()).stdout.split())
    assert "--batch-max-records INTEGER Records per batch." in text
    assert "default: 1000]" in text
    assert "--db-statement-timeout-s NUMBER" in text
    assert "--database-url TEXT" in text
    dev = cli(["dev", "--help"], user_env()).stdout
    assert "--kafka-port" in dev
    assert "--database-url" not in dev  # dev starts its own broker and database
    assert "--kafka-bootstrap-servers" not in dev


# --- run, then a stop signal ---------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_run_processes_then_stops_cleanly_on_signal(
    settings: Settings, tmp_path: Path, sig: signal.Signals
) -> None:
    store = await open_store(settings)
    try:
        await store.load_reference(read_reference_file(DEMO_REFERENCE))
    finally:
        await store.close()
    event = {
        "externalReference": f"cli-{sig.name}",
        "contractId": 1,
        "productIdent": "demo.usage",
        "startDate": "2026-11-22T10:00:00Z",
        "endDate": "2026-11-22T10:01:00Z",
    }
    # Two records on partition 1 (one accepted, one rejected): its log end is then 2.
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers, enable_idempotence=False
    )
    await producer.start()
    try:
        for value in (json.dumps(event).encode(), b"not json"):
            metadata = await (
                await producer.send(settings.topic_events, value, key=b"k", partition=1)
            )
    finally:
        await producer.stop()
    log_end = metadata.offset + 1
    assert log_end == 2

    with background(["run"], settings_env(settings), tmp_path / "out", tmp_path / "err") as proc:
        accepted = await read_topic(
            settings.kafka_bootstrap_servers, settings.topic_accepted, 1, settle=0
        )
        rejected = await read_topic(
            settings.kafka_bootstrap_servers, settings.topic_rejected, 1, settle=0
        )
        assert [json.loads(m.value or b"")["status"] for m in accepted + rejected] == [
            "created",
            "rejected",
        ]
        assert proc.poll() is None, "the worker ended by itself"
        code, took = await asyncio.to_thread(exit_code_after, proc, sig, 15)
    stderr = (tmp_path / "err").read_text()
    assert code == 0, stderr
    assert took < 10, f"took {took:.1f} s to stop"
    assert "Traceback" not in stderr
    # A clean start and stop logs no error (aiokafka's "Unable to update metadata from []"
    # at every start taught operators to ignore errors).
    logged = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert logged, stderr
    assert [e for e in logged if str(e.get("level")).lower() == "error"] == []
    assert await committed_offsets(settings) == {0: None, 1: log_end, 2: None}


# --- dev -------------------------------------------------------------------------------------


def processes_mentioning(*ports: int) -> list[str]:
    """Command lines of running processes that name one of `ports`."""
    # -ww: whole command lines, never cut to the (possibly inherited) terminal width.
    listing = subprocess.run(
        ["ps", "-ww", "-eo", "pid=,args="], capture_output=True, text=True, check=True, timeout=10
    ).stdout
    wanted = re.compile(r"(?<!\d)(" + "|".join(str(p) for p in ports) + r")(?!\d)")
    return [
        line
        for line in listing.splitlines()
        if wanted.search(line) and ("tansu" in line or "postgres" in line)
    ]


def test_dev_runs_the_printed_sample_then_stops_everything_on_sigint(tmp_path: Path) -> None:
    kafka_port = free_port()
    out, err = tmp_path / "out", tmp_path / "err"
    api_port = free_port()
    command_line = ["dev", "--kafka-port", str(kafka_port), "--api-port", str(api_port)]
    with background(command_line, user_env(), out, err) as proc:

        def banner() -> list[str] | None:
            lines = out.read_text().splitlines()
            for index, line in enumerate(lines):
                if "Send a sample event" in line and index + 1 < len(lines):
                    return lines
            return None

        lines = wait_for(banner, "banner", 90, proc)
        assert isinstance(lines, list)
        (command,) = [
            line.strip() for line in lines if re.match(r"^\s*echo .*\| .* produce ", line)
        ]
        assert f"127.0.0.1:{kafka_port}" in command
        (database,) = [line for line in lines if "Database URL" in line]
        match = re.search(r"postgresql://\S+:(\d+)/", database)
        assert match, database
        postgres_port = int(match.group(1))
        assert processes_mentioning(kafka_port, postgres_port)

        sent = subprocess.run(
            ["bash", "-c", command],
            cwd=PROJECT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert sent.returncode == 0, sent.stderr
        reference = json.loads(shlex.split(command)[1])["externalReference"]

        def created() -> bool:
            for line in out.read_text().splitlines():
                if line.startswith("outcome:"):
                    outcome = json.loads(line.removeprefix("outcome:"))
                    if outcome["externalReference"] == reference:
                        return outcome["status"] == "created"
            return False

        wait_for(created, f"created outcome line for {reference}", 30, proc)
        # The API and its console run beside the worker, and the printed key reads with it.
        assert any(f"Console         : http://127.0.0.1:{api_port}/console" in x for x in lines)
        (key_line,) = [line for line in lines if "API key" in line]
        key = key_line.split(":", 1)[1].split()[0]
        stored = httpx.get(
            f"http://127.0.0.1:{api_port}/usages/{reference}",
            headers={"X-API-KEY": key},
            timeout=10,
        )
        assert stored.status_code == 200, stored.text
        assert stored.json()["externalReference"] == reference
        sign_in = httpx.get(f"http://127.0.0.1:{api_port}/console/sign-in", timeout=10)
        assert sign_in.status_code == 200
        assert key not in sign_in.text
        code, took = exit_code_after(proc, signal.SIGINT, 30)
    assert code == 0, err.read_text()
    assert "Traceback" not in err.read_text()
    assert took < 20, f"took {took:.1f} s to stop"
    assert processes_mentioning(kafka_port, postgres_port) == []
