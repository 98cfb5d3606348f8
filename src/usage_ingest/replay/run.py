"""Dead-letter replay: which dead letters go back, what they look like, and the
loop that sends them (`usage-ingest replay`, SPEC.md §8).

The decisions are pure functions over records (`DeadLetter.read`,
`Selection.skip_reason`, `replayed_record`); the loop (`replay`) joins them
with a reader and a producer behind small ports, so it is unit-tested with
fakes. Its commit protocol mirrors the worker's (SPEC.md §6):

1. a batch of dead letters is read and every record gets its verdict;
2. the chosen ones are published to the destination and every one is
   acknowledged by the broker;
3. only then are the offsets of *every scanned record* committed for the
   replay group, chosen or not, so the next run starts after them.

A crash before step 3 re-sends the uncommitted batch at most; idempotent
storage turns the repeats into `duplicate` outcomes and no new rows. A dry run
reads and decides, and neither publishes nor commits.
"""

from __future__ import annotations

import asyncio
import functools
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar

import structlog

from usage_ingest.domain.records import InputRecord, OutputRecord
from usage_ingest.domain.validation import parse_json_object, readable_reference
from usage_ingest.errors import DependencyUnavailable, ErrorCode, UsageIngestError
from usage_ingest.kafka.producer import OutputProducer
from usage_ingest.kafka.replay_reader import ReplayReader
from usage_ingest.ports import ProducerPort, ReaderPort
from usage_ingest.settings import Settings
from usage_ingest.worker.pipeline import (
    DEAD_LETTER_HEADERS,
    H_CODE,
    H_FAILED_AT,
    H_REPLAY_COUNT,
    H_RETRYABLE,
    next_offsets,
    replay_count,
)

log = structlog.get_logger("usage_ingest.replay.run")
T = TypeVar("T")

H_REPLAYED_AT = "usage-ingest.replayed-at"
"""When the record was last replayed (RFC 3339, UTC); replaced on every replay."""

DEFAULT_MAX_REPLAYS = 5
DEFAULT_SHOW = 20
_FETCH_WAIT_MS = 200
_ATTEMPTS = 8

# Headers a replayed record does not carry: the failure headers of §8 (the worker
# writes new ones if it fails again) and the replay headers, which are re-added once.
_DROPPED_ON_REPLAY = DEAD_LETTER_HEADERS | {H_REPLAYED_AT}


class ReplayFailed(UsageIngestError):
    """The replay stopped before it was done; what was committed stays committed."""


# --- reading one dead letter -----------------------------------------------------


def parse_instant(text: str) -> datetime:
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


