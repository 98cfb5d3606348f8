"""The `usage-ingest` command line (SPEC.md §9).

Every setting is an environment variable `USAGE_INGEST_<NAME>` and a flag
`--<name>`; the flags are generated from the settings model so the two never
drift. A bad setting or a failed dependency ends the command with one line on
standard error, never a traceback.
"""

from __future__ import annotations

import asyncio
import functools
import json
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click
from pydantic import ValidationError

from usage_ingest.errors import ReferenceDataError, UsageIngestError
from usage_ingest.logs import configure_logging
from usage_ingest.settings import ENV_PREFIX, Settings

F = TypeVar("F", bound=Callable[..., Any])


def _flag(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def _setting_error_line(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False):
        message = error["msg"].removeprefix("Value error, ")
        if not error["loc"]:  # a rule between several settings names them itself
            parts.append(message)
            continue
        name = str(error["loc"][0])
        parts.append(f"{ENV_PREFIX}{name.upper()} ({_flag(name)}): {message}")
    return "invalid setting: " + "; ".join(parts)


def settings_options(command: F) -> F:
    """Add a flag for every setting; the command receives `settings: Settings`."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        overrides = {
            name: kwargs.pop(name) for name in Settings.model_fields if kwargs.get(name) is not None
        }
        for name in Settings.model_fields:
            kwargs.pop(name, None)
        try:
            settings = Settings(**overrides)
        except ValidationError as exc:
            _fail(_setting_error_line(exc), code=2)
        configure_logging(settings.log_level, settings.log_format)
        try:
            return command(*args, settings=settings, **kwargs)
        except UsageIngestError as exc:
            _fail(str(exc))

    for name, info in reversed(Settings.model_fields.items()):
        env = ENV_PREFIX + name.upper()
        wrapper = click.option(
            _flag(name),
            name,
            default=None,
            show_envvar=False,
            help=f"{info.description or ''} [env {env}]",
        )(wrapper)
    return wrapper  # type: ignore[return-value]


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"usage-ingest: {message}", err=True)
    sys.exit(code)


def run_async(main: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine; the project's errors become one line and exit code 1."""
    try:
        return asyncio.run(main)
    except UsageIngestError as exc:
        _fail(str(exc))
    except Exception as exc:  # noqa: BLE001 - logged with its traceback where it happened
        _fail(f"stopped by an unexpected error: {type(exc).__name__}: {exc}")


def with_stop_signals(main: Callable[[asyncio.Event], Coroutine[Any, Any, Any]]) -> Any:
    """Run `main(stop)`; SIGTERM and SIGINT set `stop` (a second one exits at once)."""

    async def runner() -> Any:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal() -> None:
            if stop.is_set():
                _fail("second signal: exiting without waiting", code=130)
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
        return await main(stop)

    return run_async(runner())


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def main() -> None:
    """usage-ingest: usage events from Kafka to Postgres, each with an outcome."""


@main.command()
@settings_options
def migrate(settings: Settings) -> None:
    """Apply the sql/ migrations (idempotent)."""
    from usage_ingest.bootstrap import open_store

    async def go() -> list[str]:
        store = await open_store(settings)
        try:
            return await store.migrate()
        finally:
            await store.close()

    applied = run_async(go())
    click.echo(
        f"applied {len(applied)} migration(s)" + (f": {', '.join(applied)}" if applied else "")
    )


@main.group()
def reference() -> None:
    """Reference data: operating sites, product items, contracts, inventories."""


@reference.command("load")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@settings_options
def reference_load(file: Path, settings: Settings) -> None:
    """Upsert reference data from a JSON FILE, all or nothing (idempotent)."""
    from usage_ingest.bootstrap import open_store
    from usage_ingest.reference_data import read_reference_file

    try:
        data = read_reference_file(file)
    except ReferenceDataError as exc:
        _fail(str(exc))

    async def go() -> Any:
        store = await open_store(settings)
        try:
            return await store.load_reference(data)
        finally:
            await store.close()

    counts = run_async(go())
    click.echo(json.dumps({"inserted": counts.inserted, "updated": counts.updated}, sort_keys=True))


@main.command()
@settings_options
def run(settings: Settings) -> None:
    """Run the worker until SIGTERM or SIGINT."""
    from usage_ingest.bootstrap import run_worker

    settings.require_database_url()
    with_stop_signals(lambda stop: run_worker(settings, stop))


@main.command()
@click.option("--kafka-port", type=int, default=None, help="Port of the embedded broker.")
@click.option("--postgres-port", type=int, default=None, help="Port of the embedded Postgres.")
@settings_options
def dev(kafka_port: int | None, postgres_port: int | None, settings: Settings) -> None:
    """Start an embedded broker and Postgres, set them up with demo data, run the worker."""
    from usage_ingest.dev import run_dev

    run_dev(settings, kafka_port=kafka_port, postgres_port=postgres_port)


@main.command()
@click.option("--key", default=None, help="Record key (default: the event's externalReference).")
@settings_options
def produce(key: str | None, settings: Settings) -> None:
    """Publish the JSON events read from standard input (one per line) to the input topic."""
    from usage_ingest.dev import produce_lines

    count = run_async(produce_lines(settings, sys.stdin, key))
    click.echo(f"produced {count} event(s) to {settings.topic_events}", err=True)


@main.command()
@click.option(
    "--directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("schemas"),
    show_default=True,
)
def schemas(directory: Path) -> None:
    """Write the JSON Schemas of every message read or written."""
    from usage_ingest.schemas import write_all

    for path in write_all(directory):
        click.echo(str(path))


if __name__ == "__main__":  # pragma: no cover
    main()
