"""The console's replays: dry run, confirmation, one replay at a time, the history and
the log, over the real `run_replay` with fakes of the broker and of the group's lock."""

from __future__ import annotations

import asyncio
import functools
from datetime import UTC, datetime, timedelta

import pytest
from structlog.testing import capture_logs

from tests.unit.replay.fakes import FakeGuard, FakeTopic, dead_letter, fake_settings
from usage_ingest.api.console.replays import (
    DRY_RUN_VALID,
    MAX_DRY_RUNS,
    REPLAYS_KEPT,
    ConsoleReplay,
    ConsoleReplays,
    DryRunOutdated,
    DryRunsBusy,
    ReplayBusy,
    ReplayRequest,
    RunState,
)
from usage_ingest.replay.run import run_replay
from usage_ingest.replay.selection import SkipReason

GROUP = "usage-ingest.replay"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 22, 12, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def mixed_topic() -> FakeTopic:
    return FakeTopic(
        [
            dead_letter("a", 0),
            dead_letter("b", 1),
            dead_letter("bad", 2, code="SCHEMA_VIOLATION"),
            dead_letter("c", 3, code="UNKNOWN_PRODUCT"),
        ]
    )


def console(
    topic: FakeTopic, guard: FakeGuard | None = None, clock: Clock | None = None
) -> ConsoleReplays:
    return ConsoleReplays(
        fake_settings(),
        guard or FakeGuard(),
        runner=functools.partial(run_replay, adapters=topic.adapters()),
        clock=clock or Clock(),
    )


async def settled(run: ConsoleReplay) -> ConsoleReplay:
    """Let the event loop run until `run` ended (the fakes never wait on anything else)."""
    for _ in range(1000):
        if run.state is not RunState.RUNNING:
            return run
        await asyncio.sleep(0)
    raise AssertionError(f"run {run.id} did not end")


async def dry_run(replays: ConsoleReplays, request: ReplayRequest | None = None) -> ConsoleReplay:
    return await settled(replays.start_dry_run(request or ReplayRequest(), "key-dry"))


async def test_a_dry_run_shows_what_would_be_replayed_and_publishes_nothing() -> None:
    topic = mixed_topic()
    run = await dry_run(console(topic))
    assert (run.state, run.dry_run, run.key_id) == (RunState.FINISHED, True, "key-dry")
    summary = run.summary
    assert (summary.scanned, summary.replayed, summary.dry_run) == (4, 3, True)
    assert summary.skipped[SkipReason.NOT_RETRYABLE] == 1
    assert [s.reference for s in summary.replayed_sample] == ["a", "b", "c"]
    assert run.starts == {0: 0}
    assert (topic.published, topic.committed) == ([], {})


async def test_confirm_replays_the_dry_runs_request_and_logs_it_with_the_key() -> None:
    topic = mixed_topic()
    replays = console(topic)
    dry = await dry_run(replays, ReplayRequest(codes=frozenset({"no_inventory"})))
    with capture_logs() as logs:
        replay = await settled(await replays.confirm(dry.id, "key-op"))
    assert (replay.state, replay.dry_run, replay.confirms) == (RunState.FINISHED, False, dry.id)
    assert replay.request == dry.request
    assert topic.published_references() == ["a", "b"]
    assert topic.committed == {0: 4}
    assert replays.latest() is replay
    assert replays.get(replay.id) is replay
    started, finished = (
        [e for e in logs if e["event"] == name]
        for name in ("console_replay_started", "console_replay_finished")
    )
    assert len(started) == len(finished) == 1
    for event in (started[0], finished[0]):
        assert (event["key_id"], event["run_id"], event["dry_run_id"]) == (
            "key-op",
            replay.id,
            dry.id,
        )
        assert event["filters"]["codes"] == ["NO_INVENTORY"]
    assert (finished[0]["scanned"], finished[0]["replayed"]) == (4, 2)
    assert finished[0]["skipped"] == {"code": 2}