def format_instant(moment: datetime) -> str:
    """RFC 3339 in UTC with milliseconds, like `usage-ingest.failed-at`."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


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
        return parse_instant(text)
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


# --- choosing ----------------------------------------------------------------------


class TimeField(StrEnum):
    """What `--since` / `--until` compare."""

    FAILED_AT = "failed-at"  # the usage-ingest.failed-at header (the record time without it)
    RECORD = "record"  # the dead-letter record's timestamp


class SkipReason(StrEnum):
    """Why a scanned dead letter was not replayed. The values are in the summary."""

    CODE = "code"  # not among --code
    NOT_RETRYABLE = "not-retryable"  # --retryable-only (the default)
    REFERENCE = "external-reference"  # not among --external-reference
    TIME_WINDOW = "time-window"  # outside --since / --until
    MAX_REPLAYS = "max-replays"  # replayed --max-replays times already


@dataclass(frozen=True, slots=True)
class Selection:
    """Which dead letters are replayed. Empty `codes` / `references` select all."""

    codes: frozenset[str] = frozenset()
    retryable_only: bool = True
    references: frozenset[str] = frozenset()
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive
    time_field: TimeField = TimeField.FAILED_AT
    max_replays: int = DEFAULT_MAX_REPLAYS

    def problems(self) -> list[str]:
        """What makes this selection contradictory (empty when it is fine)."""
        found = []
        unknown = sorted(c for c in self.codes if c not in ErrorCode.__members__)
        if unknown:
            found.append(
                f"unknown error code(s) {', '.join(unknown)}: "
                f"the codes are {', '.join(ErrorCode.__members__)}"
            )
        final = sorted(
            c for c in self.codes if c in ErrorCode.__members__ and not ErrorCode(c).retryable
        )
        if final and self.retryable_only:
            found.append(
                f"{', '.join(final)} {'is' if len(final) == 1 else 'are'} not retryable: "
                "add --all to replay such records anyway"
            )
        if self.since and self.until and self.since >= self.until:
            found.append("--since must be before --until")
        if self.max_replays < 1:
            found.append("--max-replays must be at least 1")
        return found

    def skip_reason(self, letter: DeadLetter) -> SkipReason | None:
        """None when `letter` is replayed; otherwise the first rule that keeps it back.

        The filters come first; a record they select is *matched*, and is then
        still held back once it has been replayed `max_replays` times.
        """
        if self.codes and letter.code not in self.codes:
            return SkipReason.CODE
        if self.retryable_only and not letter.retryable:
            return SkipReason.NOT_RETRYABLE
        if self.references and letter.reference not in self.references:
            return SkipReason.REFERENCE
        if not self._in_window(letter):
            return SkipReason.TIME_WINDOW
        if letter.replay_count >= self.max_replays:
            return SkipReason.MAX_REPLAYS
        return None

    def _in_window(self, letter: DeadLetter) -> bool:
        if self.since is None and self.until is None:
            return True
        moment = letter.timestamp
        if self.time_field is TimeField.FAILED_AT and letter.failed_at is not None:
            moment = letter.failed_at
        if moment is None:
            return False
        if self.since is not None and moment < self.since:
            return False
        return self.until is None or moment < self.until


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
        (H_REPLAYED_AT, format_instant(replayed_at).encode()),
    )
    return OutputRecord(destination, record.key, record.value, kept + ours)


# --- the run ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    """One dead letter named in the summary."""

    reference: str | None
    code: str | None
    partition: int
    offset: int
    replay_count: int

    @classmethod
    def of(cls, letter: DeadLetter) -> Sample:
        return cls(
            letter.reference,
            letter.code,
            letter.record.partition,
            letter.record.offset,
            letter.replay_count,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "externalReference": self.reference,
            "code": self.code,
            "partition": self.partition,
            "offset": self.offset,
            "replayCount": self.replay_count,
        }


@dataclass(slots=True)
class ReplaySummary:
    """What one run did. `scanned == replayed + sum(skipped)` and
    `matched == replayed + skipped[max-replays]` always hold."""

    source: str
    destination: str
    group_id: str
    dry_run: bool
    total: int = 0  # offsets between start and end, known once the reader started
    scanned: int = 0
    matched: int = 0
    replayed: int = 0
    skipped: Counter[SkipReason] = field(default_factory=Counter)
    replayed_by_code: Counter[str] = field(default_factory=Counter)
    replayed_sample: list[Sample] = field(default_factory=list)
    max_replays_sample: list[Sample] = field(default_factory=list)
    limit_reached: bool = False
    interrupted: bool = False
    committed: dict[int, int] = field(default_factory=dict)  # partition -> next offset

    def to_json(self) -> dict[str, Any]:
        return {
            "dryRun": self.dry_run,
            "source": self.source,
            "destination": self.destination,
            "group": self.group_id,
            "scanned": self.scanned,
            "matched": self.matched,
            "replayed": self.replayed,
            "skipped": {reason.value: self.skipped[reason] for reason in SkipReason},
            "replayedByCode": dict(sorted(self.replayed_by_code.items())),
            "replayedRecords": [s.to_json() for s in self.replayed_sample],
            "maxReplaysReached": [s.to_json() for s in self.max_replays_sample],
            "limitReached": self.limit_reached,
            "interrupted": self.interrupted,
            "committed": {str(p): o for p, o in sorted(self.committed.items())},
        }


@dataclass(frozen=True, slots=True)
class ReplayPlan:
    """Everything a run needs to know besides its reader and producer."""

    destination: str
    selection: Selection = field(default_factory=Selection)
    limit: int | None = None
    dry_run: bool = False
    batch_size: int = 500
    show: int = DEFAULT_SHOW
    retry_initial_backoff_s: float = 0.2
    retry_max_backoff_s: float = 30.0


Progress = Callable[[ReplaySummary], None]


def _utc_now() -> datetime:
    return datetime.now(UTC)


async def replay(
    reader: ReaderPort,
    producer: ProducerPort | None,
    plan: ReplayPlan,
    summary: ReplaySummary,
    *,
    stop: asyncio.Event | None = None,
    progress: Progress | None = None,
    clock: Callable[[], datetime] = _utc_now,
) -> ReplaySummary:
    """Scan the reader to its end (or `plan.limit` replays, or `stop`), replaying
    what `plan.selection` picks; fills in and returns `summary`."""
    if producer is None and not plan.dry_run:
        raise ValueError("a replay that is not a dry run needs a producer")
    while True:
        if stop is not None and stop.is_set():
            summary.interrupted = True
            break
        if await _retrying("read positions", reader.done, plan, stop):
            break
        if plan.limit is not None and summary.replayed >= plan.limit:
            summary.limit_reached = True
            break
        records = await _retrying(
            "fetch", lambda: reader.fetch(plan.batch_size, _FETCH_WAIT_MS), plan, stop
        )
        if not records:
            continue
        now = clock()
        room = None if plan.limit is None else plan.limit - summary.replayed
        scanned, chosen, held = decide(records, plan.selection, room)
        summary.limit_reached = len(scanned) < len(records)
        if not plan.dry_run:
            assert producer is not None
            outgoing = [replayed_record(letter, plan.destination, now) for letter in chosen]
            await _publish(producer, outgoing, plan, stop)
            offsets = next_offsets(scanned)
            if offsets:  # never an empty commit: some clients read it as "all consumed"
                await _retrying("commit", functools.partial(reader.commit, offsets), plan, stop)
                summary.committed.update({partition: o for (_, partition), o in offsets.items()})
        _count(summary, chosen, held, plan.show)
        log.debug(
            "replay_batch_done", scanned=len(scanned), replayed=len(chosen), dry_run=plan.dry_run
        )
        if progress is not None:
            progress(summary)
        if summary.limit_reached:
            break
    return summary


def decide(
    records: Sequence[InputRecord], selection: Selection, room: int | None = None
) -> tuple[list[InputRecord], list[DeadLetter], list[tuple[DeadLetter, SkipReason]]]:
    """Each record's verdict, in order: the scanned records, the chosen dead letters
    and the held-back ones with their reasons. With `room` (what is left of
    `--limit`), scanning stops before the record after the last one that fits;
    the rest is neither scanned nor committed, so the next run starts there."""
    scanned: list[InputRecord] = []
    chosen: list[DeadLetter] = []
    held: list[tuple[DeadLetter, SkipReason]] = []
    for record in records:
        if room is not None and len(chosen) >= room:
            break
        scanned.append(record)
        letter = DeadLetter.read(record)
        reason = selection.skip_reason(letter)
        if reason is None:
            chosen.append(letter)
        else:
            held.append((letter, reason))
    return scanned, chosen, held


def _count(
    summary: ReplaySummary,
    chosen: Sequence[DeadLetter],
    held: Sequence[tuple[DeadLetter, SkipReason]],
    show: int,
) -> None:
    summary.scanned += len(chosen) + len(held)
    summary.replayed += len(chosen)
    summary.matched += len(chosen)
    for letter in chosen:
        summary.replayed_by_code[letter.code or "(none)"] += 1
        if len(summary.replayed_sample) < show:
            summary.replayed_sample.append(Sample.of(letter))
    for letter, reason in held:
        summary.skipped[reason] += 1
        if reason is SkipReason.MAX_REPLAYS:
            summary.matched += 1
            if len(summary.max_replays_sample) < show:
                summary.max_replays_sample.append(Sample.of(letter))


async def _publish(
    producer: ProducerPort,
    records: list[OutputRecord],
    plan: ReplayPlan,
    stop: asyncio.Event | None,
) -> None:
    """Publish and wait until every record is acknowledged, retrying only the
    unacknowledged ones; give up (committing nothing) after a few attempts."""
    pending = records
    delay = plan.retry_initial_backoff_s
    for attempt in range(1, _ATTEMPTS + 1):
        pending = await producer.publish(pending)
        if not pending:
            return
        if attempt == _ATTEMPTS or (stop is not None and stop.is_set()):
            break
        log.warning(
            "replay_publish_incomplete", unacknowledged=len(pending), retry_in_s=round(delay, 2)
        )
        await asyncio.sleep(delay)
        delay = min(delay * 2, plan.retry_max_backoff_s)
    raise ReplayFailed(
        f"{len(pending)} of {len(records)} replayed record(s) of the last batch were not "
        f"acknowledged by {plan.destination!r}; that batch was not committed: "
        "run the replay again (records already stored come back as duplicates)"
    )


async def _retrying(
    what: str,
    action: Callable[[], Awaitable[T]],
    plan: ReplayPlan,
    stop: asyncio.Event | None,
) -> T:
    """Run `action`, retrying a broker that is away with capped exponential
    backoff, a few times: an operator's command gives up with a clear line."""
    delay = plan.retry_initial_backoff_s
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            return await action()
        except DependencyUnavailable as exc:
            if attempt == _ATTEMPTS or (stop is not None and stop.is_set()):
                raise
            log.warning("replay_retrying", action=what, error=str(exc), retry_in_s=round(delay, 2))
        await asyncio.sleep(delay)
        delay = min(delay * 2, plan.retry_max_backoff_s)
    raise AssertionError("unreachable")  # pragma: no cover


