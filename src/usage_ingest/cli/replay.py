"""`usage-ingest replay`: dead letters back to the input topic once their cause is fixed."""

from __future__ import annotations

import asyncio
import sys
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

import click

from usage_ingest.cli.common import settings_options
from usage_ingest.errors import ExitCode
from usage_ingest.process import fail, with_stop_signals
from usage_ingest.settings import Settings

if TYPE_CHECKING:
    from usage_ingest.replay.run import ReplayPlan
    from usage_ingest.replay.summary import ReplaySummary
    from usage_ingest.replay.view import ReplayProgress


def _instant(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Any:
    """--since / --until: an RFC 3339 date-time, UTC when it has no offset."""
    from usage_ingest.times import parse_operator_instant

    if value is None:
        return None
    try:
        return parse_operator_instant(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not an RFC 3339 date-time (e.g. 2026-11-22T10:00:00Z)"
        ) from None


@click.command()
@click.option("--source", metavar="TOPIC", help="Topic to replay from [default: --topic-dlq].")
@click.option(
    "--destination", metavar="TOPIC", help="Topic to replay to [default: --topic-events]."
)
@click.option(
    "--replay-group-id",
    metavar="GROUP",
    help="Consumer group that keeps the replay's progress [default: <group-id>.replay].",
)
@click.option(
    "--from-beginning",
    is_flag=True,
    help="Start at the earliest dead letter instead of where the replay group stopped.",
)
@click.option(
    "--partition",
    "partitions",
    type=click.IntRange(min=0),
    multiple=True,
    help="Only this partition of the source (repeatable).",
)
@click.option(
    "--offset",
    type=click.IntRange(min=0),
    help="Start at this offset in every --partition given (needs --partition).",
)
@click.option(
    "--since",
    metavar="TIME",
    callback=_instant,
    help="Only dead letters at or after TIME (RFC 3339, e.g. 2026-11-22T10:00:00Z; no offset "
    "means UTC), compared as --time-field says.",
)
@click.option(
    "--until",
    metavar="TIME",
    callback=_instant,
    help="Only dead letters before TIME (same format and comparison as --since).",
)
@click.option(
    "--time-field",
    type=click.Choice(["failed-at", "record"]),
    default="failed-at",
    show_default=True,
    help="What --since/--until compare: the usage-ingest.failed-at header (the record "
    "timestamp when it is missing), or the dead-letter record's timestamp.",
)
@click.option(
    "--code",
    "codes",
    multiple=True,
    metavar="CODE",
    help="Only dead letters with this error code, e.g. NO_INVENTORY (repeatable; the codes "
    "are SPEC.md §5's).",
)
@click.option(
    "--retryable-only/--all",
    default=True,
    show_default=True,
    help="Only retryable dead letters (the default), or all of them.",
)
@click.option(
    "--external-reference",
    "references",
    multiple=True,
    metavar="REF",
    help="Only the dead letter(s) of this externalReference (repeatable).",
)
@click.option("--limit", type=click.IntRange(min=1), help="Replay at most N records in this run.")
@click.option(
    "--max-replays",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="Skip (and report) dead letters already replayed this many times.",
)
@click.option(
    "--dry-run", is_flag=True, help="Only show what would be replayed: publish and commit nothing."
)
@click.option(
    "--show",
    type=click.IntRange(min=0),
    default=20,
    show_default=True,
    help="How many replayed (and held back) records the summary names.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@settings_options
def replay(
    *,
    source: str | None,
    destination: str | None,
    replay_group_id: str | None,
    from_beginning: bool,
    partitions: tuple[int, ...],
    offset: int | None,
    since: Any,
    until: Any,
    time_field: str,
    codes: tuple[str, ...],
    retryable_only: bool,
    references: tuple[str, ...],
    limit: int | None,
    max_replays: int,
    dry_run: bool,
    show: int,
    as_json: bool,
    settings: Settings,
) -> None:
    """Replay dead letters to the input topic once their cause is fixed.

    Re-publishes each chosen dead letter's key, value and original headers, with
    usage-ingest.replay-count incremented and usage-ingest.replayed-at set. Reads up
    to the end the source had at start, commits the replay group's offsets only after
    the destination acknowledged, and prints a summary (see README: "Replaying dead
    letters"). Unless it is a dry run, it holds the replay group's lock in the database
    (--database-url): one replay per group at a time.
    """
    from rich.console import Console

    from usage_ingest.replay.run import replay_plan
    from usage_ingest.replay.selection import Selection, TimeField
    from usage_ingest.replay.view import ReplayProgress, print_json, print_summary

    if offset is not None and not partitions:
        raise click.UsageError("--offset needs --partition")
    if offset is not None and from_beginning:
        raise click.UsageError("--offset and --from-beginning exclude each other")
    selection = Selection(
        codes=frozenset(c.upper() for c in codes),
        retryable_only=retryable_only,
        references=frozenset(references),
        since=since,
        until=until,
        time_field=TimeField(time_field),
        max_replays=max_replays,
    )
    problems = selection.problems()
    if problems:
        raise click.UsageError("; ".join(problems))
    plan = replay_plan(
        settings,
        destination=destination or settings.topic_events,
        selection=selection,
        limit=limit,
        dry_run=dry_run,
        show=show,
    )
    with ReplayProgress(Console(stderr=True)) as progress:
        summary = with_stop_signals(
            lambda stop: _run(
                settings,
                plan,
                source=source or settings.topic_dlq,
                group_id=replay_group_id or f"{settings.group_id}.replay",
                partitions=partitions,
                from_beginning=from_beginning,
                offset=offset,
                stop=stop,
                progress=progress,
            )
        )
    out = Console(highlight=False)
    if as_json:
        print_json(summary, out)
    else:
        print_summary(summary, out)
    if summary.stopped_because:
        fail(summary.stopped_because)
    if summary.interrupted:
        sys.exit(ExitCode.INTERRUPTED)


async def _run(
    settings: Settings,
    plan: ReplayPlan,
    *,
    source: str,
    group_id: str,
    partitions: tuple[int, ...],
    from_beginning: bool,
    offset: int | None,
    stop: asyncio.Event,
    progress: ReplayProgress,
) -> ReplaySummary:
    """The run, holding the group's lock in the database unless it is a dry run (which
    publishes and commits nothing, so needs no database)."""
    from usage_ingest.replay.run import run_replay
    from usage_ingest.store.store import store_session

    async with AsyncExitStack() as resources:
        guard = None
        if not plan.dry_run:
            guard = await resources.enter_async_context(store_session(settings))
        return await run_replay(
            settings,
            source=source,
            group_id=group_id,
            plan=plan,
            guard=guard,
            partitions=partitions,
            from_beginning=from_beginning,
            offset=offset,
            stop=stop,
            on_start=progress.start,
            progress=progress.update,
            on_finish=progress.finish,
        )
