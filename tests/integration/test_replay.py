"""`usage-ingest replay` against the real worker, broker and Postgres.

Dead letters here are written by the real worker. The replay itself is the
real console script, run as an operator runs it (a subprocess configured with
`USAGE_INGEST_*` variables), except in the crash test, which drives the same
replay loop in-process so it can stop it between "published" and "committed".

Four worlds, each with its own database, topics and groups:

* `seeded` (module-wide, worker stopped once the dead letters are written):
  the filters, each test replaying into a destination topic of its own with a
  replay group of its own, so the tests do not see each other;
* the NO_INVENTORY story of the issue, with the worker running;
* a record that can never succeed, to show that --max-replays ends the loop;
* a crash between publish and commit.

Log ends come from fetch responses (the replay reader's high watermark), not
ListOffsets, which the embedded broker under-reports (DESIGN.md).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tests.support.api import add_key
from tests.support.database import (
    DEMO_REFERENCE,
    LATE_INVENTORY,
    LATE_PRODUCT,
    create_database,
)
from tests.support.settings import make_settings
from tests.support.worker import RunningWorker
from usage_ingest.api.app import create_app
from usage_ingest.api.keys import Permission
from usage_ingest.domain.records import InputRecord, Partition
from usage_ingest.domain.reference import ReferenceFile, read_reference_file
from usage_ingest.kafka.admin import ensure_topics
from usage_ingest.kafka.producer import OutputProducer
from usage_ingest.kafka.replay_reader import ReplayReader
from usage_ingest.replay.run import ReplayPlan, ReplaySummary, replay
from usage_ingest.settings import Settings
from usage_ingest.store.store import Store, open_store

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

PROJECT = Path(__file__).parents[2]
EXE = str(Path(sys.executable).parent / "usage-ingest")
INPUT_PARTITIONS = 3

H_CODE = "usage-ingest.error.code"
H_COUNT = "usage-ingest.replay-count"
H_REPLAYED_AT = "usage-ingest.replayed-at"
FAILURE_HEADERS = {
    H_CODE,
    "usage-ingest.error.message",
    "usage-ingest.error.retryable",
    "usage-ingest.source.topic",
    "usage-ingest.source.partition",
    "usage-ingest.source.offset",
    "usage-ingest.failed-at",
}


def usage(reference: str, product: str = "late.usage", **fields: Any) -> bytes:
    body: dict[str, Any] = {
        "externalReference": reference,
        "contractId": 1,
        "productIdent": product,
        "startDate": "2026-03-02T10:00:00Z",
        "endDate": "2026-03-02T10:05:00Z",
        "unitQuantities": [{"unit": "minute", "quantity": "5"}],
    }
    body.update(fields)
    return json.dumps(body).encode()


@dataclass(frozen=True)
class Sent:
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


def keyed(reference: str, value: bytes, *headers: tuple[str, bytes]) -> Sent:
    return Sent(reference.encode(), value, headers)


def late(reference: str, *headers: tuple[str, bytes]) -> Sent:
    """Refused NO_INVENTORY until LATE_INVENTORY is loaded."""
    return keyed(reference, usage(reference), *headers)


def schema_invalid(reference: str) -> Sent:
    return keyed(reference, usage(reference, endDate="2026-03-02T09:00:00Z"))


def unknown_product(reference: str) -> Sent:
    return keyed(reference, usage(reference, product="never.usage"))


# --- topics ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Read:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]

    def header(self, name: str) -> list[str]:
        return [v.decode() for k, v in self.headers if k == name]

    @property
    def reference(self) -> str:
        try:
            return str(json.loads(self.value or b"")["externalReference"])
        except (ValueError, KeyError, TypeError):
            return (self.key or b"").decode()

    def outcome(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.value or b"")
        return result


async def send(bootstrap: str, topic: str, records: Iterable[Sent]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    await producer.start()
    try:
        futures = [
            await producer.send(topic, r.value, key=r.key, headers=list(r.headers)) for r in records
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def read_all(
    bootstrap: str, topic: str, expected: int, timeout: float = 30.0, settle: float = 0.3
) -> list[Read]:
    """Every record of `topic`, in (partition, offset) order, once at least `expected`
    arrived and nothing more came for `settle` seconds."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    found: list[Read] = []
    loop = asyncio.get_running_loop()
    try:
        deadline = loop.time() + timeout
        quiet_since: float | None = None
        while loop.time() < deadline:
            batch = await consumer.getmany(timeout_ms=100)
            new = [
                Read(r.topic, r.partition, r.offset, r.key, r.value, tuple(r.headers or ()))
                for records in batch.values()
                for r in records
            ]
            found.extend(new)
            if new or len(found) < expected:
                quiet_since = None
                continue
            quiet_since = quiet_since or loop.time()
            if loop.time() - quiet_since >= settle:
                break
    finally:
        await consumer.stop()
    assert len(found) >= expected, f"{topic}: {len(found)} of {expected} records"
    return sorted(found, key=lambda r: (r.partition, r.offset))


