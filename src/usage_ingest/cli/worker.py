"""`usage-ingest run` and `usage-ingest migrate`: the worker and its database schema."""

from __future__ import annotations

import sys

import click

from usage_ingest.cli.common import settings_options
from usage_ingest.process import run_async, with_stop_signals
from usage_ingest.settings import Settings


@click.command()
@settings_options
def migrate(settings: Settings) -> None:
    """Apply the sql/ migrations (idempotent)."""
    from usage_ingest.store.store import store_session

    async def go() -> list[str]:
        async with store_session(settings) as store:
            return await store.migrate()

    applied = run_async(go())
    click.echo(
        f"applied {len(applied)} migration(s)" + (f": {', '.join(applied)}" if applied else "")
    )


@click.command()
@click.option(
    "--processes",
    type=click.IntRange(1, 256),
    default=1,
    show_default=True,
    help="Worker processes in the one consumer group, supervised: a crashed one is restarted, "
    "SIGTERM drains all. Process i serves metrics on --metrics-port + i.",
)
@settings_options
def run(processes: int, settings: Settings) -> None:
    """Run the worker until SIGTERM or SIGINT."""
    from usage_ingest.worker.runtime import run_worker

    settings.require_database_url()
    if processes > 1:
        from usage_ingest.worker.supervisor import supervise

        sys.exit(supervise(settings, processes))
    with_stop_signals(lambda stop: run_worker(settings, stop))
