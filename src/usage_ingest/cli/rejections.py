"""`usage-ingest rejections prune`: the retention of the refusals kept in Postgres."""

from __future__ import annotations

from datetime import timedelta

import click

from usage_ingest.cli.common import settings_options
from usage_ingest.process import run_async
from usage_ingest.settings import Settings


@click.group()
def rejections() -> None:
    """The refusals the worker keeps in Postgres (usage_rejections)."""


def _days(value: str) -> int:
    """A number of days: a whole number, 1 or more."""
    try:
        days = int(value)
    except ValueError:
        days = 0
    if days < 1:
        raise click.BadParameter(f"{value!r} is not a whole number of days, 1 or more")
    return days


@rejections.command("prune")
@click.option(
    "--older-than",
    "older_than_days",
    callback=lambda _ctx, _param, value: _days(value),
    required=True,
    metavar="DAYS",
    help="Delete the refusals that failed more than DAYS days ago (a whole number, 1 or more).",
)
@click.option("--dry-run", is_flag=True, help="Only count them; delete nothing.")
@settings_options
def prune(older_than_days: int, dry_run: bool, settings: Settings) -> None:
    """Delete the refusals that failed more than DAYS days ago; print how many.

    Their dead letters are not touched: the dead-letter topic keeps its own retention.
    An interrupted prune keeps what it deleted; run it again to finish.
    """
    from usage_ingest.store.store import store_session
    from usage_ingest.times import format_utc_millis, utc_now

    before = utc_now() - timedelta(days=older_than_days)

    async def go() -> int:
        async with store_session(settings) as store:
            return await store.prune_rejections(before, dry_run=dry_run)

    count: int = run_async(go())
    done = "would delete" if dry_run else "deleted"
    click.echo(f"{done} {count} rejections that failed before {format_utc_millis(before)}")
