"""`usage-ingest dev` and `usage-ingest produce`: the whole system on one machine, and
events sent by hand."""

from __future__ import annotations

import sys

import click

from usage_ingest.cli.common import settings_options, settings_options_but
from usage_ingest.process import run_async
from usage_ingest.settings import Settings


@click.command()
@click.option("--kafka-port", type=int, default=None, help="Port of the embedded broker.")
@click.option("--postgres-port", type=int, default=None, help="Port of the embedded Postgres.")
@settings_options_but("kafka_bootstrap_servers", "database_url")
def dev(kafka_port: int | None, postgres_port: int | None, settings: Settings) -> None:
    """Start an embedded broker and Postgres, set them up with demo data, run the worker
    and the HTTP API with its console (--api-port; a key is printed to sign in with)."""
    from usage_ingest.dev.run import run_dev

    run_dev(settings, kafka_port=kafka_port, postgres_port=postgres_port)


@click.command()
@click.option("--key", default=None, help="Record key (default: the event's externalReference).")
@settings_options
def produce(key: str | None, settings: Settings) -> None:
    """Publish the JSON events read from standard input (one per line) to the input topic."""
    from usage_ingest.dev.run import produce_lines

    count = run_async(produce_lines(settings, sys.stdin, key))
    click.echo(f"produced {count} event(s) to {settings.topic_events}", err=True)
