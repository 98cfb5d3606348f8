"""Dead-letter replay: what is chosen, what is re-published, and the loop's
commit protocol, with in-memory fakes of the reader and the producer."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from usage_ingest.cli import main
from usage_ingest.domain.dead_letters import (
    DEAD_LETTER_HEADERS,
    H_REPLAYED_AT,
    DeadLetter,
    reference_of,
    replayed_record,
)
from usage_ingest.domain.records import InputRecord, OutputRecord, Partition
from usage_ingest.errors import BrokerUnavailable, ReplayFailed
from usage_ingest.replay.run import ReplayPlan, ReplaySummary, replay
from usage_ingest.replay.selection import Selection, SkipReason, TimeField
from usage_ingest.replay.view import ReplayProgress, print_summary
from usage_ingest.times import format_utc_millis, parse_operator_instant

DLQ = "usage.events.dlq"
EVENTS = "usage.events"
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
FAILED_AT = "2026-11-22T10:00:00.000Z"
RECORD_TIME_MS = int(datetime(2026, 11, 22, 10, 0, 1, tzinfo=UTC).timestamp() * 1000)

H_CODE = "usage-ingest.error.code"
H_MESSAGE = "usage-ingest.error.message"
H_RETRYABLE = "usage-ingest.error.retryable"
H_TOPIC = "usage-ingest.source.topic"
H_PARTITION = "usage-ingest.source.partition"
H_OFFSET = "usage-ingest.source.offset"
H_FAILED_AT = "usage-ingest.failed-at"
H_COUNT = "usage-ingest.replay-count"


def value_of(reference: str) -> bytes:
    return json.dumps({"externalReference": reference, "productIdent": "p"}).encode()


def failure_headers(
    code: str = "NO_INVENTORY",
    retryable: str | None = "true",
    count: int | None = 0,
    failed_at: str | None = FAILED_AT,
) -> list[tuple[str, bytes]]:
    headers = [
        (H_CODE, code.encode()),
        (H_MESSAGE, b"productIdent: no inventory"),
        (H_TOPIC, EVENTS.encode()),
        (H_PARTITION, b"1"),
        (H_OFFSET, b"42"),
    ]
    if retryable is not None:
        headers.append((H_RETRYABLE, retryable.encode()))
    if failed_at is not None:
        headers.append((H_FAILED_AT, failed_at.encode()))
    if count is not None:
        headers.append((H_COUNT, str(count).encode()))
    return headers


def dead(
    reference: str | None = "ref-1",
    *,
    offset: int = 0,
    partition: int = 0,
    key: bytes | None = b"key-1",
    value: bytes | None = None,
    headers: Sequence[tuple[str, bytes]] | None = None,
    timestamp_ms: int = RECORD_TIME_MS,
    **failure: Any,
) -> InputRecord:
    return InputRecord(
        topic=DLQ,
        partition=partition,
        offset=offset,
        key=key,
        value=value if value is not None else value_of(reference or ""),
        headers=tuple(headers if headers is not None else failure_headers(**failure)),
        timestamp_ms=timestamp_ms,
    )


# --- reading a dead letter -----------------------------------------------------------


def test_read_takes_code_retryable_count_failed_at_and_reference() -> None:
    letter = DeadLetter.read(dead("ref-9", count=3))
    assert letter.code == "NO_INVENTORY"
    assert letter.retryable is True
    assert letter.replay_count == 3
    assert letter.failed_at == datetime(2026, 11, 22, 10, tzinfo=UTC)
    assert letter.reference == "ref-9"
    assert letter.timestamp == datetime(2026, 11, 22, 10, 0, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("code", "header", "expected"),
    [
        ("NO_INVENTORY", "false", False),  # the header wins
        ("SCHEMA_VIOLATION", "true", True),
        ("NO_INVENTORY", None, True),  # no header: what SPEC.md §5 says of the code
        ("SCHEMA_VIOLATION", None, False),
        ("NO_INVENTORY", "maybe", True),
        ("SOMETHING_NEW", None, False),
    ],
)
def test_retryable_comes_from_the_header_then_the_code(
    code: str, header: str | None, expected: bool
) -> None:
    assert DeadLetter.read(dead(code=code, retryable=header)).retryable is expected


def test_a_record_without_failure_headers_has_no_code_and_count_zero() -> None:
    letter = DeadLetter.read(dead(headers=[("origin", b"x")]))
    assert (letter.code, letter.retryable, letter.replay_count, letter.failed_at) == (
        None,
        False,
        0,
        None,
    )


def test_unreadable_failed_at_is_none() -> None:
    assert DeadLetter.read(dead(failed_at="yesterday")).failed_at is None


def test_reference_is_read_from_the_value_before_the_key() -> None:
    assert reference_of(dead("from-value", key=b"from-key")) == "from-value"


@pytest.mark.parametrize(
    "value",
    [b"not json", b"", b'{"externalReference": 7}', b"[1]", b'{"externalReference": ""}'],
)
def test_reference_falls_back_to_the_key(value: bytes) -> None:
    assert reference_of(dead(value=value, key=b"the-key")) == "the-key"


def test_no_reference_when_neither_value_nor_key_has_one() -> None:
    assert reference_of(dead(value=b"\xff", key=b"\xff\xfe")) is None
    assert reference_of(dead(value=b"{}", key=None)) is None


# --- choosing ------------------------------------------------------------------------------


def reason(selection: Selection, record: InputRecord) -> SkipReason | None:
    return selection.skip_reason(DeadLetter.read(record))


def test_default_selection_replays_retryable_and_skips_final_codes() -> None:
    selection = Selection()
    assert reason(selection, dead(code="NO_INVENTORY")) is None
    assert reason(selection, dead(code="SCHEMA_VIOLATION", retryable="false")) is (
        SkipReason.NOT_RETRYABLE
    )
    assert reason(selection, dead(headers=[])) is SkipReason.NOT_RETRYABLE


def test_all_replays_final_codes_too() -> None:
    selection = Selection(retryable_only=False)
    assert reason(selection, dead(code="SCHEMA_VIOLATION", retryable="false")) is None
    assert reason(selection, dead(headers=[])) is None


def test_code_filter() -> None:
    selection = Selection(codes=frozenset({"NO_INVENTORY", "UNKNOWN_PRODUCT"}))
    assert reason(selection, dead(code="NO_INVENTORY")) is None
    assert reason(selection, dead(code="UNKNOWN_PRODUCT")) is None
    assert reason(selection, dead(code="UNKNOWN_CONTRACT")) is SkipReason.CODE
    # the first rule that holds a record back is the one reported
    assert reason(selection, dead(code="SCHEMA_VIOLATION", retryable="false")) is SkipReason.CODE


def test_reference_filter_uses_the_value_then_the_key() -> None:
    selection = Selection(references=frozenset({"ref-2", "k-3"}))
    assert reason(selection, dead("ref-2")) is None
    assert reason(selection, dead(value=b"garbage", key=b"k-3")) is None
    assert reason(selection, dead("ref-1", key=b"ref-2")) is SkipReason.REFERENCE


def test_max_replays_holds_back_records_replayed_that_often() -> None:
    selection = Selection(max_replays=5)
    assert reason(selection, dead(count=4)) is None
    assert reason(selection, dead(count=5)) is SkipReason.MAX_REPLAYS
    assert reason(selection, dead(count=9)) is SkipReason.MAX_REPLAYS
    # a record the filters do not pick is reported for the filter, not the count
    assert reason(Selection(codes=frozenset({"X"})), dead(count=9)) is SkipReason.CODE


def test_time_window_on_failed_at_is_since_inclusive_until_exclusive() -> None:
    at = datetime(2026, 11, 22, 10, tzinfo=UTC)
    assert reason(Selection(since=at), dead()) is None
    assert reason(Selection(since=at + timedelta(milliseconds=1)), dead()) is (
        SkipReason.TIME_WINDOW
    )
    assert reason(Selection(until=at), dead()) is SkipReason.TIME_WINDOW
    assert reason(Selection(until=at + timedelta(milliseconds=1)), dead()) is None


def test_time_window_on_the_record_timestamp() -> None:
    record_time = datetime(2026, 11, 22, 10, 0, 1, tzinfo=UTC)
    on_record = Selection(since=record_time, time_field=TimeField.RECORD)
    on_failed_at = Selection(since=record_time)
    assert reason(on_record, dead()) is None
    assert reason(on_failed_at, dead()) is SkipReason.TIME_WINDOW


def test_failed_at_window_falls_back_to_the_record_timestamp() -> None:
    record_time = datetime(2026, 11, 22, 10, 0, 1, tzinfo=UTC)
    assert reason(Selection(since=record_time), dead(failed_at=None)) is None
    assert reason(Selection(since=record_time), dead(failed_at=None, timestamp_ms=-1)) is (
        SkipReason.TIME_WINDOW
    )


def test_contradictory_selections_are_named() -> None:
    assert Selection().problems() == []
    assert Selection(codes=frozenset({"NO_INVENTORY"})).problems() == []
    final = Selection(codes=frozenset({"SCHEMA_VIOLATION"})).problems()
    assert final == ["SCHEMA_VIOLATION is not retryable: add --all to replay such records anyway"]
    assert Selection(codes=frozenset({"SCHEMA_VIOLATION"}), retryable_only=False).problems() == []
    (unknown,) = Selection(codes=frozenset({"NOPE"})).problems()
    assert unknown.startswith("unknown error code(s) NOPE")
    at = datetime(2026, 1, 1, tzinfo=UTC)
    assert Selection(since=at, until=at).problems() == ["--since must be before --until"]
    assert Selection(max_replays=0).problems() == ["--max-replays must be at least 1"]


# --- the re-published record ------------------------------------------------------------


def test_replayed_record_keeps_key_value_and_original_headers() -> None:
    headers = [
        ("origin", b"crm"),
        *failure_headers(count=2),
        ("trace", b"t-1"),
        ("origin", b"second"),
        (H_REPLAYED_AT, b"2020-01-01T00:00:00.000Z"),
    ]
    letter = DeadLetter.read(dead("ref-1", key=b"k", headers=headers))
    out = replayed_record(letter, EVENTS, NOW)
    assert out.topic == EVENTS
    assert out.key == b"k"
    assert out.value == value_of("ref-1")
    assert out.headers == (
        ("origin", b"crm"),
        ("trace", b"t-1"),
        ("origin", b"second"),
        (H_COUNT, b"3"),
        (H_REPLAYED_AT, b"2026-11-22T12:00:00.000Z"),
    )
    assert not {k for k, _ in out.headers} & (DEAD_LETTER_HEADERS - {H_COUNT})


def test_replay_count_appears_once_even_when_the_dead_letter_repeats_it() -> None:
    headers = [(H_COUNT, b"1"), (H_COUNT, b"7"), (H_CODE, b"NO_INVENTORY")]
    out = replayed_record(DeadLetter.read(dead(headers=headers)), EVENTS, NOW)
    assert [v for k, v in out.headers if k == H_COUNT] == [b"2"]  # the first one counts


def test_first_failure_gets_count_one_and_a_null_value_stays_null() -> None:
    record = InputRecord(DLQ, 0, 0, None, None, tuple(failure_headers(count=None)), -1)
    out = replayed_record(DeadLetter.read(record), EVENTS, NOW)
    assert (out.key, out.value) == (None, None)
    assert dict(out.headers)[H_COUNT] == b"1"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-22T10:00:00Z", datetime(2026, 11, 22, 10, tzinfo=UTC)),
        ("2026-11-22t10:00:00z", datetime(2026, 11, 22, 10, tzinfo=UTC)),
        ("2026-11-22T11:00:00+01:00", datetime(2026, 11, 22, 10, tzinfo=UTC)),
        ("2026-11-22T10:00:00", datetime(2026, 11, 22, 10, tzinfo=UTC)),
        ("2026-11-22", datetime(2026, 11, 22, tzinfo=UTC)),
    ],
)
def test_parse_instant(text: str, expected: datetime) -> None:
    parsed = parse_operator_instant(text)
    assert parsed == expected
    assert parsed.tzinfo is not None


@pytest.mark.parametrize("text", ["", "yesterday", "2026-13-01", "2026-11-22T25:00:00Z"])
def test_parse_instant_refuses(text: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - any ValueError is the contract
        parse_operator_instant(text)


def test_format_instant_is_utc_with_milliseconds() -> None:
    moment = datetime(2026, 11, 22, 11, 0, 0, 123456, tzinfo=UTC) + timedelta(hours=0)
    assert format_utc_millis(moment) == "2026-11-22T11:00:00.123Z"


# --- the loop ------------------------------------------------------------------------


class FakeReader:
    """A topic read from committed offsets up to fixed ends; commits are recorded."""

    def __init__(self, records: Sequence[InputRecord], committed: dict[int, int] | None = None):
        self.log: dict[int, list[InputRecord]] = {}
        for record in records:
            self.log.setdefault(record.partition, []).append(record)
        self.committed: dict[int, int] = dict(committed or {})
        self.position = {p: self.committed.get(p, 0) for p in self.log}
        self.ends = {p: len(rs) for p, rs in self.log.items()}
        self.events: list[tuple[str, Any]] = []
        self.commit_failures: list[BaseException] = []
        self.fetches = 0

    async def fetch(self, max_records: int, timeout_ms: int) -> list[InputRecord]:
        self.fetches += 1
        out: list[InputRecord] = []
        for partition in sorted(self.log):
            while len(out) < max_records and self.position[partition] < self.ends[partition]:
                out.append(self.log[partition][self.position[partition]])
                self.position[partition] += 1
        return out

    async def done(self) -> bool:
        return all(self.position[p] >= self.ends[p] for p in self.log)

    async def commit(self, next_offsets: dict[Partition, int]) -> None:
        if self.commit_failures:
            raise self.commit_failures.pop(0)
        self.events.append(("commit", dict(next_offsets)))
        for (_, partition), offset in next_offsets.items():
            self.committed[partition] = offset


class FakeProducer:
    """Acknowledges everything, except the first `refuse` attempts of each record."""

    def __init__(self, events: list[tuple[str, Any]], refuse: int = 0) -> None:
        self.events = events
        self.refuse = refuse
        self.acknowledged: list[OutputRecord] = []
        self.attempts = 0

    async def publish(self, records: Sequence[OutputRecord]) -> list[OutputRecord]:
        self.attempts += 1
        if self.refuse:
            self.refuse -= 1
            return list(records[len(records) // 2 :])  # the first half got through
        self.acknowledged.extend(records)
        self.events.append(("publish", len(records)))
        return []


def plan(**overrides: Any) -> ReplayPlan:
    values: dict[str, Any] = {
        "destination": EVENTS,
        "batch_size": 3,
        "retry_initial_backoff_s": 0.001,
        "retry_max_backoff_s": 0.002,
    }
    values.update(overrides)
    return ReplayPlan(**values)


def fresh_summary(dry_run: bool = False) -> ReplaySummary:
    return ReplaySummary(DLQ, EVENTS, "usage-ingest.replay", dry_run)


def mixed_dead_letters() -> list[InputRecord]:
    """Partition 0: four NO_INVENTORY and a SCHEMA_VIOLATION; partition 1: one held back by
    its count, one UNKNOWN_PRODUCT."""
    return [
        dead("a", offset=0),
        dead("b", offset=1),
        dead("bad", offset=2, code="SCHEMA_VIOLATION", retryable="false"),
        dead("c", offset=3),
        dead("d", offset=4),
        dead("looping", offset=0, partition=1, code="UNKNOWN_PRODUCT", count=5),
        dead("e", offset=1, partition=1, code="UNKNOWN_PRODUCT"),
    ]


def references(records: Sequence[OutputRecord]) -> list[str]:
    return [json.loads(r.value or b"")["externalReference"] for r in records]


async def test_replays_the_chosen_and_commits_every_scanned_record_after_the_ack() -> None:
    reader = FakeReader(mixed_dead_letters())
    producer = FakeProducer(reader.events)
    summary = await replay(reader, producer, plan(), fresh_summary(), clock=lambda: NOW)
    assert references(producer.acknowledged) == ["a", "b", "c", "d", "e"]
    assert all(
        dict(r.headers)[H_REPLAYED_AT] == b"2026-11-22T12:00:00.000Z" for r in producer.acknowledged
    )
    # every commit follows the publish of its batch, and covers skipped records too
    kinds = [kind for kind, _ in reader.events]
    assert kinds == ["publish", "commit", "publish", "commit", "publish", "commit"]
    assert reader.committed == {0: 5, 1: 2}
    assert (summary.scanned, summary.matched, summary.replayed) == (7, 6, 5)
    assert summary.skipped == {SkipReason.NOT_RETRYABLE: 1, SkipReason.MAX_REPLAYS: 1}
    assert summary.replayed_by_code == {"NO_INVENTORY": 4, "UNKNOWN_PRODUCT": 1}
    assert [s.reference for s in summary.max_replays_sample] == ["looping"]
    assert summary.committed == {0: 5, 1: 2}
    assert not summary.limit_reached


async def test_a_second_run_finds_nothing_new() -> None:
    records = mixed_dead_letters()
    reader = FakeReader(records)
    await replay(reader, FakeProducer(reader.events), plan(), fresh_summary())
    again = FakeReader(records, committed=reader.committed)
    producer = FakeProducer(again.events)
    summary = await replay(again, producer, plan(), fresh_summary())
    assert producer.acknowledged == []
    assert (summary.scanned, summary.replayed) == (0, 0)
    assert again.events == []


async def test_unacknowledged_records_are_retried_before_the_commit() -> None:
    reader = FakeReader([dead("a", offset=0), dead("b", offset=1)])
    producer = FakeProducer(reader.events, refuse=2)
    summary = await replay(reader, producer, plan(), fresh_summary())
    assert producer.attempts == 3
    assert references(producer.acknowledged) == ["b"]  # only the refused half was re-sent
    assert reader.events == [("publish", 1), ("commit", {(DLQ, 0): 2})]
    assert summary.replayed == 2


async def test_a_destination_that_never_acknowledges_commits_nothing() -> None:
    reader = FakeReader([dead("a", offset=0), dead("b", offset=1)])
    producer = FakeProducer(reader.events, refuse=1000)
    with pytest.raises(ReplayFailed, match="not acknowledged"):
        await replay(reader, producer, plan(), fresh_summary())
    assert reader.committed == {}
    assert [kind for kind, _ in reader.events] == []


async def test_a_broker_away_at_commit_time_is_retried() -> None:
    reader = FakeReader([dead("a", offset=0)])
    reader.commit_failures = [BrokerUnavailable("down"), BrokerUnavailable("still down")]
    await replay(reader, FakeProducer(reader.events), plan(), fresh_summary())
    assert reader.committed == {0: 1}


async def test_dry_run_publishes_and_commits_nothing() -> None:
    class NoCommit(FakeReader):
        async def commit(self, next_offsets: dict[Partition, int]) -> None:
            raise AssertionError("a dry run committed")

    reader = NoCommit(mixed_dead_letters())
    summary = await replay(reader, None, plan(dry_run=True), fresh_summary(dry_run=True))
    assert (summary.scanned, summary.matched, summary.replayed) == (7, 6, 5)
    assert [s.reference for s in summary.replayed_sample] == ["a", "b", "c", "d", "e"]
    assert summary.committed == {}


async def test_a_real_run_needs_a_producer() -> None:
    with pytest.raises(ValueError, match="producer"):
        await replay(FakeReader([]), None, plan(), fresh_summary())


async def test_limit_stops_after_n_replays_and_leaves_the_rest_uncommitted() -> None:
    records = [dead(f"r{i}", offset=i) for i in range(7)]
    reader = FakeReader(records)
    producer = FakeProducer(reader.events)
    summary = await replay(reader, producer, plan(limit=4), fresh_summary())
    assert references(producer.acknowledged) == ["r0", "r1", "r2", "r3"]
    assert reader.committed == {0: 4}
    assert summary.limit_reached
    assert summary.scanned == 4
    # the next run continues with what was left
    follow_up = FakeReader(records, committed=reader.committed)
    producer = FakeProducer(follow_up.events)
    summary = await replay(follow_up, producer, plan(limit=4), fresh_summary())
    assert references(producer.acknowledged) == ["r4", "r5", "r6"]
    assert not summary.limit_reached
    assert follow_up.committed == {0: 7}


async def test_limit_reached_inside_the_last_batch_is_reported() -> None:
    records = [dead(f"r{i}", offset=i) for i in range(5)]
    reader = FakeReader(records)
    producer = FakeProducer(reader.events)
    summary = await replay(reader, producer, plan(limit=2, batch_size=10), fresh_summary())
    assert await reader.done()  # every record was fetched, but not every one scanned
    assert summary.limit_reached
    assert (summary.scanned, summary.replayed) == (2, 2)
    assert reader.committed == {0: 2}


async def test_limit_equal_to_what_is_there_is_not_reported_as_reached() -> None:
    reader = FakeReader([dead(f"r{i}", offset=i) for i in range(3)])
    summary = await replay(
        reader, FakeProducer(reader.events), plan(limit=3, batch_size=3), fresh_summary()
    )
    assert summary.replayed == 3
    assert not summary.limit_reached


async def test_limit_counts_replays_not_scanned_records() -> None:
    records = [
        dead("skip-1", offset=0, code="SCHEMA_VIOLATION", retryable="false"),
        dead("r1", offset=1),
        dead("skip-2", offset=2, code="SCHEMA_VIOLATION", retryable="false"),
        dead("r2", offset=3),
        dead("r3", offset=4),
    ]
    reader = FakeReader(records)
    producer = FakeProducer(reader.events)
    await replay(reader, producer, plan(limit=2, batch_size=10), fresh_summary())
    assert references(producer.acknowledged) == ["r1", "r2"]
    assert reader.committed == {0: 4}


async def test_a_crash_before_the_commit_resends_only_the_uncommitted_batch() -> None:
    records = [dead(f"r{i}", offset=i) for i in range(7)]
    reader = FakeReader(records)
    producer = FakeProducer(reader.events)

    class Crash(BaseException):
        pass

    original_commit = reader.commit
    commits = 0

    async def crashing_commit(next_offsets: dict[Partition, int]) -> None:
        nonlocal commits
        commits += 1
        if commits == 2:
            raise Crash
        await original_commit(next_offsets)

    reader.commit = crashing_commit  # type: ignore[method-assign]
    with pytest.raises(Crash):
        await replay(reader, producer, plan(batch_size=3), fresh_summary())
    assert references(producer.acknowledged) == ["r0", "r1", "r2", "r3", "r4", "r5"]
    assert reader.committed == {0: 3}
    restarted = FakeReader(records, committed=reader.committed)
    producer_2 = FakeProducer(restarted.events)
    await replay(restarted, producer_2, plan(batch_size=3), fresh_summary())
    assert references(producer_2.acknowledged) == ["r3", "r4", "r5", "r6"]
    assert restarted.committed == {0: 7}


async def test_stop_ends_the_run_between_batches() -> None:
    reader = FakeReader([dead(f"r{i}", offset=i) for i in range(9)])
    stop = asyncio.Event()
    seen: list[int] = []

    def progress(summary: ReplaySummary) -> None:
        seen.append(summary.scanned)
        stop.set()

    producer = FakeProducer(reader.events)
    summary = await replay(reader, producer, plan(), fresh_summary(), stop=stop, progress=progress)
    assert seen == [3]
    assert summary.interrupted
    assert reader.committed == {0: 3}


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["NO_INVENTORY", "UNKNOWN_PRODUCT", "SCHEMA_VIOLATION", "OTHER"]),
            st.integers(min_value=0, max_value=7),
            st.integers(min_value=0, max_value=2),
        ),
        max_size=25,
    ),
    st.frozensets(st.sampled_from(["NO_INVENTORY", "UNKNOWN_PRODUCT"])),
    st.booleans(),
    st.integers(min_value=1, max_value=6),
    st.integers(min_value=1, max_value=4),
)
def test_summary_adds_up_and_every_partition_is_committed_to_its_end(
    letters: list[tuple[str, int, int]],
    codes: frozenset[str],
    retryable_only: bool,
    max_replays: int,
    batch_size: int,
) -> None:
    offsets: dict[int, int] = {}
    records = []
    for index, (code, count, partition) in enumerate(letters):
        offset = offsets[partition] = offsets.get(partition, -1) + 1
        records.append(
            dead(f"r{index}", offset=offset, partition=partition, code=code, count=count)
        )
    selection = Selection(codes=codes, retryable_only=retryable_only, max_replays=max_replays)
    reader = FakeReader(records)
    producer = FakeProducer(reader.events)
    summary = asyncio.run(
        replay(reader, producer, plan(selection=selection, batch_size=batch_size), fresh_summary())
    )
    assert summary.scanned == len(records)
    assert summary.scanned == summary.replayed + sum(summary.skipped.values())
    assert summary.matched == summary.replayed + summary.skipped[SkipReason.MAX_REPLAYS]
    assert summary.replayed == len(producer.acknowledged)
    expected = [r for r in records if selection.skip_reason(DeadLetter.read(r)) is None]
    assert sorted(references(producer.acknowledged)) == sorted(
        json.loads(r.value or b"")["externalReference"] for r in expected
    )
    assert reader.committed == {p: o + 1 for p, o in offsets.items()}


# --- what the operator sees ----------------------------------------------------------------


def test_plain_progress_prints_at_most_once_an_interval_and_once_at_the_end() -> None:
    out = io.StringIO()
    ticks = iter([0.0, 0.5, 1.2, 1.3])
    progress = ReplayProgress(Console(file=out, width=200), clock=lambda: next(ticks))
    summary = fresh_summary()
    summary.total = 9
    progress.start(summary)
    for scanned in (3, 6, 8, 9):
        summary.scanned = summary.matched = summary.replayed = scanned
        progress.update(summary)
    progress.finish(summary)
    lines = out.getvalue().splitlines()
    assert lines == [
        f"replay: scanning up to 9 record(s) of {DLQ} for group usage-ingest.replay",
        "replay: scanned 3/9, matched 3, replayed 3",
        "replay: scanned 8/9, matched 8, replayed 8",
        "replay: scanned 9/9, matched 9, replayed 9",
    ]


def test_summary_table_names_counts_reasons_and_samples() -> None:
    reader = FakeReader(mixed_dead_letters())
    summary = asyncio.run(replay(reader, None, plan(dry_run=True), fresh_summary(dry_run=True)))
    out = io.StringIO()
    print_summary(summary, Console(file=out, width=120))
    text = out.getvalue()
    assert "nothing was published, nothing was committed" in text
    for row in (
        "scanned                     │     7",
        "matched                     │     6",
        "would replay                │     5",
        "│   NO_INVENTORY              │     4",
        "skipped: not-retryable      │     1",
        "skipped: max-replays        │     1",
    ):
        assert row in text
    assert "│ looping           │ UNKNOWN_PRODUCT │         1 │      0 │       5 │" in text
    assert "fix their cause" in text


def test_summary_json_has_every_reason() -> None:
    summary = fresh_summary()
    summary.skipped[SkipReason.CODE] = 2
    assert summary.to_json()["skipped"] == {
        "code": 2,
        "not-retryable": 0,
        "external-reference": 0,
        "time-window": 0,
        "max-replays": 0,
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--offset", "3"], "--offset needs --partition"),
        (["--partition", "0", "--offset", "3", "--from-beginning"], "exclude each other"),
        (["--code", "SCHEMA_VIOLATION"], "SCHEMA_VIOLATION is not retryable: add --all"),
        (["--code", "no_such_code"], "unknown error code(s) NO_SUCH_CODE"),
        (["--since", "yesterday"], "is not an RFC 3339 date-time"),
        (
            ["--since", "2026-11-22T10:00:00Z", "--until", "2026-11-22T09:00:00Z"],
            "--since must be before --until",
        ),
        (["--max-replays", "0"], "--max-replays"),
    ],
)
def test_contradictory_command_lines_are_refused_before_connecting(
    args: list[str], message: str
) -> None:
    # An unreachable broker: any attempt to connect would fail differently.
    result = CliRunner().invoke(main, ["replay", *args, "--kafka-bootstrap-servers", "127.0.0.1:1"])
    assert result.exit_code == 2, result.output
    assert message in result.output
