"""Structured logs: JSON lines when not on a terminal, readable console when on one.

Every line carries a stable event name (the first argument of a log call).
Record-level lines bind topic, partition, offset and externalReference;
payload contents are never logged at info level or above.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog

from usage_ingest.settings import LogFormat

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def configure_logging(level: str, log_format: LogFormat, stream: TextIO | None = None) -> None:
    out = stream or sys.stderr
    as_json = log_format is LogFormat.JSON or (log_format is LogFormat.AUTO and not out.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer()
    )
    # What every line gets, the project's own and the client libraries' alike.
    stamped: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*stamped, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=True,
    )
    # Client libraries (aiokafka, asyncpg, uvicorn) log through the standard library:
    # keep their warnings, one line each, on the same stream and through the same
    # processors, so that they carry a timestamp and, where there is one, the
    # traceback. Their messages quote addresses and errors: the JSON renderer keeps
    # every line one valid JSON object.
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*stamped, _library_line],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)


def _library_line(
    _logger: structlog.typing.WrappedLogger,
    _method_name: str,
    event_dict: structlog.typing.EventDict,
) -> structlog.typing.EventDict:
    """A standard-library record under one stable event name: its logger, its text."""
    record: logging.LogRecord = event_dict["_record"]
    message = event_dict.pop("event")
    return {"event": "library_log", "logger": record.name, "message": message, **event_dict}