async def group_offsets(settings: Settings, group: str, topic: str) -> dict[int, int | None]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=group,
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        partitions = sorted(consumer.partitions_for_topic(topic) or [0])
        return {p: await consumer.committed(TopicPartition(topic, p)) for p in partitions}
    finally:
        await consumer.stop()


# --- a world: database, topics, worker ---------------------------------------------------


@dataclass
class World:
    settings: Settings
    database_url: str
    started: datetime
    worker: RunningWorker | None = None
    sent: list[Sent] = field(default_factory=list)

    @property
    def bootstrap(self) -> str:
        return self.settings.kafka_bootstrap_servers

    @property
    def default_replay_group(self) -> str:
        return f"{self.settings.group_id}.replay"

    def env(self) -> dict[str, str]:
        """The environment of an operator pointing usage-ingest at this world."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("USAGE_INGEST_")}
        s = self.settings
        env.update(
            {
                "USAGE_INGEST_KAFKA_BOOTSTRAP_SERVERS": s.kafka_bootstrap_servers,
                "USAGE_INGEST_DATABASE_URL": self.database_url,
                "USAGE_INGEST_GROUP_ID": s.group_id,
                "USAGE_INGEST_TOPIC_EVENTS": s.topic_events,
                "USAGE_INGEST_TOPIC_ACCEPTED": s.topic_accepted,
                "USAGE_INGEST_TOPIC_REJECTED": s.topic_rejected,
                "USAGE_INGEST_TOPIC_DLQ": s.topic_dlq,
                "USAGE_INGEST_RETRY_INITIAL_BACKOFF_S": "0.05",
                "USAGE_INGEST_RETRY_MAX_BACKOFF_S": "0.5",
            }
        )
        return env

    async def load(self, reference: dict[str, Any]) -> None:
        store = await open_store(self.settings)
        try:
            await store.load_reference(ReferenceFile.model_validate(reference))
        finally:
            await store.close()

    async def rows(self) -> dict[str, dict[str, Any]]:
        conn = await asyncpg.connect(self.database_url)
        try:
            rows = await conn.fetch("SELECT * FROM usages ORDER BY id")
        finally:
            await conn.close()
        return {row["external_reference"]: dict(row) for row in rows}

    async def topic(self, name: str, expected: int = 0) -> list[Read]:
        return await read_all(self.bootstrap, name, expected)

    async def new_topic(self) -> str:
        name = f"dest-{uuid.uuid4().hex[:8]}"
        await ensure_topics(self.settings, [name])
        return name

    async def replay(self, *args: str, json_out: bool = True) -> subprocess.CompletedProcess[str]:
        command = [EXE, "replay", *(["--json"] if json_out else []), *args]
        result = await asyncio.to_thread(
            subprocess.run,
            command,
            env=self.env(),
            cwd=PROJECT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, f"{' '.join(command)}: {result.stderr}"
        return result

    async def replay_json(self, *args: str) -> dict[str, Any]:
        summary: dict[str, Any] = json.loads((await self.replay(*args)).stdout)
        assert summary["scanned"] == summary["replayed"] + sum(summary["skipped"].values())
        assert summary["matched"] == summary["replayed"] + summary["skipped"]["max-replays"]
        return summary


async def open_world(
    kafka_bootstrap: str,
    postgres_admin_url: str,
    sent: list[Sent],
    dlq_partitions: int = 1,
) -> World:
    """A fresh world with the demo data and product 'late.usage' (no inventory); `sent`
    is produced and the worker runs until every record has its dead letter."""
    database_url = await create_database(postgres_admin_url)
    settings = make_settings(kafka_bootstrap, database_url)
    await ensure_topics(settings, [settings.topic_events], partitions=INPUT_PARTITIONS)
    await ensure_topics(settings, [settings.topic_dlq], partitions=dlq_partitions)
    await ensure_topics(settings, settings.output_topics)
    world = World(settings, database_url, datetime.now(UTC), sent=sent)
    store = await open_store(settings)
    try:
        await store.load_reference(read_reference_file(DEMO_REFERENCE))
        await store.load_reference(ReferenceFile.model_validate(LATE_PRODUCT))
    finally:
        await store.close()
    await send(kafka_bootstrap, settings.topic_events, sent)
    world.worker = RunningWorker(settings).start()
    await world.topic(settings.topic_dlq, len(sent))
    return world


@pytest.fixture
async def worlds() -> AsyncIterator[list[World]]:
    """Worlds opened by a test; their workers are stopped (or crashed) afterwards."""
    opened: list[World] = []
    yield opened
    for world in opened:
        worker = world.worker
        if worker is not None and worker.task is not None and not worker.task.done():
            await worker.crash()


# --- the seeded dead-letter topic, for the filters ---------------------------------------

SEEDED = [
    *(late(f"late-{i:02d}") for i in range(1, 9)),
    late("late-tagged", ("origin", b"crm"), ("trace", b"t-1"), ("origin", b"second")),
    schema_invalid("bad-1"),
    unknown_product("never-1"),
    Sent(b"garbage-key", b"this is not json"),
]
SEEDED_RETRYABLE = 10  # the nine NO_INVENTORY and the UNKNOWN_PRODUCT


@dataclass
class Seeded:
    world: World
    dead: list[Read]  # the dead-letter topic, in (partition, offset) order
    finished: datetime

    def dead_of(self, reference: str) -> Read:
        (found,) = [d for d in self.dead if d.reference == reference]
        return found


@pytest.fixture(scope="module")
async def seeded(kafka_bootstrap: str, postgres_admin_url: str) -> AsyncIterator[Seeded]:
    world = await open_world(kafka_bootstrap, postgres_admin_url, SEEDED, dlq_partitions=3)
    try:
        dead = await world.topic(world.settings.topic_dlq, len(SEEDED))
        assert world.worker is not None
        await world.worker.stop()
        assert len(dead) == len(SEEDED)
        assert len({d.partition for d in dead}) > 1, "precondition: several DLQ partitions"
        yield Seeded(world, dead, datetime.now(UTC))
    finally:
        if world.worker is not None and world.worker.task and not world.worker.task.done():
            await world.worker.crash()


async def replay_to_new_topic(seeded: Seeded, *args: str) -> tuple[dict[str, Any], list[Read]]:
    """Replay into a topic of its own with a replay group of its own; what arrived there."""
    world = seeded.world
    destination = await world.new_topic()
    group = f"rg-{uuid.uuid4().hex[:8]}"
    summary = await world.replay_json(
        "--destination", destination, "--replay-group-id", group, *args
    )
    assert summary["group"] == group
    arrived = await world.topic(destination, summary["replayed"])
    assert len(arrived) == summary["replayed"]
    return summary, arrived


async def test_dry_run_lists_what_would_be_replayed_and_changes_nothing(seeded: Seeded) -> None:
    world = seeded.world
    settings = world.settings
    inputs_before = await world.topic(settings.topic_events, len(SEEDED))
    summary = await world.replay_json("--dry-run", "--show", "3")
    assert summary["dryRun"] is True
    assert (summary["scanned"], summary["matched"], summary["replayed"]) == (
        len(SEEDED),
        SEEDED_RETRYABLE,
        SEEDED_RETRYABLE,
    )
    assert summary["replayedByCode"] == {"NO_INVENTORY": 9, "UNKNOWN_PRODUCT": 1}
    assert summary["skipped"]["not-retryable"] == 2
    retryable = {
        (d.partition, d.offset): d.reference
        for d in seeded.dead
        if d.header("usage-ingest.error.retryable") == ["true"]
    }
    listed = summary["replayedRecords"]
    assert len(listed) == 3
    for record in listed:
        assert retryable[(record["partition"], record["offset"])] == record["externalReference"]
    assert summary["committed"] == {}
    # nothing was published, nothing was committed, nothing was stored
    assert await world.topic(settings.topic_events, len(SEEDED)) == inputs_before
    assert set(
        (await group_offsets(settings, world.default_replay_group, settings.topic_dlq)).values()
    ) == {None}
    assert await world.rows() == {}
    # so the same selection still finds everything; partitions are read in any order,
    # each one in offset order
    again = await world.replay_json("--dry-run")
    assert again["replayed"] == SEEDED_RETRYABLE
    listed = [(r["partition"], r["offset"]) for r in again["replayedRecords"]]
    assert sorted(listed) == sorted(retryable)
    for partition in {p for p, _ in listed}:
        in_partition = [o for p, o in listed if p == partition]
        assert in_partition == sorted(in_partition)


async def test_replayed_record_is_the_original_with_replay_headers(seeded: Seeded) -> None:
    before = datetime.now(UTC)
    summary, arrived = await replay_to_new_topic(seeded, "--external-reference", "late-tagged")
    assert summary["replayed"] == 1
    assert summary["skipped"]["external-reference"] == SEEDED_RETRYABLE - 1
    (record,) = arrived
    letter = seeded.dead_of("late-tagged")
    assert (record.key, record.value) == (letter.key, letter.value)
    assert record.key == b"late-tagged"
    assert record.value == usage("late-tagged")
    assert record.headers[:3] == (("origin", b"crm"), ("trace", b"t-1"), ("origin", b"second"))
    assert [k for k, _ in record.headers] == ["origin", "trace", "origin", H_COUNT, H_REPLAYED_AT]
    assert record.header(H_COUNT) == ["1"]
    replayed_at = datetime.fromisoformat(record.header(H_REPLAYED_AT)[0].replace("Z", "+00:00"))
    assert before - timedelta(seconds=1) <= replayed_at <= datetime.now(UTC)
    assert not {k for k, _ in record.headers} & FAILURE_HEADERS


async def test_external_reference_picks_exactly_those_records(seeded: Seeded) -> None:
    summary, arrived = await replay_to_new_topic(
        seeded, "--external-reference", "late-03", "--external-reference", "never-1"
    )
    assert sorted(r.reference for r in arrived) == ["late-03", "never-1"]
    assert summary["scanned"] == len(SEEDED)


async def test_schema_invalid_records_are_not_replayed_unless_asked(seeded: Seeded) -> None:
    summary, arrived = await replay_to_new_topic(seeded)
    assert sorted(r.reference for r in arrived) == sorted(
        d.reference for d in seeded.dead if d.header("usage-ingest.error.retryable") == ["true"]
    )
    assert "bad-1" not in {r.reference for r in arrived}
    assert summary["skipped"]["not-retryable"] == 2
    # --all with the code: exactly the schema-invalid record
    summary, arrived = await replay_to_new_topic(seeded, "--all", "--code", "SCHEMA_VIOLATION")
    assert [r.reference for r in arrived] == ["bad-1"]
    assert summary["skipped"]["code"] == len(SEEDED) - 1


async def test_limit_replays_n_and_the_next_run_continues(seeded: Seeded) -> None:
    world = seeded.world
    destination = await world.new_topic()
    group = f"rg-{uuid.uuid4().hex[:8]}"
    common = ("--destination", destination, "--replay-group-id", group)
    first = await world.replay_json(*common, "--limit", "4")
    assert first["replayed"] == 4
    assert first["limitReached"] is True
    assert first["scanned"] < len(SEEDED)
    second = await world.replay_json(*common)
    assert second["replayed"] == SEEDED_RETRYABLE - 4
    assert second["limitReached"] is False
    assert first["scanned"] + second["scanned"] == len(SEEDED)
    arrived = await world.topic(destination, SEEDED_RETRYABLE)
    references = Counter(r.reference for r in arrived)
    assert len(arrived) == SEEDED_RETRYABLE
    assert set(references.values()) == {1}, "a record was replayed twice"
    assert {r["externalReference"] for r in first["replayedRecords"]}.isdisjoint(
        r["externalReference"] for r in second["replayedRecords"]
    )


async def test_partition_and_offset_pick_a_range(seeded: Seeded) -> None:
    by_partition = Counter(d.partition for d in seeded.dead)
    partition = max(by_partition, key=lambda p: by_partition[p])
    assert by_partition[partition] >= 3, "precondition: a partition with three dead letters"
    summary, arrived = await replay_to_new_topic(
        seeded, "--all", "--partition", str(partition), "--offset", "1"
    )
    expected = [d for d in seeded.dead if d.partition == partition and d.offset >= 1]
    assert [(r.key, r.value) for r in arrived] == [(d.key, d.value) for d in expected]
    assert summary["committed"] == {str(partition): by_partition[partition]}
    offsets = await group_offsets(
        seeded.world.settings, summary["group"], seeded.world.settings.topic_dlq
    )
    assert offsets == {p: (by_partition[p] if p == partition else None) for p in range(3)}


async def test_an_offset_past_the_end_is_refused(seeded: Seeded) -> None:
    world = seeded.world
    result = await asyncio.to_thread(
        subprocess.run,
        [EXE, "replay", "--partition", "0", "--offset", "999", "--dry-run"],
        env=world.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "offset beyond the end of partition 0" in result.stderr


async def test_time_window(seeded: Seeded) -> None:
    before = (seeded.world.started - timedelta(seconds=1)).isoformat()
    summary, arrived = await replay_to_new_topic(seeded, "--until", before)
    assert (summary["replayed"], arrived) == (0, [])
    assert summary["skipped"]["time-window"] == SEEDED_RETRYABLE
    after = (seeded.finished + timedelta(seconds=1)).isoformat()
    summary, arrived = await replay_to_new_topic(
        seeded, "--since", before, "--until", after, "--time-field", "record"
    )
    assert summary["replayed"] == SEEDED_RETRYABLE
    assert len(arrived) == SEEDED_RETRYABLE


# --- the story of the issue --------------------------------------------------------------


async def test_no_inventory_replayed_after_the_fix_is_stored_exactly_once(
    kafka_bootstrap: str, postgres_admin_url: str, worlds: list[World]
) -> None:
    sent = [late(f"ni-{i}") for i in range(1, 7)] + [schema_invalid("ni-bad")]
    world = await open_world(kafka_bootstrap, postgres_admin_url, sent)
    worlds.append(world)
    settings = world.settings
    refused = await world.topic(settings.topic_rejected, len(sent))
    assert Counter(r.outcome()["errors"][0]["code"] for r in refused) == {
        "NO_INVENTORY": 6,
        "SCHEMA_VIOLATION": 1,
    }
    assert await world.rows() == {}

    await world.load(LATE_INVENTORY)
    first = await world.replay("--code", "NO_INVENTORY", json_out=False)
    assert "replay: scanned 7/7, matched 6, replayed 6" in first.stderr
    table = first.stdout
    assert f"Replay of {settings.topic_dlq} -> {settings.topic_events}" in table
    for row in (
        "│ scanned                     │     7 │",
        "│ matched                     │     6 │",
        "│ replayed                    │     6 │",
        "│   NO_INVENTORY              │     6 │",
        "│ skipped: code               │     1 │",
        "│ skipped: max-replays        │     0 │",
    ):
        assert row in table, table
    assert f"committed for {world.default_replay_group}: 0: 7" in table

    # the worker treats each replayed record as a first delivery: created, once
    accepted = await world.topic(settings.topic_accepted, 6)
    assert sorted(a.outcome()["status"] for a in accepted) == ["created"] * 6
    inputs = await world.topic(settings.topic_events, len(sent) + 6)
    replayed = {(r.partition, r.offset): r for r in inputs if r.header(H_COUNT) == ["1"]}
    assert len(replayed) == 6
    for outcome in (a.outcome() for a in accepted):
        source = (outcome["source"]["partition"], outcome["source"]["offset"])
        assert replayed[source].reference == outcome["externalReference"]
    rows = await world.rows()
    assert sorted(rows) == [f"ni-{i}" for i in range(1, 7)]
    assert all((row["source_partition"], row["source_offset"]) in replayed for row in rows.values())

    # a second run finds nothing new
    second = await world.replay_json("--code", "NO_INVENTORY")
    assert (second["scanned"], second["replayed"]) == (0, 0)

    # from the beginning again: the worker says duplicate, and no row changes
    third = await world.replay_json("--code", "NO_INVENTORY", "--from-beginning")
    assert (third["scanned"], third["replayed"]) == (7, 6)
    accepted = await world.topic(settings.topic_accepted, 12)
    assert Counter(a.outcome()["status"] for a in accepted) == {"created": 6, "duplicate": 6}
    assert await world.rows() == rows
    assert len(await world.topic(settings.topic_dlq, len(sent))) == len(sent)
    assert world.worker is not None
    await world.worker.stop()


async def test_max_replays_ends_a_loop(
    kafka_bootstrap: str, postgres_admin_url: str, worlds: list[World]
) -> None:
    world = await open_world(kafka_bootstrap, postgres_admin_url, [unknown_product("loop-1")])
    worlds.append(world)
    dlq = world.settings.topic_dlq
    replayed = []
    for run in range(1, 4):
        summary = await world.replay_json("--max-replays", "2")
        replayed.append(summary["replayed"])
        if summary["replayed"]:
            # the worker refuses it again: one more dead letter, its count carried
            await world.topic(dlq, run + 1)
    assert replayed == [1, 1, 0]
    assert summary["skipped"]["max-replays"] == 1
    assert summary["maxReplaysReached"] == [
        {
            "externalReference": "loop-1",
            "code": "UNKNOWN_PRODUCT",
            "partition": 0,
            "offset": 2,
            "replayCount": 2,
        }
    ]
    dead = await world.topic(dlq, 3)
    assert [d.header(H_COUNT) for d in dead] == [["0"], ["1"], ["2"]]
    rejected = await world.topic(world.settings.topic_rejected, 3)
    assert [r.outcome()["status"] for r in rejected] == ["rejected"] * 3
    assert len(await world.topic(world.settings.topic_events, 3)) == 3
    assert await world.rows() == {}


class SimulatedCrash(BaseException):
    """The replay process dies: nothing after this point happens."""


@dataclass
class CrashBeforeCommit:
    """A reader whose process dies at its n-th commit, after that batch was acknowledged."""

    reader: ReplayReader
    crash_at_commit: int
    commits: int = 0

    async def fetch(self, max_records: int, timeout_ms: int) -> list[InputRecord]:
        return await self.reader.fetch(max_records, timeout_ms)

    async def done(self) -> bool:
        return await self.reader.done()

    async def commit(self, next_offsets: dict[Partition, int]) -> None:
        self.commits += 1
        if self.commits == self.crash_at_commit:
            raise SimulatedCrash
        await self.reader.commit(next_offsets)


async def test_a_crash_between_publish_and_commit_resends_only_the_tail(
    kafka_bootstrap: str, postgres_admin_url: str, worlds: list[World]
) -> None:
    sent = [late(f"cr-{i}") for i in range(1, 6)]
    world = await open_world(kafka_bootstrap, postgres_admin_url, sent)
    worlds.append(world)
    settings = world.settings
    dead = await world.topic(settings.topic_dlq, len(sent))
    await world.load(LATE_INVENTORY)

    reader = ReplayReader(settings, settings.topic_dlq, world.default_replay_group)
    producer = OutputProducer(settings)
    await reader.start()
    await producer.start()
    plan = ReplayPlan(destination=settings.topic_events, batch_size=2)
    summary = ReplaySummary(settings.topic_dlq, settings.topic_events, reader.group_id, False)
    try:
        with pytest.raises(SimulatedCrash):
            await replay(CrashBeforeCommit(reader, crash_at_commit=2), producer, plan, summary)
    finally:
        await producer.stop()
        await reader.stop()
    # batch 1 (2 records) committed; batch 2 (2 records) published, not committed
    assert await group_offsets(settings, world.default_replay_group, settings.topic_dlq) == {0: 2}
    await world.topic(settings.topic_events, len(sent) + 4)

    rerun = await world.replay_json()
    assert rerun["scanned"] == 3
    assert [r["externalReference"] for r in rerun["replayedRecords"]] == [
        d.reference for d in dead[2:]
    ]
    accepted = await world.topic(settings.topic_accepted, 7)
    statuses = Counter((a.outcome()["externalReference"], a.outcome()["status"]) for a in accepted)
    tail = {d.reference for d in dead[2:4]}
    assert statuses == Counter(
        {(d.reference, "created"): 1 for d in dead}
        | {(reference, "duplicate"): 1 for reference in tail}
    )
    rows = await world.rows()
    assert sorted(rows) == sorted(d.reference for d in dead)
    assert await group_offsets(settings, world.default_replay_group, settings.topic_dlq) == {0: 5}
    assert world.worker is not None
    await world.worker.stop()


async def rejections_via_api(world: World, **params: str) -> list[dict[str, Any]]:
    """`GET /usage-rejections` of the world's database, through the real app."""
    store = await Store.open(world.database_url)
    try:
        key = await add_key(store, Permission.USAGE_READ, name="reader")
        app = create_app(world.settings, store, None)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
            response = await client.get(
                "/usage-rejections",
                params={"page": "1", "pageSize": "100", **params},
                headers={"X-API-KEY": key},
            )
        assert response.status_code == 200, response.text
        return list(response.json())
    finally:
        await store.close()


