"""The `usage-ingest` command line (SPEC.md §9): the `main` group and its commands.

Each command group is a module of this package (cli/common.py holds what they share);
a command imports its machinery only when it runs, so `usage-ingest --help` stays fast.
"""

from __future__ import annotations

import click

from usage_ingest.cli import api, dev, generated, lag, reference, rejections, replay, worker
from usage_ingest.cli.common import Commands


@click.group(
    cls=Commands,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
def main() -> None:
    """usage-ingest: usage events from Kafka to Postgres, each with an outcome."""


for command in (
    worker.run,
    worker.migrate,
    api.api,
    api.api_key,
    reference.reference,
    replay.replay,
    rejections.rejections,
    lag.lag,
    dev.dev,
    dev.produce,
    generated.schemas,
    generated.settings_command,
):
    main.add_command(command)
