"""One replay per replay group at a time, with the real broker and Postgres: the
console's confirmations against each other and against `usage-ingest replay`, a
confirmation after another replay moved the group, one after more dead letters arrived,
and a lock lost mid-run.

The dead letters are written straight to the dead-letter topic (no worker runs), so
every record on the input topic is one a replay sent: counting them shows what was
replayed, and how often. A replay that must still be running while the test acts holds
its first publish at a gate (`Gated`, around the real producer): it then holds the
group's lock in Postgres until the test opens the gate.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import asyncpg
import pytest

from tests.support.broker import produce_values, read_topic
from tests.support.cli import run_cli
from tests.support.settings import make_settings
from tests.support.waiting import eventually
from usage_ingest.api.console.replays import (
    ConsoleReplay,
    ConsoleReplays,
    DryRunOutdated,
    ReplayBusy,
    ReplayRequest,
    RunState,
)
from usage_ingest.domain.records import OutputRecord
from usage_ingest.kafka.admin import ensure_topics
from usage_ingest.kafka.producer import OutputProducer
from usage_ingest.replay.run import ReplayAdapters, ReplaySink, run_replay
from usage_ingest.settings import Settings
from usage_ingest.store.store import Store, open_store

pytestmark = pytest.mark.timeout(120)

LETTERS = 5


class Gated:
    """The real producer, whose publishes wait until `gate` is set; `waiting` is set
    once a publish waits there (its batch's lock check is behind it)."""

    def __init__(
        self, producer: OutputProducer, gate: asyncio.Event, waiting: asyncio.Event
    ) -> None:
        self.producer = producer
        self.gate = gate
        self.waiting = waiting

    async def start(self) -> None:
        await self.producer.start()

    async def stop(self) -> None:
        await self.producer.stop()

    async def publish(self, records: Sequence[OutputRecord]) -> list[OutputRecord]:
        self.waiting.set()
        await self.gate.wait()
        return await self.producer.publish(records)


@dataclass
class World:
    settings: Settings
    database_url: str
    gate: asyncio.Event
    waiting: asyncio.Event
    stores: list[Store]
    consoles: list[ConsoleReplays]

    async def console(self) -> ConsoleReplays:
        """The console of one more API process: a pool of its own, so a session of its own."""
        store = await open_store(self.settings)
        self.stores.append(store)

        def gated(settings: Settings) -> ReplaySink:
            return Gated(OutputProducer(settings), self.gate, self.waiting)

        runner = functools.partial(run_replay, adapters=ReplayAdapters(producer=gated))
        replays = ConsoleReplays(self.settings, store, runner=runner)
        self.consoles.append(replays)
        return replays

    def env(self) -> dict[str, str]:
        s = self.settings
        return {
            "USAGE_INGEST_DATABASE_URL": self.database_url,
            "USAGE_INGEST_KAFKA_BOOTSTRAP_SERVERS": s.kafka_bootstrap_servers,
            "USAGE_INGEST_GROUP_ID": s.group_id,
            "USAGE_INGEST_TOPIC_EVENTS": s.topic_events,
            "USAGE_INGEST_TOPIC_DLQ": s.topic_dlq,
            "USAGE_INGEST_RETRY_INITIAL_BACKOFF_S": "0.05",
            "USAGE_INGEST_RETRY_MAX_BACKOFF_S": "0.5",
        }

    async def replayed(self, expected: int) -> Counter[str]:
        """How often each reference arrived on the input topic."""
        records = await read_topic(self.settings.kafka_bootstrap_servers, self.topic, expected)
        return Counter(json.loads(r.value or b"")["externalReference"] for r in records)

    @property
    def topic(self) -> str:
        return self.settings.topic_events


async def produce_letters(settings: Settings, references: Sequence[str]) -> None:
    """Dead letters of retryable refusals, straight onto the dead-letter topic."""
    headers = [
        ("usage-ingest.error.code", b"NO_INVENTORY"),
        ("usage-ingest.error.retryable", b"true"),
        ("usage-ingest.replay-count", b"0"),
    ]
    await produce_values(
        settings.kafka_bootstrap_servers,
        settings.topic_dlq,
        [json.dumps({"externalReference": r}).encode() for r in references],
        keys=[r.encode() for r in references],
        headers=[headers] * len(references),
    )


@pytest.fixture
async def world(kafka_bootstrap: str, database_url: str) -> AsyncIterator[World]:
    # Batches of two: a run of five dead letters publishes three batches.
    settings = make_settings(kafka_bootstrap, database_url, batch_max_records=2)
    await ensure_topics(settings, [settings.topic_events, settings.topic_dlq])
    await produce_letters(settings, [f"dl-{i}" for i in range(LETTERS)])
    world = World(settings, database_url, asyncio.Event(), asyncio.Event(), [], [])
    yield world
    world.gate.set()
    for replays in world.consoles:
        await replays.close()
    for store in world.stores:
        await store.close()


async def dry_run(replays: ConsoleReplays) -> ConsoleReplay:
    run = replays.start_dry_run(ReplayRequest(), "key-dry")
    await eventually(lambda: run.state is not RunState.RUNNING, 30, "the dry run ended")
    assert run.state is RunState.FINISHED, run.error
    assert run.summary.replayed == LETTERS
    return run


async def finished(run: ConsoleReplay) -> ConsoleReplay:
    await eventually(lambda: run.state is not RunState.RUNNING, 60, f"replay {run.id} ended")
    return run


async def test_two_consoles_confirming_at_once_replay_each_dead_letter_once(world: World) -> None:
    first, second = await world.console(), await world.console()
    dry_1, dry_2 = await dry_run(first), await dry_run(second)
    outcomes = await asyncio.gather(
        first.confirm(dry_1.id, "key-1"), second.confirm(dry_2.id, "key-2"), return_exceptions=True
    )
    (running,) = [o for o in outcomes if isinstance(o, ConsoleReplay)]
    (busy,) = [o for o in outcomes if isinstance(o, ReplayBusy)]
    assert busy.running is None, "the other process's replay is not this console's"
    assert "is already running" in str(busy)
    world.gate.set()
    assert (await finished(running)).state is RunState.FINISHED
    assert running.summary.replayed == LETTERS
    assert await world.replayed(LETTERS) == {f"dl-{i}": 1 for i in range(LETTERS)}


async def test_the_command_line_is_refused_while_a_console_replay_runs(world: World) -> None:
    replays = await world.console()
    running = await replays.confirm((await dry_run(replays)).id, "key-op")
    refused = await run_cli(world.env(), "replay")
    assert refused.returncode == 1, refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1, refused.stderr
    assert f"a replay of group '{world.settings.group_id}.replay' is already running" in lines[0]
    # a dry run needs no lock
    dry = await run_cli(world.env(), "replay", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["replayed"] == LETTERS
    world.gate.set()
    assert (await finished(running)).summary.replayed == LETTERS
    assert await world.replayed(LETTERS) == {f"dl-{i}": 1 for i in range(LETTERS)}


async def test_a_confirmation_after_another_replay_moved_the_group_is_outdated(
    world: World,
) -> None:
    replays = await world.console()
    dry = await dry_run(replays)
    other = await run_cli(world.env(), "replay", "--limit", "1", "--json")
    assert other.returncode == 0, other.stderr
    assert json.loads(other.stdout)["replayed"] == 1
    world.gate.set()
    with pytest.raises(DryRunOutdated, match="no longer starts where the dry run did"):
        await replays.confirm(dry.id, "key-op")
    assert replays.latest() is None
    assert await world.replayed(1) == {"dl-0": 1}


async def test_a_confirmation_replays_what_its_dry_run_read_not_what_arrived_since(
    world: World,
) -> None:
    replays = await world.console()
    dry = await dry_run(replays)
    later = [f"late-{i}" for i in range(3)]
    await produce_letters(world.settings, later)
    world.gate.set()
    replay = await finished(await replays.confirm(dry.id, "key-op"))
    assert replay.state is RunState.FINISHED, replay.error
    assert (replay.summary.total, replay.summary.replayed) == (LETTERS, LETTERS)
    assert replay.summary.committed == {0: LETTERS}
    assert await world.replayed(LETTERS) == {f"dl-{i}": 1 for i in range(LETTERS)}
    # the later dead letters were not committed past: a plain replay sends them
    rest = await run_cli(world.env(), "replay", "--json")
    assert rest.returncode == 0, rest.stderr
    assert json.loads(rest.stdout)["replayed"] == len(later)
    expected = {f"dl-{i}": 1 for i in range(LETTERS)} | dict.fromkeys(later, 1)
    assert await world.replayed(LETTERS + len(later)) == expected


async def test_a_replay_whose_lock_connection_dies_stops_before_its_next_batch(
    world: World,
) -> None:
    replays = await world.console()
    running = await replays.confirm((await dry_run(replays)).id, "key-op")
    await asyncio.wait_for(world.waiting.wait(), 30)  # its first batch passed the check
    conn = await asyncpg.connect(world.database_url)
    try:
        holders = await conn.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory'"
            " AND granted AND pid <> pg_backend_pid()"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )
    finally:
        await conn.close()
    assert len(holders) == 1
    world.gate.set()  # the batch in flight was checked already: it goes out
    assert (await finished(running)).state is RunState.FAILED
    assert running.error is not None
    assert "was lost" in running.error
    assert (running.summary.replayed, running.summary.committed) == (2, {0: 2})
    # the group is free again: the next replay sends the rest
    rest = await run_cli(world.env(), "replay", "--json")
    assert rest.returncode == 0, rest.stderr
    assert json.loads(rest.stdout)["replayed"] == LETTERS - 2
    assert await world.replayed(LETTERS) == {f"dl-{i}": 1 for i in range(LETTERS)}
