"""`usage-ingest run --processes N`: N worker processes in one consumer group, supervised.

Python runs one core per process, so one machine with several cores runs several workers.
The parent runs no worker itself. It starts N children (`python -m usage_ingest.cli run`),
hands each the parent's settings as `USAGE_INGEST_*` environment variables (flags given to the
parent included; secrets never appear on a command line), and:

* gives child `i` its own operations server: metrics port = base + i (0 stays 0, off);
* restarts a child that ends while nobody asked it to, after a backoff that doubles while it
  keeps failing, at most `max_restarts` times within `window_s` per child. One more crash
  within that window is a crash loop: the other children are stopped gracefully and the
  command fails with one line naming the child and how it ended. A child that exits 2 was
  refused by its settings or setup (a taken port, say): it would fail the same way again, so
  every child is stopped at once and the command exits 2;
* forwards SIGTERM/SIGINT to every child and waits for them to drain (each finishes or
  abandons its batch in flight, commits and leaves the group), then exits 0 when every child
  exited 0. A second signal is forwarded too (the children then exit at once). A child that
  has not exited `drain_margin_s` after its own `shutdown_grace_s` is killed.

The children run in a process group of their own, so a Ctrl-C on the terminal reaches only
the parent, which forwards it once. On Linux each child also gets SIGTERM when the parent
dies, even by SIGKILL, so no worker outlives its supervisor.

Under systemd use `KillMode=mixed`: the default `control-group` sends SIGTERM to the children
directly as well, which they would take as the second, "exit at once" signal.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import os
import signal
import sys
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

import structlog
from pydantic import SecretStr
from pydantic_core import to_jsonable_python

from usage_ingest.errors import (
    ChildRefused,
    ConfigurationError,
    CrashLoop,
    ExitCode,
    UsageIngestError,
)
from usage_ingest.settings import ENV_PREFIX, MAX_PORT, Settings
from usage_ingest.worker.parent_death import parent_death_hook

log = structlog.get_logger("usage_ingest.worker.supervisor")

__all__ = [
    "ChildRefused",
    "CrashHistory",
    "CrashLoop",
    "RestartPolicy",
    "Supervisor",
    "child_environment",
    "metrics_port_of",
    "supervise",
    "worker_command",
]

# How long after a child's own shutdown grace the supervisor waits before killing it.
DRAIN_MARGIN_S: Final = 15.0


def worker_command() -> list[str]:
    """The command line of one child: `usage-ingest run` in this same interpreter."""
    return [sys.executable, "-m", "usage_ingest.cli", "run"]


def metrics_port_of(base_port: int, index: int) -> int:
    """Child `index`'s metrics port: base + index, or 0 (off) when the base is 0."""
    return 0 if base_port == 0 else base_port + index


def _env_value(value: object) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    # Lists, mappings and models: pydantic-settings reads complex values as JSON.
    return json.dumps(to_jsonable_python(value))