async def test_a_refusal_fixed_and_replayed_shows_resolved_by_its_usage(
    kafka_bootstrap: str, postgres_admin_url: str, worlds: list[World]
) -> None:
    world = await open_world(kafka_bootstrap, postgres_admin_url, [late("fix-1")])
    worlds.append(world)
    settings = world.settings
    [refused] = await world.topic(settings.topic_rejected, 1)
    assert refused.outcome()["errors"][0]["code"] == "NO_INVENTORY"

    [kept] = await rejections_via_api(world, externalReference="fix-1")
    assert kept["errors"][0]["code"] == "NO_INVENTORY"
    assert (kept["resolvedBy"], kept["replayCount"]) == (None, 0)
    assert kept["source"]["offset"] == refused.outcome()["source"]["offset"]
    assert [r["id"] for r in await rejections_via_api(world, resolved="false")] == [kept["id"]]

    await world.load(LATE_INVENTORY)
    result = await world.replay_json("--code", "NO_INVENTORY")
    assert result["replayed"] == 1
    [accepted] = await world.topic(settings.topic_accepted, 1)
    usage_id = accepted.outcome()["usageId"]

    [resolved] = await rejections_via_api(world, externalReference="fix-1")
    assert (resolved["id"], resolved["resolvedBy"]) == (kept["id"], usage_id)
    assert await rejections_via_api(world, resolved="false") == []
    assert world.worker is not None
    await world.worker.stop()
