"""The parent-death signal a process gives the children it starts: on Linux a child gets
a signal when its parent dies, even by SIGKILL, so no child outlives the process that
started it (the supervisor's workers, the embedded servers of `usage-ingest dev`)."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable
from typing import Final

_PR_SET_PDEATHSIG: Final = 1


def parent_death_hook(
    sig: signal.Signals = signal.SIGKILL,
) -> Callable[[], None] | None:
    """A `preexec_fn` that sends the child `sig` when this process dies, on Linux; None
    elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()

    def hook() -> None:
        # Runs in the child after the switch to another user, which would clear the setting.
        libc.prctl(_PR_SET_PDEATHSIG, int(sig))
        if os.getppid() != parent:  # the parent died before the setting took effect
            os._exit(1)

    return hook
