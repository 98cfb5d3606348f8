"""Dead-letter replay: the loop that sends dead letters back (`usage-ingest replay`,
SPEC.md §8), and the summary of what it did.

What goes back is decided by pure functions over records (`DeadLetter.read` and
`replayed_record` in `domain.dead_letters`, `Selection` and `decide` in
`replay.selection`); the loop (`replay`) joins them with a reader and a producer behind
small ports, so it is unit-tested with fakes. Its commit protocol mirrors the worker's
(SPEC.md §6):

1. a batch of dead letters is read and every record gets its verdict;
2. the chosen ones are published to the destination and every one is
   acknowledged by the broker;
3. only then are the offsets of *every scanned record* committed for the
   replay group, chosen or not, so the next run starts after them.

A crash before step 3 re-sends the uncommitted batch at most; idempotent
storage turns the repeats into `duplicate` outcomes and no new rows. A dry run
reads and decides, and neither publishes nor commits.

A run that publishes holds its replay group's lock (`replay.guard`) from before it reads
the group's positions until it ends, so two runs of one group never publish the same
dead letters; before each batch's step 2 it checks the lock is still held, and stops
(interrupted) when it was lost. Given the positions a dry run started from
(`expected_starts`), a run refuses to start anywhere else (`ReplayOutdated`): what the
operator saw is what is replayed, not what is left after another replay. Given the ends
the dry run read to (`expected_ends`), it reads no further: dead letters that arrived
after the dry run are neither replayed nor committed, they wait for the next run.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, TypeVar

import structlog

from usage_ingest.domain.dead_letters import DeadLetter, replayed_record
from usage_ingest.domain.records import InputRecord, OutputRecord, next_offsets
from usage_ingest.errors import ReplayFailed, ReplayOutdated
from usage_ingest.kafka.producer import OutputProducer
from usage_ingest.kafka.replay_reader import ReplayReader
from usage_ingest.ports import ProducerPort, ReaderPort
from usage_ingest.replay.guard import GroupLock, ReplayGuard
from usage_ingest.replay.selection import Selection, SkipReason, decide
from usage_ingest.replay.summary import ReplaySummary as ReplaySummary  # noqa: PLC0414 - re-exported
from usage_ingest.replay.summary import Sample
from usage_ingest.retry import Backoff, Failure, publish_acknowledged, retry
from usage_ingest.settings import Settings
from usage_ingest.times import utc_now

log = structlog.get_logger("usage_ingest.replay.run")
T = TypeVar("T")

DEFAULT_SHOW = 20
_FETCH_WAIT_MS = 200
_ATTEMPTS = 8


# --- the run ------------------------------------------------------------------------


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


def replay_plan(
    settings: Settings,
    *,
    destination: str,
    selection: Selection,
    limit: int | None = None,
    dry_run: bool = False,
    show: int = DEFAULT_SHOW,
) -> ReplayPlan:
    """The plan of a replay run with `settings`' batch size and backoff (the command
    line's and the console's alike)."""
    return ReplayPlan(
        destination=destination,
        selection=selection,
        limit=limit,
        dry_run=dry_run,
        batch_size=min(settings.batch_max_records, 500),
        show=show,
        retry_initial_backoff_s=settings.retry_initial_backoff_s,
        retry_max_backoff_s=settings.retry_max_backoff_s,
    )


Progress = Callable[[ReplaySummary], None]


async def replay(
    reader: ReaderPort,
    producer: ProducerPort | None,
    plan: ReplayPlan,
    summary: ReplaySummary,
    *,
    stop: asyncio.Event | None = None,
    progress: Progress | None = None,
    clock: Callable[[], datetime] = utc_now,
    lock: GroupLock | None = None,
) -> ReplaySummary:
    """Scan the reader to its end (or `plan.limit` replays, or `stop`), replaying
    what `plan.selection` picks; fills in and returns `summary`. With `lock`, each
    batch is published only while the lock is still held."""
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
        if lock is not None and not await lock.held():
            _lost_lock(summary)
            break
        summary.limit_reached = len(scanned) < len(records)
        if not plan.dry_run:
            assert producer is not None
            outgoing = [replayed_record(letter, plan.destination, now) for letter in chosen]
            await _publish(producer, outgoing, plan, stop)
            await _commit(reader, scanned, plan, summary, stop)
        _count(summary, chosen, held, plan.show)
        log.debug(
            "replay_batch_done", scanned=len(scanned), replayed=len(chosen), dry_run=plan.dry_run
        )
        if progress is not None:
            progress(summary)
        if summary.limit_reached:
            break
    return summary


async def _commit(
    reader: ReaderPort,
    scanned: Sequence[InputRecord],
    plan: ReplayPlan,
    summary: ReplaySummary,
    stop: asyncio.Event | None,
) -> None:
    offsets = next_offsets(scanned)
    if offsets:  # never an empty commit: some clients read it as "all consumed"
        await _retrying("commit", functools.partial(reader.commit, offsets), plan, stop)
        summary.committed.update({partition: o for (_, partition), o in offsets.items()})


def _lost_lock(summary: ReplaySummary) -> None:
    """The lock's session ended (its connection dropped): another replay of the group
    may start now, so this one publishes nothing more."""
    summary.interrupted = True
    summary.stopped_because = (
        f"the lock of replay group {summary.group_id!r} was lost (its database connection "
        "closed): stopped before publishing the next batch; what was committed stays "
        "committed, run the replay again"
    )
    log.warning("replay_lock_lost", group_id=summary.group_id)


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


def _backoff(plan: ReplayPlan) -> Backoff:
    """A few attempts: an operator's command gives up with a clear line."""
    return Backoff(plan.retry_initial_backoff_s, plan.retry_max_backoff_s, attempts=_ATTEMPTS)


