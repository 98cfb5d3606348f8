"""`usage-ingest lag`: reads the group's positions, prints the report, checks thresholds.

The broker client and the report's rendering are imported when the command runs, so
that `usage-ingest --help` stays fast.
"""

from __future__ import annotations

import asyncio
import json
import sys

import click

from usage_ingest.cli.common import settings_options
from usage_ingest.errors import ExitCode
from usage_ingest.lag import breaches, read_lag_report, render
from usage_ingest.process import fail, run_async, with_stop_signals
from usage_ingest.settings import Settings

_PIPE_WIDTH = 250


@click.command()
@click.option("--group", default=None, help="Consumer group [default: --group-id].")
@click.option(
    "--topic",
    "topics",
    multiple=True,
    help="Topic to report (repeatable) [default: --topic-events].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--max-lag", type=click.IntRange(min=0), help="Exit 1 when the offset lag exceeds N.")
@click.option(
    "--max-time-lag",
    type=click.FloatRange(min=0),
    help="Exit 1 when the time lag exceeds S seconds.",
)
@click.option(
    "--watch", type=click.FloatRange(min=0.5), default=None, help="Refresh every S seconds."
)
@click.option(
    "--serve",
    "serve_port",
    type=click.IntRange(1, 65535),
    default=None,
    metavar="PORT",
    help="Serve the lag as Prometheus metrics on PORT (/metrics, /healthz) until stopped.",
)
@click.option(
    "--host",
    default="0.0.0.0",  # noqa: S104 - scraped from outside the host or pod
    show_default=True,
    help="Address --serve listens on.",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.5),
    default=15.0,
    show_default=True,
    help="With --serve: read the group every S seconds.",
)
@settings_options
def lag(
    group: str | None,
    topics: tuple[str, ...],
    as_json: bool,
    max_lag: int | None,
    max_time_lag: float | None,
    watch: float | None,
    serve_port: int | None,
    host: str,
    interval: float,
    settings: Settings,
) -> None:
    """Consumer lag of a group: offsets and time behind, per partition, with the group's state.

    Works whether or not a worker is running. With --max-lag or --max-time-lag it exits 1
    when a threshold is exceeded, for cron jobs and alerting. With --serve PORT it serves
    the same figures as Prometheus metrics, read from the broker every --interval seconds.
    """
    group_id = group or settings.group_id
    topic_list = list(topics) or [settings.topic_events]
    if serve_port is not None:
        _refuse_with_serve(
            {
                "--json": as_json or None,
                "--max-lag": max_lag,
                "--max-time-lag": max_time_lag,
                "--watch": watch,
            }
        )
        serve_lag(settings, group_id, topic_list, host=host, port=serve_port, interval=interval)
        return
    exceeded = run_async(
        show_lag(
            settings,
            group_id,
            topic_list,
            as_json=as_json,
            max_lag=max_lag,
            max_time_lag=max_time_lag,
            watch=watch,
        )
    )
    if exceeded:
        sys.exit(ExitCode.FAILED)


def _refuse_with_serve(printing: dict[str, object]) -> None:
    """--serve prints nothing: the options of the printed report mean nothing with it."""
    given = [flag for flag, value in printing.items() if value is not None]
    if given:
        flags = ", ".join(given)
        fail(f"lag: --serve cannot be combined with {flags} (see --help)", code=ExitCode.USAGE)


def serve_lag(
    settings: Settings, group_id: str, topics: list[str], *, host: str, port: int, interval: float
) -> None:
    """Serve the lag metrics until SIGTERM or SIGINT."""
    from usage_ingest.lag_exporter import ExporterOptions, serve_lag_metrics

    options = ExporterOptions(group_id, topics, host, port, interval)
    with_stop_signals(lambda stop: serve_lag_metrics(settings, options, stop))


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
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        # Piped into a file or another program: never cut a topic name to fit 80 columns.
        console = Console(width=_PIPE_WIDTH)
    while True:
        report = await read_lag_report(settings, group_id, topics)
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