def child_environment(
    settings: Settings, index: int, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment of child `index`: `base` (default: ours) with every setting set to
    the parent's value, so that the child loads exactly the parent's settings."""
    env = dict(os.environ if base is None else base)
    for name in Settings.model_fields:
        value = getattr(settings, name)
        key = ENV_PREFIX + name.upper()
        if value is None:
            env.pop(key, None)
        else:
            env[key] = _env_value(value)
    env[ENV_PREFIX + "METRICS_PORT"] = str(metrics_port_of(settings.metrics_port, index))
    return env


@dataclass
class RestartPolicy:
    """When to restart a child that ended unexpectedly, and when to give up.

    The delay starts at `initial_backoff_s` and doubles with each crash of a child that ran
    less than `stable_after_s`, up to `max_backoff_s`. More than `max_restarts` crashes of one
    child within `window_s` is a crash loop: `next_delay` returns None.
    """

    initial_backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    max_restarts: int = 5
    window_s: float = 60.0
    stable_after_s: float = 60.0


@dataclass
class CrashHistory:
    policy: RestartPolicy
    crashes: deque[float] = field(default_factory=deque)
    consecutive: int = 0

    def next_delay(self, now: float, ran_for_s: float) -> float | None:
        """Record a crash at `now` after running `ran_for_s`; the delay before the restart,
        or None when this crash makes a crash loop."""
        policy = self.policy
        self.crashes.append(now)
        while self.crashes and self.crashes[0] <= now - policy.window_s:
            self.crashes.popleft()
        if len(self.crashes) > policy.max_restarts:
            return None
        if ran_for_s >= policy.stable_after_s:
            self.consecutive = 0
        delay: float = min(policy.initial_backoff_s * 2.0**self.consecutive, policy.max_backoff_s)
        self.consecutive += 1
        return delay


def _describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


@dataclass
class _Child:
    index: int
    metrics_port: int
    history: CrashHistory
    process: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    last_exit: int | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def send(self, sig: signal.Signals) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)


class Supervisor:
    """Starts, restarts and stops the worker processes; see the module's description."""

    def __init__(
        self,
        settings: Settings,
        processes: int,
        *,
        command: Sequence[str] | None = None,
        policy: RestartPolicy | None = None,
        drain_margin_s: float = DRAIN_MARGIN_S,
    ) -> None:
        if processes < 1:
            raise ConfigurationError("--processes must be at least 1")
        last_port = metrics_port_of(settings.metrics_port, processes - 1)
        if last_port > MAX_PORT:
            raise ConfigurationError(
                f"--processes {processes} needs metrics ports {settings.metrics_port}-{last_port}"
                f": set {ENV_PREFIX}METRICS_PORT (--metrics-port) to at most "
                f"{MAX_PORT - processes + 1}, or 0 to turn the servers off"
            )
        self.settings = settings
        self.command = list(command or worker_command())
        self.policy = policy or RestartPolicy()
        self.drain_timeout_s = settings.shutdown_grace_s + drain_margin_s
        self.children = [
            _Child(i, metrics_port_of(settings.metrics_port, i), CrashHistory(self.policy))
            for i in range(processes)
        ]
        self._stopping = False
        self._signal: signal.Signals | None = None
        self._signals_received = 0
        self._crash_loop: str | None = None
        self._refused: str | None = None
        self._killed: list[int] = []

    # --- signals -----------------------------------------------------------------

    def on_signal(self, sig: signal.Signals, stop: asyncio.Event) -> None:
        """SIGTERM/SIGINT: begin draining; a second signal is forwarded as well."""
        self._signals_received += 1
        if self._signals_received == 1:
            self._signal = sig
            stop.set()
            return
        log.warning("supervisor_second_signal", signal=sig.name)
        for child in self.children:
            child.send(sig)

    # --- running -------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> int:
        """Run the children until `stop` is set or one of them crash-loops; the exit code."""
        log.info(
            "supervisor_started",
            processes=len(self.children),
            metrics_ports=[c.metrics_port for c in self.children],
            group_id=self.settings.group_id,
        )
        keepers = [asyncio.create_task(self._keep_running(c, stop)) for c in self.children]

        def on_keeper_done(task: asyncio.Task[None]) -> None:
            if not task.cancelled():  # a keeper that fails must not leave the parent waiting
                stop.set()

        for keeper in keepers:
            keeper.add_done_callback(on_keeper_done)
        try:
            await stop.wait()
            self._stopping = True
            sig = self._signal or signal.SIGTERM
            log.info(
                "supervisor_stopping",
                signal=self._signal.name if self._signal else None,
                reason=self._stop_reason(),
                running=[c.index for c in self.children if c.running],
            )
            for child in self.children:
                child.send(sig)
            await self._drain(keepers)
        finally:
            for task in keepers:
                task.cancel()
            for child in self.children:  # only after an unexpected error: never leave one
                child.send(signal.SIGKILL)
        return self._finish(keepers)

    async def _drain(self, keepers: list[asyncio.Task[None]]) -> None:
        _, pending = await asyncio.wait(keepers, timeout=self.drain_timeout_s)
        if not pending:
            return
        for child in self.children:
            if child.running:
                log.error(
                    "child_killed",
                    index=child.index,
                    pid=child.process.pid if child.process else None,
                    waited_s=self.drain_timeout_s,
                )
                self._killed.append(child.index)
                child.send(signal.SIGKILL)
        await asyncio.wait(pending, timeout=self.drain_timeout_s)

    def _finish(self, keepers: list[asyncio.Task[None]]) -> int:
        for keeper in keepers:
            if keeper.done() and not keeper.cancelled() and keeper.exception() is not None:
                raise UsageIngestError(
                    f"the supervisor failed: {keeper.exception()!r}; stopped every worker process"
                ) from keeper.exception()
        codes = {c.index: c.last_exit for c in self.children}
        clean = all(code == 0 for code in codes.values()) and not self._killed
        log.info(
            "supervisor_stopped",
            exit_codes={str(i): code for i, code in codes.items()},
            clean=clean,
        )
        if self._refused is not None:
            raise ChildRefused(self._refused)
        if self._crash_loop is not None:
            raise CrashLoop(self._crash_loop)
        if self._signals_received > 1:
            return ExitCode.INTERRUPTED
        return ExitCode.OK if clean else ExitCode.FAILED

    def _stop_reason(self) -> str:
        if self._signal is not None:
            return "signal"
        if self._refused is not None:
            return "a worker process was refused at start"
        if self._crash_loop is not None:
            return "a worker process crash-looped"
        return "the supervisor failed"

    async def _keep_running(self, child: _Child, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            pid: int | None = None
            try:
                process = await self._start(child)
            except OSError as exc:  # e.g. out of memory or processes: counts as a crash
                child.last_exit = 1
                how = f"could not start: {exc}"
                ran_for_s = 0.0
            else:
                pid = process.pid
                if self._stopping:  # the stop was forwarded while this child was starting
                    child.send(self._signal or signal.SIGTERM)
                child.last_exit = await process.wait()
                how = _describe_exit(child.last_exit)
                ran_for_s = loop.time() - child.started_at
            if stop.is_set():
                log.info(
                    "child_stopped", index=child.index, pid=pid, exit_code=child.last_exit, how=how
                )
                return
            if child.last_exit == ExitCode.USAGE:
                self._refused = (
                    f"worker process {child.index} was refused at start (exit 2): see its "
                    f"usage-ingest: line above; stopped all {len(self.children)} worker processes"
                )
                log.error("child_refused", index=child.index, pid=pid, how=how)
                stop.set()
                return
            delay = child.history.next_delay(loop.time(), ran_for_s)
            if delay is None:
                self._crash_loop = (
                    f"worker process {child.index} ended {len(child.history.crashes)} times "
                    f"within {self.policy.window_s:g} s (last: {how}); "
                    f"stopped all {len(self.children)} worker processes: see its log lines above"
                )
                log.error(
                    "child_crash_loop",
                    index=child.index,
                    pid=pid,
                    how=how,
                    crashes=len(child.history.crashes),
                    window_s=self.policy.window_s,
                )
                stop.set()
                return
            log.warning(
                "child_exited",
                index=child.index,
                pid=pid,
                exit_code=child.last_exit,
                how=how,
                ran_for_s=round(ran_for_s, 1),
                restart_in_s=delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)

    async def _start(self, child: _Child) -> asyncio.subprocess.Process:
        env = child_environment(self.settings, child.index)
        hook = parent_death_hook(signal.SIGTERM)
        process = await asyncio.create_subprocess_exec(
            *self.command,
            stdin=asyncio.subprocess.DEVNULL,
            env=env,
            # Own process group: a terminal's Ctrl-C reaches only the supervisor, which
            # forwards it once. Output goes to the supervisor's own stdout and stderr.
            process_group=0,
            preexec_fn=hook,  # only calls prctl, which is async-signal-safe
        )
        child.process = process
        child.started_at = asyncio.get_running_loop().time()
        log.info(
            "child_started",
            index=child.index,
            pid=process.pid,
            metrics_port=child.metrics_port,
        )
        return process


def supervise(settings: Settings, processes: int) -> int:
    """`usage-ingest run --processes N`: supervise N workers until SIGTERM/SIGINT; the exit
    code (a crash loop raises `CrashLoop`, which the command line prints as one line)."""
    supervisor = Supervisor(settings, processes)

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, supervisor.on_signal, sig, stop)
        return await supervisor.run(stop)

    code: int = asyncio.run(main())
    return code
