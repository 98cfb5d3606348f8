"""The fault harness of the chaos suite: a scenario's servers, real worker processes
and the TCP proxies in front of the servers (proxy.py); the checker (checker.py)
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
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from tests.chaos.proxy import TcpProxy
from tests.support.cli import USAGE_INGEST
from tests.support.database import create_database, load_demo_reference
from tests.support.settings import create_topics, make_settings
from tests.support.waiting import eventually
from usage_ingest.dev.embedded import free_port
from usage_ingest.settings import Settings

PROJECT = Path(__file__).parents[2]
EXE = str(USAGE_INGEST)
FAULTY_WORKER = str(Path(__file__).with_name("faulty_worker.py"))
# Every scenario is repeatable: its random choices come from this seed.
SEED = int(os.environ.get("CHAOS_SEED", "20261122"))


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


# --- a scenario ------------------------------------------------------------------------------


class Chaos:
    """One scenario's servers, workers and proxies; all of them end with the test."""

    def __init__(self, bootstrap: str, admin_url: str, log_dir: Path) -> None:
        self.kafka_bootstrap = bootstrap
        self.admin_url = admin_url
        self.log_dir = log_dir
        self.workers: list[WorkerProcess] = []
        self.proxies: list[TcpProxy] = []

    async def database(self) -> str:
        """A fresh, migrated database with the demo reference data."""
        url = await create_database(self.admin_url)
        await load_demo_reference(url)
        return url

    async def settings(
        self, database_url: str, bootstrap: str | None = None, **overrides: Any
    ) -> Settings:
        """Settings with topics and a group of their own; the topics are created."""
        settings = make_settings(bootstrap or self.kafka_bootstrap, database_url, **overrides)
        await create_topics(settings)
        return settings

    def worker(self, settings: Settings, name: str = "worker") -> WorkerProcess:
        worker = WorkerProcess(name, settings, self.log_dir, metrics_port=free_port())
        self.workers.append(worker)
        return worker

    async def proxy(
        self, target_port: int, *, port: int = 0, server_ssl: ssl.SSLContext | None = None
    ) -> TcpProxy:
        proxy = await TcpProxy(target_port, port=port, server_ssl=server_ssl).start()
        self.proxies.append(proxy)
        return proxy

    async def close(self) -> None:
        for worker in self.workers:
            worker.kill()
        for proxy in self.proxies:
            with contextlib.suppress(Exception):
                await proxy.close()


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
