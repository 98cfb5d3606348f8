"""`usage-ingest lag`: reads the group's positions, prints the report, checks thresholds."""

from __future__ import annotations

import asyncio
import json
import time

import click
from rich.console import Console

from usage_ingest.kafka.admin import describe_group, read_positions
from usage_ingest.lag import LagReport, breaches, build_report, render
from usage_ingest.settings import Settings

_PIPE_WIDTH = 250


async def lag_report(settings: Settings, group_id: str, topics: list[str]) -> LagReport:
    group, positions = await asyncio.gather(
        describe_group(settings, group_id), read_positions(settings, group_id, topics)
    )
    return build_report(group, positions, int(time.time() * 1000))


async def show_lag(
    settings: Settings,
    group_id: str,
    topics: list[str],
    *,
    as_json: bool,
    max_lag: int | None,
    max_time_lag: float | None,
    watch: float | None,
) -> bool:
    """Print the report (again every `watch` seconds); True when a threshold is exceeded."""
    console = Console()
    if not console.is_terminal:
        # Piped into a file or another program: never cut a topic name to fit 80 columns.
        console = Console(width=_PIPE_WIDTH)
    while True:
        report = await lag_report(settings, group_id, topics)
        exceeded = breaches(report, max_lag, max_time_lag)
        if watch is not None and console.is_terminal:
            console.clear()
        if as_json:
            click.echo(json.dumps({**report.as_json(), "exceeded": exceeded}))
        else:
            console.print(render(report))
            for line in exceeded:
                console.print(f"[bold red]threshold exceeded:[/] {line}")
        if watch is None:
            return bool(exceeded)
        await asyncio.sleep(watch)
