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
from typing import Any, NoReturn, TypeVar

import click
from pydantic import ValidationError

from usage_ingest.api.keys import Permission
from usage_ingest.errors import ExitCode, ReferenceDataError, UsageIngestError
from usage_ingest.logs import configure_logging
from usage_ingest.settings import ENV_PREFIX, Settings, default_text, value_kind

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
    return _with_settings(command, frozenset())


def settings_options_but(*names: str) -> Callable[[F], F]:
    """`settings_options` without the flags of `names`, which mean nothing to the command."""
    return lambda command: _with_settings(command, frozenset(names))


def _with_settings(command: F, without: frozenset[str]) -> F:

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
            _fail(_setting_error_line(exc), code=ExitCode.USAGE)
        configure_logging(settings.log_level, settings.log_format)
        try:
            return command(*args, settings=settings, **kwargs)
        except UsageIngestError as exc:
            _fail(str(exc), code=exc.exit_code)

    for name, info in reversed(Settings.model_fields.items()):
        if name in without:
            continue
        env = ENV_PREFIX + name.upper()
        default = default_text(name)
        # The value is left as text for the settings model to check (its one line names
        # the variable and the flag); the help shows what it must be and its default.
        wrapper = click.option(
            _flag(name),
            name,
            default=None,
            metavar=value_kind(name),
            show_envvar=False,
            help=f"{info.description or ''} [env {env}"
            + (f"; default: {default}]" if default is not None else "]"),
        )(wrapper)
    return wrapper  # type: ignore[return-value]


def _fail(message: str, code: ExitCode = ExitCode.FAILED) -> NoReturn:
    click.echo(f"usage-ingest: {message}", err=True)
    sys.exit(code)


