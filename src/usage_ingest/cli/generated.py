"""`usage-ingest schemas` and `usage-ingest settings`: the checked-in files generated from
the models (the JSON Schemas of schemas/, README's configuration table)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option(
    "--directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("schemas"),
    show_default=True,
)
def schemas(directory: Path) -> None:
    """Write the JSON Schemas of every message read or written."""
    from usage_ingest.domain.schemas import write_all

    for path in write_all(directory):
        click.echo(str(path))


@click.command("settings")
def settings_command() -> None:
    """Print every setting (variable, flag, default, meaning) as a Markdown table.

    README's configuration table is this output; a test fails when they differ."""
    from usage_ingest.settings import settings_reference

    click.echo(settings_reference(), nl=False)
