"""The dead-letter format of SPEC.md §8: the refused record itself, unchanged, with
headers saying why and where it failed; what those headers say when the replay reads
them back; and the record the replay publishes again.

Pure: records in, records out. The worker writes dead letters (`dead_letter_record`),
the replay reads them (`DeadLetter.read`) and re-publishes them (`replayed_record`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from usage_ingest.domain.messages import OutcomeError
from usage_ingest.domain.records import InputRecord, OutputRecord
from usage_ingest.domain.validation import parse_json_object, readable_reference
from usage_ingest.errors import ErrorCode
from usage_ingest.times import format_utc_millis, parse_operator_instant

# Dead-letter headers (SPEC.md §8). A header from an earlier failure is replaced.
H_CODE = "usage-ingest.error.code"
H_MESSAGE = "usage-ingest.error.message"
H_RETRYABLE = "usage-ingest.error.retryable"
H_TOPIC = "usage-ingest.source.topic"
H_PARTITION = "usage-ingest.source.partition"
H_OFFSET = "usage-ingest.source.offset"
H_FAILED_AT = "usage-ingest.failed-at"
H_REPLAY_COUNT = "usage-ingest.replay-count"
DEAD_LETTER_HEADERS = frozenset(
    {H_CODE, H_MESSAGE, H_RETRYABLE, H_TOPIC, H_PARTITION, H_OFFSET, H_FAILED_AT, H_REPLAY_COUNT}
)
_MAX_HEADER_MESSAGE = 1000

H_REPLAYED_AT = "usage-ingest.replayed-at"
"""When the record was last replayed (RFC 3339, UTC); replaced on every replay."""

# Headers a replayed record does not carry: the failure headers of §8 (the worker
# writes new ones if it fails again) and the replay headers, which are re-added once.
_DROPPED_ON_REPLAY = DEAD_LETTER_HEADERS | {H_REPLAYED_AT}


def replay_count(headers: Iterable[tuple[str, bytes]]) -> int:
    """The replay count a record carries; 0 for a first failure (§8)."""
    for key, value in headers:
        if key == H_REPLAY_COUNT:
            try:
                return max(int(value.decode()), 0)
            except (UnicodeDecodeError, ValueError):
                return 0
    return 0


# --- writing one dead letter -------------------------------------------------------


def dead_letter_record(
    record: InputRecord, errors: Sequence[OutcomeError], topic: str, failed_at: str
) -> OutputRecord:
    """The refused record itself, unchanged, with the headers of §8."""
    kept = tuple((k, v) for k, v in record.headers if k not in DEAD_LETTER_HEADERS)
    message = "; ".join(f"{e.field}: {e.message}" if e.field else e.message for e in errors)
    ours = (
        (H_CODE, errors[0].code.value),
        (H_MESSAGE, message[:_MAX_HEADER_MESSAGE]),
        (H_RETRYABLE, "true" if all(e.code.retryable for e in errors) else "false"),
        (H_TOPIC, record.topic),
        (H_PARTITION, str(record.partition)),
        (H_OFFSET, str(record.offset)),
        (H_FAILED_AT, failed_at),
        (H_REPLAY_COUNT, str(replay_count(record.headers))),
    )
    headers = kept + tuple((k, v.encode()) for k, v in ours)
    return OutputRecord(topic, record.key, record.value, headers)


# --- reading one dead letter -----------------------------------------------------


def _header(headers: Iterable[tuple[str, bytes]], name: str) -> str | None:
    """The first value of header `name` as text, or None when absent or not UTF-8."""
    for key, value in headers:
        if key == name:
            try:
                return value.decode("utf-8")
            except UnicodeDecodeError:
                return None
    return None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A dead-letter record and what its §8 headers and value say."""

    record: InputRecord
    code: str | None
    retryable: bool
    replay_count: int
    failed_at: datetime | None
    reference: str | None

    @classmethod
    def read(cls, record: InputRecord) -> DeadLetter:
        headers = record.headers
        code = _header(headers, H_CODE) or None
        return cls(
            record=record,
            code=code,
            retryable=_retryable(_header(headers, H_RETRYABLE), code),
            replay_count=replay_count(headers),
            failed_at=_instant_or_none(_header(headers, H_FAILED_AT)),
            reference=reference_of(record),
        )

    @property
    def timestamp(self) -> datetime | None:
        """The record's own timestamp (when it was written to the dead-letter topic)."""
        if self.record.timestamp_ms < 0:
            return None
        return datetime.fromtimestamp(self.record.timestamp_ms / 1000, UTC)

    @property
    def label(self) -> str:
        """How an operator recognises the record: its reference, else where it is."""
        return self.reference or f"{self.record.partition}:{self.record.offset}"


def _retryable(header: str | None, code: str | None) -> bool:
    """The `error.retryable` header; when it is missing or unreadable, what the
    code says (SPEC.md §5); an unknown code is not retryable."""
    if header in ("true", "false"):
        return header == "true"
    try:
        return code is not None and ErrorCode(code).retryable
    except ValueError:
        return False


def _instant_or_none(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        return parse_operator_instant(text)
    except ValueError:
        return None


def reference_of(record: InputRecord) -> str | None:
    """The externalReference, read from the value as the worker reads it,
    falling back to the key (UTF-8) when the value has none."""
    obj, _, _ = parse_json_object(record.value)
    reference = readable_reference(obj)
    if reference is not None:
        return reference
    if record.key:
        try:
            return record.key.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return None


# --- publishing it again -------------------------------------------------------------


def replayed_record(letter: DeadLetter, destination: str, replayed_at: datetime) -> OutputRecord:
    """The record to publish: the original key, value and headers, with the §8
    failure headers taken off, `replay-count` incremented and `replayed-at` set.

    Each of the two replay headers appears exactly once, at the end; every other
    header keeps its place and repeats.
    """
    record = letter.record
    kept = tuple((k, v) for k, v in record.headers if k not in _DROPPED_ON_REPLAY)
    ours = (
        (H_REPLAY_COUNT, str(letter.replay_count + 1).encode()),
        (H_REPLAYED_AT, format_utc_millis(replayed_at).encode()),
    )
    return OutputRecord(destination, record.key, record.value, kept + ours)