def run_async(main: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine; the project's errors become one line and their exit code."""
    try:
        return asyncio.run(main)
    except UsageIngestError as exc:
        _fail(str(exc), code=exc.exit_code)
    except Exception as exc:  # noqa: BLE001 - logged with its traceback where it happened
        _fail(f"stopped by an unexpected error: {type(exc).__name__}: {exc}")


def with_stop_signals(main: Callable[[asyncio.Event], Coroutine[Any, Any, Any]]) -> Any:
    """Run `main(stop)`; SIGTERM and SIGINT set `stop` (a second one exits at once)."""

    async def runner() -> Any:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal() -> None:
            if stop.is_set():
                _fail("second signal: exiting without waiting", code=ExitCode.INTERRUPTED)
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
        return await main(stop)

    return run_async(runner())


class _Commands(click.Group):
    """Ends every command the same way: a wrong command line is one `usage-ingest:` line
    and exit 2 (not click's usage block), Ctrl-C exit 130 (not click's "Aborted!", 1)."""

    def main(self, *args: Any, **kwargs: Any) -> NoReturn:
        kwargs["standalone_mode"] = False
        try:
            code = super().main(*args, **kwargs)
        except click.UsageError as exc:
            command = exc.ctx.command_path.partition(" ")[2] if exc.ctx is not None else ""
            where = f"{command}: " if command else ""
            _fail(f"{where}{exc.format_message()} (see --help)", code=ExitCode.USAGE)
        except click.ClickException as exc:
            _fail(exc.format_message(), code=ExitCode.FAILED)
        except click.Abort:
            _fail("interrupted", code=ExitCode.INTERRUPTED)
        sys.exit(code if isinstance(code, int) else ExitCode.OK)


@click.group(
    cls=_Commands,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
def main() -> None:
    """usage-ingest: usage events from Kafka to Postgres, each with an outcome."""


@main.command()
@settings_options
def migrate(settings: Settings) -> None:
    """Apply the sql/ migrations (idempotent)."""
    from usage_ingest.store import open_store

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
    from usage_ingest.domain.reference import read_reference_file
    from usage_ingest.store import open_store

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
@click.option(
    "--processes",
    type=click.IntRange(1, 256),
    default=1,
    show_default=True,
    help="Worker processes in the one consumer group, supervised: a crashed one is restarted, "
    "SIGTERM drains all. Process i serves metrics on --metrics-port + i.",
)
@settings_options
def run(processes: int, settings: Settings) -> None:
    """Run the worker until SIGTERM or SIGINT."""
    from usage_ingest.worker.runtime import run_worker

    settings.require_database_url()
    if processes > 1:
        from usage_ingest.worker.supervisor import supervise

        sys.exit(supervise(settings, processes))
    with_stop_signals(lambda stop: run_worker(settings, stop))


@main.command()
@click.option("--host", default=None, help="Address to listen on (same as --api-host).")
@click.option(
    "--port", type=click.IntRange(1, 65535), default=None, help="Port (same as --api-port)."
)
@settings_options
def api(host: str | None, port: int | None, settings: Settings) -> None:
    """Serve the HTTP API (SPEC-API.md) until SIGTERM or SIGINT."""
    from usage_ingest.api import serve

    settings.require_database_url()
    given = {"api_host": host, "api_port": port}
    settings = settings.model_copy(update={k: v for k, v in given.items() if v is not None})
    with_stop_signals(lambda stop: serve(settings, stop))


@main.group("api-key")
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
    from usage_ingest.api.keys import generate
    from usage_ingest.store import open_store

    async def go() -> Any:
        store = await open_store(settings)
        try:
            for _ in range(5):  # a taken key id (12 hex digits) is drawn again
                new = generate()
                if await store.create_api_key(
                    new.key_id, name, new.key_hash, sorted(set(permissions))
                ):
                    return new
            raise UsageIngestError("could not draw an unused key id")
        finally:
            await store.close()

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
    from usage_ingest.store import open_store

    async def go() -> Any:
        store = await open_store(settings)
        try:
            return await store.list_api_keys()
        finally:
            await store.close()

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
    from usage_ingest.store import open_store

    wanted = key_id if KEY_ID_PATTERN.match(key_id) else key_id_of(key_id)
    if wanted is None:
        _fail(
            f"{key_id!r} is not a key id (12 hex digits, as `api-key list` shows)",
            code=ExitCode.USAGE,
        )

    async def go() -> Any:
        store = await open_store(settings)
        try:
            return await store.revoke_api_key(str(wanted))
        finally:
            await store.close()

    revoked = run_async(go())
    if revoked is None:
        _fail(f"no API key {wanted}")
    click.echo(f"revoked API key {revoked.key_id} ({revoked.name})")


@main.command()
@click.option("--kafka-port", type=int, default=None, help="Port of the embedded broker.")
@click.option("--postgres-port", type=int, default=None, help="Port of the embedded Postgres.")
@settings_options_but("kafka_bootstrap_servers", "database_url")
def dev(kafka_port: int | None, postgres_port: int | None, settings: Settings) -> None:
    """Start an embedded broker and Postgres, set them up with demo data, run the worker."""
    from usage_ingest.dev.run import run_dev

    run_dev(settings, kafka_port=kafka_port, postgres_port=postgres_port)


@main.command()
@click.option("--key", default=None, help="Record key (default: the event's externalReference).")
@settings_options
def produce(key: str | None, settings: Settings) -> None:
    """Publish the JSON events read from standard input (one per line) to the input topic."""
    from usage_ingest.dev.run import produce_lines

    count = run_async(produce_lines(settings, sys.stdin, key))
    click.echo(f"produced {count} event(s) to {settings.topic_events}", err=True)


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


@main.command()
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
    letters").
    """
    from rich.console import Console

    from usage_ingest.replay.run import ReplayPlan, run_replay
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
    plan = ReplayPlan(
        destination=destination or settings.topic_events,
        selection=selection,
        limit=limit,
        dry_run=dry_run,
        batch_size=min(settings.batch_max_records, 500),
        show=show,
        retry_initial_backoff_s=settings.retry_initial_backoff_s,
        retry_max_backoff_s=settings.retry_max_backoff_s,
    )
    with ReplayProgress(Console(stderr=True)) as progress:
        summary = with_stop_signals(
            lambda stop: run_replay(
                settings,
                source=source or settings.topic_dlq,
                group_id=replay_group_id or f"{settings.group_id}.replay",
                plan=plan,
                partitions=partitions,
                from_beginning=from_beginning,
                offset=offset,
                stop=stop,
                on_start=progress.start,
                progress=progress.update,
                on_finish=progress.finish,
            )
        )
    out = Console(highlight=False)
    if as_json:
        print_json(summary, out)
    else:
        print_summary(summary, out)
    if summary.interrupted:
        sys.exit(ExitCode.INTERRUPTED)


@main.command()
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
@settings_options
def lag(
    group: str | None,
    topics: tuple[str, ...],
    as_json: bool,
    max_lag: int | None,
    max_time_lag: float | None,
    watch: float | None,
    settings: Settings,
) -> None:
    """Consumer lag of a group: offsets and time behind, per partition, with the group's state.

    Works whether or not a worker is running. With --max-lag or --max-time-lag it exits 1
    when a threshold is exceeded, for cron jobs and alerting.
    """
    from usage_ingest.cli.lag import show_lag

    exceeded = run_async(
        show_lag(
            settings,
            group or settings.group_id,
            list(topics) or [settings.topic_events],
            as_json=as_json,
            max_lag=max_lag,
            max_time_lag=max_time_lag,
            watch=watch,
        )
    )
    if exceeded:
        sys.exit(ExitCode.FAILED)


@main.command()
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


@main.command("settings")
def settings_command() -> None:
    """Print every setting (variable, flag, default, meaning) as a Markdown table.

    README's configuration table is this output; a test fails when they differ."""
    from usage_ingest.settings import settings_reference

    click.echo(settings_reference(), nl=False)