async def _publish(
    producer: ProducerPort,
    records: list[OutputRecord],
    plan: ReplayPlan,
    stop: asyncio.Event | None,
) -> None:
    """Publish and wait until every record is acknowledged, retrying only the
    unacknowledged ones; give up (committing nothing) after a few attempts."""
    pending = await publish_acknowledged(
        producer, records, _backoff(plan), _publish_incomplete, stop=stop
    )
    if pending:
        raise ReplayFailed(
            f"{len(pending)} of {len(records)} replayed record(s) of the last batch were not "
            f"acknowledged by {plan.destination!r}; that batch was not committed: "
            "run the replay again (records already stored come back as duplicates)"
        )


def _publish_incomplete(unacknowledged: int, retry_in_s: float) -> None:
    log.warning(
        "replay_publish_incomplete", unacknowledged=unacknowledged, retry_in_s=round(retry_in_s, 2)
    )


async def _retrying(
    what: str,
    action: Callable[[], Awaitable[T]],
    plan: ReplayPlan,
    stop: asyncio.Event | None,
) -> T:
    """Run `action`, retrying a broker that is away with capped exponential
    backoff, a few times: an operator's command gives up with a clear line."""

    def report(failure: Failure) -> None:
        log.warning(
            "replay_retrying",
            action=what,
            error=str(failure.error),
            retry_in_s=round(failure.retry_in_s, 2),
        )

    return await retry(action, _backoff(plan), report, stop=stop)


class ReplaySource(ReaderPort, Protocol):
    """The reader `run_replay` opens: a bounded read of the source (`ReplayReader`)."""

    async def start(
        self,
        partitions: Sequence[int] = (),
        *,
        from_beginning: bool = False,
        offset: int | None = None,
    ) -> None: ...

    async def has_topic(self, topic: str) -> bool: ...

    @property
    def starts(self) -> dict[int, int]: ...

    @property
    def ends(self) -> dict[int, int]: ...

    @property
    def total(self) -> int: ...

    async def cap_ends(self, bounds: Mapping[int, int]) -> None:
        """Read no further than `bounds` (per partition) where they end before `ends`."""
        ...

    async def stop(self) -> None: ...


class ReplaySink(ProducerPort, Protocol):
    """The producer `run_replay` opens on the destination (`OutputProducer`)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def _kafka_reader(settings: Settings, topic: str, group_id: str, read_only: bool) -> ReplaySource:
    return ReplayReader(settings, topic, group_id, read_only=read_only)


@dataclass(frozen=True, slots=True)
class ReplayAdapters:
    """How `run_replay` reaches the broker: Kafka, or fakes in the unit tests."""

    reader: Callable[[Settings, str, str, bool], ReplaySource] = _kafka_reader
    producer: Callable[[Settings], ReplaySink] = OutputProducer


def _check_groups(settings: Settings, source: str, group_id: str, plan: ReplayPlan) -> None:
    if source == plan.destination:
        raise ReplayFailed(f"source and destination are the same topic ({source!r})")
    if group_id == settings.group_id:
        raise ReplayFailed(
            f"the replay group must not be the worker's group ({group_id!r}): "
            "it would move the worker's offsets"
        )


def _check_starts(group_id: str, starts: dict[int, int], expected: Mapping[int, int]) -> None:
    """Refuse to replay from anywhere but where the dry run started."""
    if starts == dict(expected):
        return
    moved = ", ".join(
        f"partition {p}: {expected.get(p, 'none')} then, {starts.get(p, 'none')} now"
        for p in sorted(set(starts) | set(expected))
        if starts.get(p) != expected.get(p)
    )
    raise ReplayOutdated(
        f"replay group {group_id!r} no longer starts where the dry run did ({moved}): "
        "another replay ran since; nothing was replayed, do the dry run again"
    )


def _check_ends(group_id: str, ends: dict[int, int], bounds: Mapping[int, int]) -> None:
    """Refuse a bound the topic does not reach: the log end never moves back unless the
    topic was recreated, so the dry run read other dead letters than these."""
    behind = {p: end for p, end in ends.items() if p not in bounds or bounds[p] > end}
    unknown = set(bounds) - set(ends)
    if not behind and not unknown:
        return
    moved = ", ".join(
        f"partition {p}: ended at {bounds.get(p, 'none')} then, at {ends.get(p, 'none')} now"
        for p in sorted(set(behind) | unknown)
    )
    raise ReplayOutdated(
        f"the dead letters of replay group {group_id!r} end before where the dry run read to "
        f"({moved}): the topic was recreated or repartitioned since; nothing was replayed, "
        "do the dry run again"
    )


def _lock(
    guard: ReplayGuard | None, group_id: str, plan: ReplayPlan
) -> AbstractAsyncContextManager[GroupLock | None]:
    """The group's lock for a run that publishes; none for a dry run."""
    if plan.dry_run:
        return nullcontext(None)
    if guard is None:
        raise ValueError("a replay that is not a dry run needs a guard (the group's lock)")
    return guard.hold_replay_lock(group_id)