async def run_replay(
    settings: Settings,
    *,
    source: str,
    group_id: str,
    plan: ReplayPlan,
    partitions: Sequence[int] = (),
    from_beginning: bool = False,
    offset: int | None = None,
    stop: asyncio.Event | None = None,
    on_start: Progress | None = None,
    progress: Progress | None = None,
    on_finish: Progress | None = None,
) -> ReplaySummary:
    """Wiring for `usage-ingest replay`: a reader on `source` for `group_id`, a
    producer unless it is a dry run, and the loop."""
    if source == plan.destination:
        raise ReplayFailed(f"source and destination are the same topic ({source!r})")
    if group_id == settings.group_id:
        raise ReplayFailed(
            f"the replay group must not be the worker's group ({group_id!r}): "
            "it would move the worker's offsets"
        )
    reader = ReplayReader(settings, source, group_id, read_only=plan.dry_run)
    summary = ReplaySummary(source, plan.destination, group_id, plan.dry_run)
    try:
        await reader.start(partitions, from_beginning=from_beginning, offset=offset)
        if not await reader.has_topic(plan.destination):
            raise ReplayFailed(
                f"destination topic {plan.destination!r} does not exist "
                "(replay never creates topics)"
            )
        summary.total = reader.total
        log.info(
            "replay_started",
            source=source,
            destination=plan.destination,
            group_id=group_id,
            dry_run=plan.dry_run,
            starts=reader.starts,
            ends=reader.ends,
        )
        if on_start is not None:
            on_start(summary)
        producer = None if plan.dry_run else OutputProducer(settings)
        if producer is not None:
            await producer.start()
        try:
            await replay(reader, producer, plan, summary, stop=stop, progress=progress)
            if on_finish is not None:
                on_finish(summary)
        finally:
            if producer is not None:
                await producer.stop()
    finally:
        await reader.stop()
    log.info(
        "replay_finished",
        scanned=summary.scanned,
        matched=summary.matched,
        replayed=summary.replayed,
        dry_run=plan.dry_run,
        **{f"skipped_{r.value.replace('-', '_')}": n for r, n in summary.skipped.items()},
    )
    return summary
