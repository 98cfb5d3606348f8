"""`usage-ingest reference load`: reference data from a JSON file into the store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from usage_ingest.cli.common import settings_options
from usage_ingest.errors import ReferenceDataError
from usage_ingest.process import fail, run_async
from usage_ingest.settings import Settings


@click.group()
def reference() -> None:
    """Reference data: operating sites, product items, contracts, inventories."""


@reference.command("load")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@settings_options
def reference_load(file: Path, settings: Settings) -> None:
    """Upsert reference data from a JSON FILE, all or nothing (idempotent)."""
    from usage_ingest.domain.reference import read_reference_file
    from usage_ingest.store.store import store_session

    try:
        data = read_reference_file(file)
    except ReferenceDataError as exc:
        fail(str(exc))

    async def go() -> Any:
        async with store_session(settings) as store:
            return await store.load_reference(data)

    counts = run_async(go())
    click.echo(json.dumps({"inserted": counts.inserted, "updated": counts.updated}, sort_keys=True))
