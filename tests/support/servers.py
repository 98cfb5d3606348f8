"""Which real servers the fixtures can start: Docker containers when an engine answers."""

from __future__ import annotations

import functools
import gc
import os
import warnings
from pathlib import Path


@functools.cache
def docker_engine_answers() -> bool:
    """True when a Docker engine answers; asked once, and only when one may exist."""
    if not (os.environ.get("DOCKER_HOST") or Path("/var/run/docker.sock").exists()):
        return False
    import docker  # type: ignore[import-untyped]

    # A failed probe can leave its socket for the garbage collector to find later,
    # and the ResourceWarning it raises then would fail whatever test is running.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            client = docker.from_env(timeout=2)
            try:
                client.ping()
            finally:
                client.close()
        except Exception:  # noqa: BLE001 - any failure means "no engine here"
            return False
        finally:
            gc.collect()
    return True
