"""One replay per replay group at a time, and a replay that starts only where its dry run
did: `run_replay` and the loop with fakes of the broker and of the group's lock."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

from tests.unit.replay.fakes import EVENTS, FakeGuard, FakeTopic, dead_letter, fake_settings
from usage_ingest.cli import main
from usage_ingest.errors import ReplayOutdated, ReplayRunning
from usage_ingest.replay.run import ReplayPlan, ReplaySummary, replay_plan, run_replay
from usage_ingest.replay.selection import Selection

GROUP = "usage-ingest.replay"


def five_letters() -> FakeTopic:
    return FakeTopic([dead_letter(f"r{i}", offset=i) for i in range(5)])


def plan(dry_run: bool = False) -> ReplayPlan:
    return replay_plan(fake_settings(), destination=EVENTS, selection=Selection(), dry_run=dry_run)


async def run(topic: FakeTopic, guard: FakeGuard | None, **kwargs: Any) -> ReplaySummary:
    values: dict[str, Any] = {"plan": plan()}
    values.update(kwargs)
    return await run_replay(
        fake_settings(),
        source="usage.events.dlq",
        group_id=GROUP,
        guard=guard,
        adapters=topic.adapters(),
        **values,
    )


async def test_a_replay_holds_the_group_lock_while_it_publishes_and_frees_it_after() -> None:
    topic, guard = five_letters(), FakeGuard()
    held_while_publishing: list[bool] = []

    def on_progress(_summary: ReplaySummary) -> None:
        held_while_publishing.append(GROUP in guard.holders)

    summary = await run(topic, guard, progress=on_progress)
    assert summary.replayed == 5
    assert topic.published_references() == [f"r{i}" for i in range(5)]
    assert guard.taken == [GROUP]
    assert held_while_publishing == [True, True, True]  # three batches of two
    assert guard.holders == set()


async def test_a_second_replay_of_the_group_is_refused_before_reading() -> None:
    topic, guard = five_letters(), FakeGuard()
    guard.holders.add(GROUP)  # another process replays this group
    with pytest.raises(ReplayRunning, match=r"a replay of group 'usage-ingest\.replay' is already"):
        await run(topic, guard)
    assert (topic.readers_started, topic.published, topic.committed) == (0, [], {})
    assert guard.holders == {GROUP}, "the refused run released a lock it did not hold"


async def test_another_group_is_not_held_back() -> None:
    topic, guard = five_letters(), FakeGuard()
    guard.holders.add("ops-4711")
    assert (await run(topic, guard)).replayed == 5


async def test_a_dry_run_takes_no_lock() -> None:
    topic, guard = five_letters(), FakeGuard()
    guard.holders.add(GROUP)
    summary = await run(topic, guard, plan=plan(dry_run=True))
    assert (summary.replayed, guard.taken, topic.published) == (5, [], [])
    summary = await run(topic, None, plan=plan(dry_run=True))
    assert summary.starts == {0: 0}


async def test_a_replay_without_a_guard_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="needs a guard"):
        await run(five_letters(), None)


async def test_a_lost_lock_stops_the_run_before_the_next_batch_is_published() -> None:
    topic, guard = five_letters(), FakeGuard()
    guard.lose_after_checks = 1  # the connection drops after the first batch
    summary = await run(topic, guard)
    assert topic.published_references() == ["r0", "r1"]
    assert topic.committed == {0: 2}
    assert (summary.scanned, summary.replayed, summary.interrupted) == (2, 2, True)
    assert summary.stopped_because is not None
    assert "lock of replay group 'usage-ingest.replay' was lost" in summary.stopped_because
    assert guard.holders == set()


async def test_expected_starts_equal_to_the_group_positions_replay() -> None:
    topic, guard = five_letters(), FakeGuard()
    topic.committed = {0: 3}
    dry = await run(topic, None, plan=plan(dry_run=True))
    assert dry.starts == {0: 3}
    summary = await run(topic, guard, expected_starts=dry.starts)
    assert topic.published_references() == ["r3", "r4"]
    assert summary.starts == {0: 3}


async def test_expected_starts_that_moved_refuse_the_run_without_publishing() -> None:
    topic, guard = five_letters(), FakeGuard()
    dry = await run(topic, None, plan=plan(dry_run=True))
    topic.committed = {0: 4}  # another replay ran since the dry run
    with pytest.raises(ReplayOutdated, match=r"partition 0: 0 then, 4 now"):
        await run(topic, guard, expected_starts=dry.starts)
    assert (topic.published, topic.committed) == ([], {0: 4})
    assert guard.holders == set()


async def test_expected_starts_of_other_partitions_refuse_the_run() -> None:
    topic = FakeTopic([dead_letter("a", 0), dead_letter("b", 0, partition=1)])
    with pytest.raises(ReplayOutdated, match=r"partition 1: none then, 0 now"):
        await run(topic, FakeGuard(), expected_starts={0: 0})
    assert topic.published == []


async def test_expected_ends_replay_only_what_the_dry_run_read() -> None:
    topic, guard = five_letters(), FakeGuard()
    dry = await run(topic, None, plan=plan(dry_run=True))
    assert (dry.ends, dry.total) == ({0: 5}, 5)
    topic.records += [dead_letter(f"r{i}", offset=i) for i in range(5, 8)]  # arrived since
    summary = await run(topic, guard, expected_starts=dry.starts, expected_ends=dry.ends)
    assert topic.published_references() == [f"r{i}" for i in range(5)]
    assert (summary.total, summary.scanned, summary.replayed) == (5, 5, 5)
    assert (summary.ends, topic.committed) == ({0: 5}, {0: 5})
    # the later dead letters were not committed past: the next run replays them
    rest = await run(topic, guard)
    assert (rest.starts, rest.ends, rest.replayed) == ({0: 5}, {0: 8}, 3)
    assert topic.published_references() == [f"r{i}" for i in range(8)]


async def test_without_expected_ends_a_run_reads_to_the_end_the_topic_has_now() -> None:
    topic, guard = five_letters(), FakeGuard()
    dry = await run(topic, None, plan=plan(dry_run=True))
    topic.records.append(dead_letter("r5", offset=5))
    summary = await run(topic, guard, expected_starts=dry.starts)
    assert (summary.total, summary.replayed, topic.committed) == (6, 6, {0: 6})


async def test_expected_ends_beyond_the_topics_end_refuse_the_run() -> None:
    topic, guard = five_letters(), FakeGuard()  # the topic was recreated: it ends earlier
    with pytest.raises(ReplayOutdated, match=r"partition 0: ended at 9 then, at 5 now"):
        await run(topic, guard, expected_starts={0: 0}, expected_ends={0: 9})
    assert (topic.published, topic.committed, guard.holders) == ([], {}, set())


async def test_expected_ends_without_a_partition_of_the_topic_refuse_the_run() -> None:
    topic = FakeTopic([dead_letter("a", 0), dead_letter("b", 0, partition=1)])
    with pytest.raises(ReplayOutdated, match=r"partition 1: ended at none then, at 1 now"):
        await run(topic, FakeGuard(), expected_ends={0: 1})
    assert topic.published == []


def test_the_command_line_needs_the_database_for_a_replay_and_says_so_in_one_line() -> None:
    # Nothing listens on port 1: the lock cannot be taken, nothing is read.
    result = CliRunner().invoke(
        main,
        [
            "replay",
            "--kafka-bootstrap-servers",
            "127.0.0.1:1",
            "--database-url",
            "postgresql://nobody@127.0.0.1:1/nothing",
        ],
    )
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert "cannot reach the database to lock replay group 'usage-ingest.replay'" in lines[0]
