"""`usage-ingest api` and `usage-ingest api-key ...`: the HTTP API and its keys."""

from __future__ import annotations

from typing import Any

import click

from usage_ingest.api.keys import Permission
from usage_ingest.cli.common import settings_options
from usage_ingest.errors import ExitCode
from usage_ingest.process import fail, run_async, with_stop_signals
from usage_ingest.settings import Settings


@click.command()
@click.option("--host", default=None, help="Address to listen on (same as --api-host).")
@click.option(
    "--port", type=click.IntRange(1, 65535), default=None, help="Port (same as --api-port)."
)
@settings_options
def api(host: str | None, port: int | None, settings: Settings) -> None:
    """Serve the HTTP API (SPEC-API.md) until SIGTERM or SIGINT."""
    from usage_ingest.api.server import serve

    settings.require_database_url()
    given = {"api_host": host, "api_port": port}
    settings = settings.model_copy(update={k: v for k, v in given.items() if v is not None})
    with_stop_signals(lambda stop: serve(settings, stop))


@click.group("api-key")
def api_key() -> None:
    """API keys of the HTTP API: create, list, revoke."""


_API_KEY_NAME_MAX = 200


def _api_key_name(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    if not 1 <= len(value) <= _API_KEY_NAME_MAX or not value.isprintable():
        raise click.BadParameter(f"1 to {_API_KEY_NAME_MAX} printable characters")
    return value


@api_key.command("create")
@click.option("--name", required=True, callback=_api_key_name, help="Who or what uses the key.")
@click.option(
    "--permission",
    "permissions",
    multiple=True,
    required=True,
    type=click.Choice([p.value for p in Permission]),
    help="A permission of the key (repeatable).",
)
@settings_options
def api_key_create(name: str, permissions: tuple[str, ...], settings: Settings) -> None:
    """Create a key; print it, alone, on standard output.

    The key is shown only this once: only its hash is stored."""
    from usage_ingest.api.security import issue_key
    from usage_ingest.store.store import store_session

    async def go() -> Any:
        async with store_session(settings) as store:
            return await issue_key(store, name, permissions)

    new = run_async(go())
    click.echo(new.key)
    click.echo(
        f"created API key {new.key_id} ({name}) with {', '.join(sorted(set(permissions)))}; "
        "keep the key now: it cannot be shown again",
        err=True,
    )


@api_key.command("list")
@settings_options
def api_key_list(settings: Settings) -> None:
    """List the keys (never the key itself)."""
    from usage_ingest.store.store import store_session

    async def go() -> Any:
        async with store_session(settings) as store:
            return await store.list_api_keys()

    rows = [("KEY ID", "NAME", "PERMISSIONS", "CREATED", "REVOKED")]
    for key in run_async(go()):
        revoked = key.revoked_at.isoformat(timespec="seconds") if key.revoked_at else "-"
        created = key.created_at.isoformat(timespec="seconds")
        rows.append((key.key_id, key.name, ",".join(key.permissions), created, revoked))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        click.echo("  ".join(cells).rstrip())


@api_key.command("revoke")
@click.argument("key_id")
@settings_options
def api_key_revoke(key_id: str, settings: Settings) -> None:
    """Revoke the key KEY_ID, from the next request on.

    KEY_ID as `api-key list` shows it; the key itself works too."""
    from usage_ingest.api.keys import KEY_ID_PATTERN, key_id_of
    from usage_ingest.store.store import store_session

    wanted = key_id if KEY_ID_PATTERN.match(key_id) else key_id_of(key_id)
    if wanted is None:
        fail(
            f"{key_id!r} is not a key id (12 hex digits, as `api-key list` shows)",
            code=ExitCode.USAGE,
        )

    async def go() -> Any:
        async with store_session(settings) as store:
            return await store.revoke_api_key(str(wanted))

    revoked = run_async(go())
    if revoked is None:
        fail(f"no API key {wanted}")
    click.echo(f"revoked API key {revoked.key_id} ({revoked.name})")
