"""Structured logs: JSON lines when not on a terminal, readable console when on one.

Every line carries a stable event name (the first argument of a log call).
Record-level lines bind topic, partition, offset and externalReference;
payload contents are never logged at info level or above.
"""

from __future__ import annotations

import json
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
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=True,
    )
    # Client libraries (aiokafka, asyncpg) log through the standard library: keep
    # their warnings, in one line each, on the same stream.
    logging.basicConfig(
        level=logging.WARNING,
        stream=out,
        format="%(levelname)s %(name)s: %(message)s",
        force=True,
    )
    if as_json:
        # Their messages quote addresses and errors: written through json.dumps, so
        # every line stays one valid JSON object.
        for handler in logging.getLogger().handlers:
            handler.setFormatter(_LibraryJson())


class _LibraryJson(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "event": "library_log",
            "logger": record.name,
            "level": record.levelname,
            "message": record.getMessage(),
        }
        return json.dumps(line)