async def run_replay(
    settings: Settings,
    *,
    source: str,
    group_id: str,
    plan: ReplayPlan,
    guard: ReplayGuard | None,
    expected_starts: Mapping[int, int] | None = None,
    expected_ends: Mapping[int, int] | None = None,
    partitions: Sequence[int] = (),
    from_beginning: bool = False,
    offset: int | None = None,
    stop: asyncio.Event | None = None,
    on_start: Progress | None = None,
    progress: Progress | None = None,
    on_finish: Progress | None = None,
    adapters: ReplayAdapters = ReplayAdapters(),  # frozen: one default for all
) -> ReplaySummary:
    """Wiring for `usage-ingest replay` and the console: the group's lock (unless it is
    a dry run; `guard` may then be None), a reader on `source` for `group_id`, a
    producer unless it is a dry run, and the loop. With `expected_ends`, the reader stops
    there (or at the topic's end, when that comes first). Raises `ReplayRunning` when
    another run holds the lock, `ReplayOutdated` when `expected_starts` are given and the
    group starts elsewhere, or `expected_ends` lie beyond the topic's end; none of them
    publishes anything."""
    _check_groups(settings, source, group_id, plan)
    summary = ReplaySummary(source, plan.destination, group_id, plan.dry_run)
    async with _lock(guard, group_id, plan) as lock:
        reader = adapters.reader(settings, source, group_id, plan.dry_run)
        try:
            await reader.start(partitions, from_beginning=from_beginning, offset=offset)
            await _bound(reader, group_id, expected_starts, expected_ends)
            if not await reader.has_topic(plan.destination):
                raise ReplayFailed(
                    f"destination topic {plan.destination!r} does not exist "
                    "(replay never creates topics)"
                )
            summary.starts, summary.ends, summary.total = reader.starts, reader.ends, reader.total
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
            await _run_with_producer(
                settings,
                reader,
                plan,
                summary,
                adapters=adapters,
                stop=stop,
                progress=progress,
                lock=lock,
            )
            if on_finish is not None:
                on_finish(summary)
        finally:
            await reader.stop()
    log.info(
        "replay_finished",
        scanned=summary.scanned,
        matched=summary.matched,
        replayed=summary.replayed,
        dry_run=plan.dry_run,
        interrupted=summary.interrupted,
        **{f"skipped_{r.value.replace('-', '_')}": n for r, n in summary.skipped.items()},
    )
    return summary


async def _bound(
    reader: ReplaySource,
    group_id: str,
    expected_starts: Mapping[int, int] | None,
    expected_ends: Mapping[int, int] | None,
) -> None:
    """Hold a started reader to the range a dry run read, when it is given."""
    if expected_starts is not None:
        _check_starts(group_id, reader.starts, expected_starts)
    if expected_ends is not None:
        _check_ends(group_id, reader.ends, expected_ends)
        await reader.cap_ends(expected_ends)


async def _run_with_producer(
    settings: Settings,
    reader: ReplaySource,
    plan: ReplayPlan,
    summary: ReplaySummary,
    *,
    adapters: ReplayAdapters,
    stop: asyncio.Event | None,
    progress: Progress | None,
    lock: GroupLock | None,
) -> None:
    producer = None if plan.dry_run else adapters.producer(settings)
    if producer is not None:
        await producer.start()
    try:
        await replay(reader, producer, plan, summary, stop=stop, progress=progress, lock=lock)
    finally:
        if producer is not None:
            await producer.stop()