async def test_confirm_replays_only_what_the_dry_run_read_and_leaves_later_ones() -> None:
    topic = mixed_topic()
    replays = console(topic)
    dry = await dry_run(replays)
    assert (dry.starts, dry.ends, dry.summary.total) == ({0: 0}, {0: 4}, 4)
    topic.records += [dead_letter("d", 4), dead_letter("e", 5)]  # refused after the dry run
    with capture_logs() as logs:
        replay = await settled(await replays.confirm(dry.id, "key-op"))
    assert topic.published_references() == ["a", "b", "c"]
    summary = replay.summary
    assert (summary.total, summary.scanned, summary.replayed) == (4, 4, dry.summary.replayed)
    assert (replay.ends, topic.committed) == ({0: 4}, {0: 4})
    (started,) = [e for e in logs if e["event"] == "console_replay_started"]
    assert (started["starts"], started["ends"]) == ({0: 0}, {0: 4})
    # the later dead letters wait for the next run, which shows them first
    later = await dry_run(replays)
    assert [s.reference for s in later.summary.replayed_sample] == ["d", "e"]


async def test_only_a_few_dry_runs_run_at_once_and_finished_ones_do_not_count() -> None:
    topic = mixed_topic()
    replays = console(topic)
    running = [replays.start_dry_run(ReplayRequest(), f"key-{i}") for i in range(MAX_DRY_RUNS)]
    with capture_logs() as logs, pytest.raises(DryRunsBusy, match="try again shortly"):
        replays.start_dry_run(ReplayRequest(), "key-late")
    (refused,) = [e for e in logs if e["event"] == "console_replay_dry_run_refused"]
    assert (refused["key_id"], refused["running"]) == ("key-late", MAX_DRY_RUNS)
    for run in running:
        await settled(run)
    assert topic.readers_started == MAX_DRY_RUNS, "the refused dry run read the topic"
    assert all(replays.get(run.id) is run for run in running)
    again = await dry_run(replays)  # the others finished: there is room again
    assert again.summary.replayed == 3


async def test_two_confirms_at_once_replay_once_and_the_other_is_told() -> None:
    topic = mixed_topic()
    topic.gate = asyncio.Event()  # the first replay waits in its first publish
    replays = console(topic)
    first_dry, second_dry = await dry_run(replays), await dry_run(replays)
    outcomes = await asyncio.gather(
        replays.confirm(first_dry.id, "key-1"),
        replays.confirm(second_dry.id, "key-2"),
        return_exceptions=True,
    )
    (running,) = [o for o in outcomes if isinstance(o, ConsoleReplay)]
    (busy,) = [o for o in outcomes if isinstance(o, ReplayBusy)]
    assert busy.running is running
    assert "is running" in str(busy)
    assert replays.latest() is running
    assert running.state is RunState.RUNNING
    topic.gate.set()
    await settled(running)
    assert sorted(topic.published_references()) == ["a", "b", "c"]


async def test_a_replay_held_by_another_process_is_busy_without_a_run() -> None:
    topic, guard = mixed_topic(), FakeGuard()
    replays = console(topic, guard)
    dry = await dry_run(replays)
    guard.holders.add(GROUP)  # `usage-ingest replay`, or another API
    with pytest.raises(ReplayBusy, match="already running") as refused:
        await replays.confirm(dry.id, "key-op")
    assert refused.value.running is None
    assert (replays.latest(), topic.published) == (None, [])
    guard.holders.clear()  # it finished (and did not move the group): confirm again
    replay = await settled(await replays.confirm(dry.id, "key-op"))
    assert replay.summary.replayed == 3


async def test_confirm_after_another_replay_moved_the_group_is_outdated() -> None:
    topic = mixed_topic()
    replays = console(topic)
    dry = await dry_run(replays)
    topic.committed = {0: 2}  # another replay ran since
    with pytest.raises(DryRunOutdated, match="no longer starts where the dry run did"):
        await replays.confirm(dry.id, "key-op")
    assert (topic.published, topic.committed, replays.latest()) == ([], {0: 2}, None)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("unknown", "no such dry run"),
        ("confirmed", "confirmed already"),
        ("expired", "no such dry run"),
        ("running", "has not finished"),
        ("a replay", "no such dry run"),
    ],
)
async def test_only_a_finished_fresh_dry_run_is_confirmed_and_only_once(
    case: str, message: str
) -> None:
    topic, clock = mixed_topic(), Clock()
    replays = console(topic, clock=clock)
    dry = await dry_run(replays)
    run_id = dry.id
    if case == "unknown":
        run_id = "nope"
    elif case == "confirmed":
        await settled(await replays.confirm(dry.id, "key-op"))
    elif case == "expired":
        clock.now += DRY_RUN_VALID + timedelta(seconds=1)
    elif case == "running":
        run_id = replays.start_dry_run(ReplayRequest(), "key-dry").id
    elif case == "a replay":
        run_id = (await settled(await replays.confirm(dry.id, "key-op"))).id
    published = list(topic.published)
    with pytest.raises(DryRunOutdated, match=message):
        await replays.confirm(run_id, "key-op")
    assert topic.published == published
    await replays.close()


