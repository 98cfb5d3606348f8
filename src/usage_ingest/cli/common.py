"""What every command shares: the settings flags and how a command line ends.

Every setting is an environment variable `USAGE_INGEST_<NAME>` and a flag
`--<name>`; the flags are generated from the settings model so the two never
drift. A bad setting or a failed dependency ends the command with one line on
standard error, never a traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click
from pydantic import ValidationError

from usage_ingest.errors import ExitCode, UsageIngestError
from usage_ingest.logs import configure_logging
from usage_ingest.process import fail
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
            fail(_setting_error_line(exc), code=ExitCode.USAGE)
        configure_logging(settings.log_level, settings.log_format)
        try:
            return command(*args, settings=settings, **kwargs)
        except UsageIngestError as exc:
            fail(str(exc), code=exc.exit_code)

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


class Commands(click.Group):
    """Ends every command the same way: a wrong command line is one `usage-ingest:` line
    and exit 2 (not click's usage block), Ctrl-C exit 130 (not click's "Aborted!", 1)."""

    def main(self, *args: Any, **kwargs: Any) -> NoReturn:
        kwargs["standalone_mode"] = False
        try:
            code = super().main(*args, **kwargs)
        except click.UsageError as exc:
            command = exc.ctx.command_path.partition(" ")[2] if exc.ctx is not None else ""
            where = f"{command}: " if command else ""
            fail(f"{where}{exc.format_message()} (see --help)", code=ExitCode.USAGE)
        except click.ClickException as exc:
            fail(exc.format_message(), code=ExitCode.FAILED)
        except click.Abort:
            fail("interrupted", code=ExitCode.INTERRUPTED)
        sys.exit(code if isinstance(code, int) else ExitCode.OK)
