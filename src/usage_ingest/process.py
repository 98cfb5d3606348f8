"""How a command runs as this process and how it ends.

A command's coroutine runs with SIGTERM and SIGINT setting its stop event; the
project's errors end the process with one `usage-ingest:` line on standard error
and their exit code (errors.ExitCode), never a traceback.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn

import click

from usage_ingest.errors import ExitCode, UsageIngestError


def fail(message: str, code: ExitCode = ExitCode.FAILED) -> NoReturn:
    """End the process with `message` as one line on standard error and exit `code`."""
    click.echo(f"usage-ingest: {message}", err=True)
    sys.exit(code)


def run_async(main: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine; the project's errors become one line and their exit code."""
    try:
        return asyncio.run(main)
    except UsageIngestError as exc:
        fail(str(exc), code=exc.exit_code)
    except Exception as exc:  # noqa: BLE001 - logged with its traceback where it happened
        fail(f"stopped by an unexpected error: {type(exc).__name__}: {exc}")


def with_stop_signals(main: Callable[[asyncio.Event], Coroutine[Any, Any, Any]]) -> Any:
    """Run `main(stop)`; SIGTERM and SIGINT set `stop` (a second one exits at once)."""

    async def runner() -> Any:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal() -> None:
            if stop.is_set():
                fail("second signal: exiting without waiting", code=ExitCode.INTERRUPTED)
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
        return await main(stop)

    return run_async(runner())
