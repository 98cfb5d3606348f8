"""The real command line as child processes: `usage-ingest` commands run to their end,
and `usage-ingest api` served on a port of its own.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from usage_ingest.dev.embedded import free_port
from usage_ingest.settings import Settings

USAGE_INGEST = Path(sys.executable).parent / "usage-ingest"


@dataclass
class Completed:
    returncode: int
    stdout: str
    stderr: str


async def run_cli(env: dict[str, str], *args: str, timeout: float = 60) -> Completed:
    process = await asyncio.create_subprocess_exec(
        str(USAGE_INGEST),
        *args,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return Completed(process.returncode, stdout.decode(), stderr.decode())


def cli_env(settings: Settings) -> dict[str, str]:
    assert settings.database_url is not None
    return {
        "USAGE_INGEST_DATABASE_URL": settings.database_url.get_secret_value(),
        "USAGE_INGEST_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "USAGE_INGEST_TOPIC_EVENTS": settings.topic_events,
        "USAGE_INGEST_LOG_FORMAT": "json",
    }


def process_env(settings: Settings, **overrides: object) -> dict[str, str]:
    """What an operator exports for a `usage-ingest` process: this environment without
    USAGE_INGEST_*, plus the test's settings, plus `overrides` (setting name: value)."""
    assert settings.database_url is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("USAGE_INGEST_")}
    values: dict[str, object] = {
        "kafka_bootstrap_servers": settings.kafka_bootstrap_servers,
        "database_url": settings.database_url.get_secret_value(),
        "group_id": settings.group_id,
        "topic_events": settings.topic_events,
        "topic_accepted": settings.topic_accepted,
        "topic_rejected": settings.topic_rejected,
        "topic_dlq": settings.topic_dlq,
        "kafka_session_timeout_ms": settings.kafka_session_timeout_ms,
        "batch_max_wait_ms": settings.batch_max_wait_ms,
        "batch_max_records": settings.batch_max_records,
        "shutdown_grace_s": settings.shutdown_grace_s,
        "log_format": "json",
        **overrides,
    }
    env.update({f"USAGE_INGEST_{k.upper()}": str(v) for k, v in values.items()})
    return env


@contextmanager
def running(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A `usage-ingest` process writing to `log`; SIGKILLed if still running at the end
    (the test failed; a supervisor's children then get SIGTERM from it)."""
    with (
        log.open("wb") as out,
        subprocess.Popen(
            [str(USAGE_INGEST), *args], env=env, stdout=out, stderr=subprocess.STDOUT
        ) as proc,
    ):
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


class ApiProcess:
    """`usage-ingest api` as a child process, on a port of its own."""

    def __init__(self, env: dict[str, str], port: int | None = None) -> None:
        self.env = env
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.process: asyncio.subprocess.Process | None = None
        self.stderr = b""
        # A file, not a pipe: a pipe nobody reads fills up and blocks the server's logging.
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()

    async def start(self, timeout: float = 30) -> ApiProcess:
        self.process = await asyncio.create_subprocess_exec(
            str(USAGE_INGEST),
            "api",
            "--port",
            str(self.port),
            env={**os.environ, **self.env},
            stdout=asyncio.subprocess.DEVNULL,
            stderr=self._log,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with httpx.AsyncClient(base_url=self.base_url) as client:
            while True:
                if self.process.returncode is not None:
                    raise AssertionError(f"usage-ingest api exited: {await self.stop()}")
                try:
                    if (await client.get("/healthz")).status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
                if loop.time() > deadline:
                    raise AssertionError("usage-ingest api did not answer /healthz")
                await asyncio.sleep(0.1)

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(sig)
        returncode = await asyncio.wait_for(self.process.wait(), timeout)
        self._log.seek(0)
        self.stderr = self._log.read()
        self._log.close()
        return returncode