async def test_an_expired_dry_run_is_forgotten() -> None:
    clock = Clock()
    replays = console(mixed_topic(), clock=clock)
    dry = await dry_run(replays)
    clock.now += DRY_RUN_VALID - timedelta(seconds=1)
    assert replays.get(dry.id) is dry
    clock.now += timedelta(seconds=2)
    assert replays.get(dry.id) is None


async def test_the_history_keeps_the_last_replays() -> None:
    topic = FakeTopic([])
    replays = console(topic)
    ids = []
    for _ in range(REPLAYS_KEPT + 3):
        dry = await dry_run(replays)
        ids.append((await settled(await replays.confirm(dry.id, "key-op"))).id)
    kept = [run_id for run_id in ids if replays.get(run_id) is not None]
    assert kept == ids[-REPLAYS_KEPT:]
    latest = replays.latest()
    assert latest is not None
    assert latest.id == ids[-1]


async def test_close_lets_the_batch_in_flight_finish_and_stops_the_replay() -> None:
    topic = FakeTopic([dead_letter(f"r{i}", i) for i in range(6)])  # three batches of two
    topic.gate = asyncio.Event()
    replays = console(topic)
    dry = await dry_run(replays)
    replay = await replays.confirm(dry.id, "key-op")
    await topic.publishing.wait()
    closing = asyncio.create_task(replays.close())
    await asyncio.sleep(0)
    topic.gate.set()
    await closing
    assert replay.state is RunState.FINISHED
    assert replay.summary.interrupted is True
    assert topic.published_references() == ["r0", "r1"]
    assert topic.committed == {0: 2}


async def test_a_lost_lock_fails_the_replay_with_its_reason() -> None:
    topic, guard = FakeTopic([dead_letter(f"r{i}", i) for i in range(6)]), FakeGuard()
    guard.lose_after_checks = 1
    replays = console(topic, guard)
    replay = await settled(await replays.confirm((await dry_run(replays)).id, "key-op"))
    assert replay.state is RunState.FAILED
    assert replay.error is not None
    assert "was lost" in replay.error
    assert topic.published_references() == ["r0", "r1"]


async def test_a_failure_before_the_replay_started_is_the_runs_error() -> None:
    topic = mixed_topic()
    replays = console(topic)
    dry = await dry_run(replays)
    topic.destination_exists = False
    replay = await settled(await replays.confirm(dry.id, "key-op"))
    assert replay.state is RunState.FAILED
    assert replay.error is not None
    assert "destination topic 'usage.events' does not exist" in replay.error
    assert replays.latest() is replay
    # nothing was replayed from the dry run: it may be confirmed again
    topic.destination_exists = True
    again = await settled(await replays.confirm(dry.id, "key-op"))
    assert (again.state, again.summary.replayed) == (RunState.FINISHED, 3)


def test_a_contradictory_request_is_refused_with_the_command_lines_words() -> None:
    request = ReplayRequest(
        codes=frozenset({"SCHEMA_VIOLATION"}),
        since=datetime(2026, 11, 22, 12, tzinfo=UTC),
        until=datetime(2026, 11, 22, 11, tzinfo=UTC),
        limit=0,
    )
    assert request.problems() == [
        "SCHEMA_VIOLATION is not retryable: add --all to replay such records anyway",
        "--since must be before --until",
        "--limit must be at least 1",
    ]
    with pytest.raises(ValueError, match="not retryable"):
        console(mixed_topic()).start_dry_run(request, "key-dry")
