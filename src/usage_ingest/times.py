"""Instants: every date-time this service reads or writes, and the clock.

Reading:

* `parse_date_time`, `parse_date_time_with_text`: an event's date-time (SPEC.md §3: ISO
  8601, no offset meaning UTC, offsets range-checked), the second with its canonical text;
* `parse_operator_instant`: an operator's `--since` / `--until`, or a dead letter's
  `failed-at` header: whatever ISO 8601 `datetime.fromisoformat` reads, a bare date too.

Writing, in two text forms, both RFC 3339 in UTC:

* `format_utc_micros`: microseconds, for stored and canonical instants (the canonical
  payload, the database's columns, the API);
* `format_utc_millis`: milliseconds, for `processedAt` (SPEC.md §5's example) and the
  dead-letter and replay headers (`failed-at`, `replayed-at`), which operators read.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

# RFC 3339 / ISO 8601 date-time: a date, a time, optional fraction and offset.
_DATE_TIME = re.compile(
    r"^\d{4}-?\d{2}-?\d{2}[Tt ]\d{2}(:?\d{2}(:?\d{2}([.,]\d+)?)?)?"
    r"([Zz]|[+-](?P<offset_hours>\d{2})(:?(?P<offset_minutes>\d{2}))?)?$"
)
_MAX_OFFSET_HOURS, _MAX_OFFSET_MINUTES = 23, 59
# The spelling nearly every producer uses, offset in range: no more checks needed.
_COMMON_DATE_TIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?"
    r"(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])"
)


def parse_date_time(value: object) -> datetime:
    """ISO 8601 text to an aware UTC datetime; no offset means UTC (SPEC.md §3)."""
    if not isinstance(value, str):  # pydantic reports ValueError, not TypeError
        raise ValueError("must be an ISO 8601 date-time, e.g. 2026-11-22T10:00:00Z")  # noqa: TRY004
    if not _COMMON_DATE_TIME.fullmatch(value):
        _check_spelling(value)
        value = value.upper()  # RFC 3339 allows "t" and "z"
    return _utc(value)


def parse_date_time_with_text(value: str) -> tuple[datetime, str]:
    """`parse_date_time` and `format_utc_micros` of it at once. The spelling nearly every
    producer uses in UTC ("2026-11-22T10:00:00Z", a fraction of up to six digits) is
    already the canonical text but for the fraction's padding: no formatting needed."""
    if _COMMON_DATE_TIME.fullmatch(value):
        instant = _utc(value)
        if value[-1] == "Z":
            if len(value) == _SECONDS_Z:
                return instant, value[:-1] + ".000000Z"
            return instant, value[:-1].ljust(_MICROSECONDS_Z - 1, "0") + "Z"
        return instant, format_utc_micros(instant)
    instant = parse_date_time(value)
    return instant, format_utc_micros(instant)


# Lengths of "2026-11-22T10:00:00Z" and "2026-11-22T10:00:00.000000Z".
_SECONDS_Z, _MICROSECONDS_Z = 20, 27


def _utc(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is UTC:  # "Z": nothing to convert
            return parsed
        if parsed.tzinfo is None:
            return parsed.replace(tzinfo=UTC)
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        raise ValueError("is not a valid date-time") from None


def _check_spelling(value: str) -> None:
    match = _DATE_TIME.match(value)
    if match is None:
        raise ValueError("must be an ISO 8601 date-time, e.g. 2026-11-22T10:00:00Z")
    # datetime.fromisoformat does not range-check an offset: it reads +10:60 as +11:00,
    # a different instant.
    if int(match["offset_hours"] or 0) > _MAX_OFFSET_HOURS or (
        int(match["offset_minutes"] or 0) > _MAX_OFFSET_MINUTES
    ):
        raise ValueError("has an impossible UTC offset: hours 00-23, minutes 00-59")


def format_utc_micros(value: datetime) -> str:
    """The text form of stored and canonical instants: RFC 3339, UTC, microseconds.

    (Not strftime: its %Y does not pad years before 1000 to four digits. Not isoformat:
    the same text at twice the cost.)"""
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return _UTC_FORMAT % (
        value.year,
        value.month,
        value.day,
        value.hour,
        value.minute,
        value.second,
        value.microsecond,
    )


_UTC_FORMAT = "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ"


def format_utc_millis(moment: datetime) -> str:
    """RFC 3339 in UTC with milliseconds, as in SPEC.md §5's example (`processedAt`) and
    the `usage-ingest.failed-at` header."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_operator_instant(text: str) -> datetime:
    """An RFC 3339 / ISO 8601 date-time; without an offset it is UTC (as in SPEC.md §3).

    A bare date means its midnight UTC. Raises ValueError for anything else.
    """
    value = text.strip()
    if not value:
        raise ValueError("empty date-time")
    if value[-1] in "zZ":
        value = value[:-1] + "+00:00"
    moment = datetime.fromisoformat(value)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def utc_now() -> datetime:
    """The clock the worker and the replay read (tests give them their own)."""
    return datetime.now(UTC)
