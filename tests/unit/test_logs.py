"""Log lines: the client libraries' standard-library records come out in the project's shape."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import datetime

import pytest
import structlog

from usage_ingest.logs import configure_logging
from usage_ingest.settings import LogFormat


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """Logging configured for JSON onto a buffer; the previous configuration comes back."""
    root = logging.getLogger()
    handlers, level, structlog_config = root.handlers[:], root.level, structlog.get_config()
    out = io.StringIO()
    try:
        configure_logging("info", LogFormat.JSON, out)
        yield out
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        structlog.configure(**structlog_config)


def lose_the_connection() -> None:
    raise ConnectionResetError("peer went away")


def test_a_library_line_with_an_exception_carries_its_timestamp_and_traceback(
    json_lines: io.StringIO,
) -> None:
    try:
        lose_the_connection()
    except ConnectionResetError:
        logging.getLogger("asyncpg.pool").warning("connection %s lost", 7, exc_info=True)
    [line] = json_lines.getvalue().splitlines()
    logged = json.loads(line)
    assert datetime.fromisoformat(logged.pop("timestamp")).utcoffset() is not None
    exception = logged.pop("exception")
    assert exception.startswith("Traceback (most recent call last):")
    assert exception.rstrip().endswith("ConnectionResetError: peer went away")
    assert logged == {
        "event": "library_log",
        "logger": "asyncpg.pool",
        "level": "warning",
        "message": "connection 7 lost",
    }


def test_library_lines_below_warning_are_dropped(json_lines: io.StringIO) -> None:
    logging.getLogger("aiokafka").info("joined group")
    assert json_lines.getvalue() == ""


def test_a_project_line_keeps_its_shape(json_lines: io.StringIO) -> None:
    structlog.get_logger().info("worker_started", partitions=3)
    [line] = json_lines.getvalue().splitlines()
    logged = json.loads(line)
    assert datetime.fromisoformat(logged.pop("timestamp")).utcoffset() is not None
    assert logged == {"event": "worker_started", "partitions": 3, "level": "info"}
