"""In-memory fakes of what a replay run opens: the dead-letter topic with its replay
group's committed offsets (`FakeTopic`, read by `FakeSource`), the destination
(`FakeSink`) and the group's lock (`FakeGuard`), for `run_replay` and the console."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from usage_ingest.domain.records import InputRecord, OutputRecord, Partition
from usage_ingest.errors import ReplayRunning
from usage_ingest.replay.run import ReplayAdapters
from usage_ingest.settings import Settings

DLQ = "usage.events.dlq"
EVENTS = "usage.events"


def dead_letter(
    reference: str, offset: int, partition: int = 0, code: str = "NO_INVENTORY"
) -> InputRecord:
    retryable = code not in {"SCHEMA_VIOLATION", "MALFORMED_MESSAGE"}
    return InputRecord(
        topic=DLQ,
        partition=partition,
        offset=offset,
        key=reference.encode(),
        value=json.dumps({"externalReference": reference}).encode(),
        headers=(
            ("usage-ingest.error.code", code.encode()),
            ("usage-ingest.error.retryable", str(retryable).lower().encode()),
            ("usage-ingest.replay-count", b"0"),
        ),
        timestamp_ms=1_700_000_000_000,
    )


@dataclass
class FakeTopic:
    """The dead-letter topic, the replay group's committed offsets, and the destination."""

    records: list[InputRecord]
    committed: dict[int, int] = field(default_factory=dict)
    published: list[OutputRecord] = field(default_factory=list)
    readers_started: int = 0
    destination_exists: bool = True
    gate: asyncio.Event | None = None  # when set: every publish waits for it
    publishing: asyncio.Event = field(default_factory=asyncio.Event)  # a publish began

    def partitions(self) -> list[int]:
        return sorted({r.partition for r in self.records} | {0})

    def log(self, partition: int) -> list[InputRecord]:
        return [r for r in self.records if r.partition == partition]

    def adapters(self) -> ReplayAdapters:
        return ReplayAdapters(
            reader=lambda _s, _topic, _group, read_only: FakeSource(self, read_only),
            producer=lambda _s: FakeSink(self),
        )

    def published_references(self) -> list[str]:
        return [json.loads(r.value or b"")["externalReference"] for r in self.published]


class FakeSource:
    """Reads the topic from the group's committed offsets (or 0) to the ends at start."""

    def __init__(self, topic: FakeTopic, read_only: bool) -> None:
        self.topic = topic
        self.read_only = read_only
        self.position: dict[int, int] = {}
        self._ends: dict[int, int] = {}
        self._starts: dict[int, int] = {}

    async def start(
        self,
        partitions: Sequence[int] = (),
        *,
        from_beginning: bool = False,
        offset: int | None = None,
    ) -> None:
        self.topic.readers_started += 1
        for p in partitions or self.topic.partitions():
            self._starts[p] = 0 if from_beginning else self.topic.committed.get(p, 0)
            self._ends[p] = len(self.topic.log(p))
        self.position = dict(self._starts)

    async def has_topic(self, topic: str) -> bool:
        return topic == EVENTS and self.topic.destination_exists

    @property
    def starts(self) -> dict[int, int]:
        return dict(self._starts)

    @property
    def ends(self) -> dict[int, int]:
        return dict(self._ends)

    @property
    def total(self) -> int:
        return sum(self._ends[p] - s for p, s in self._starts.items())

    async def cap_ends(self, bounds: Mapping[int, int]) -> None:
        self._ends = {p: min(end, bounds.get(p, end)) for p, end in self._ends.items()}

    async def fetch(self, max_records: int, timeout_ms: int) -> list[InputRecord]:
        out: list[InputRecord] = []
        for p in sorted(self.position):
            log = self.topic.log(p)
            while len(out) < max_records and self.position[p] < self._ends[p]:
                out.append(log[self.position[p]])
                self.position[p] += 1
        return out

    async def done(self) -> bool:
        return all(self.position[p] >= self._ends[p] for p in self.position)

    async def commit(self, next_offsets: dict[Partition, int]) -> None:
        assert not self.read_only, "a dry run committed"
        for (_, partition), offset in next_offsets.items():
            self.topic.committed[partition] = offset

    async def stop(self) -> None:
        pass


class FakeSink:
    def __init__(self, topic: FakeTopic) -> None:
        self.topic = topic

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def publish(self, records: Sequence[OutputRecord]) -> list[OutputRecord]:
        self.topic.publishing.set()
        if self.topic.gate is not None:
            await self.topic.gate.wait()
        self.topic.published.extend(records)
        return []


class FakeLock:
    def __init__(self, guard: FakeGuard, group_id: str) -> None:
        self.guard = guard
        self.group_id = group_id
        self.checks = 0

    async def held(self) -> bool:
        self.checks += 1
        lost_after = self.guard.lose_after_checks
        return self.group_id in self.guard.holders and (
            lost_after is None or self.checks <= lost_after
        )


class FakeGuard:
    """Advisory locks by group name, shared by every run given this guard (as one
    database is by every process)."""

    def __init__(self) -> None:
        self.holders: set[str] = set()
        self.taken: list[str] = []
        self.lose_after_checks: int | None = None

    @asynccontextmanager
    async def hold_replay_lock(self, group_id: str) -> AsyncIterator[FakeLock]:
        if group_id in self.holders:
            raise ReplayRunning(group_id)
        self.holders.add(group_id)
        self.taken.append(group_id)
        try:
            yield FakeLock(self, group_id)
        finally:
            self.holders.discard(group_id)


def fake_settings() -> Settings:
    return Settings(
        retry_initial_backoff_s=0.001,
        retry_max_backoff_s=0.002,
        batch_max_records=2,
        topic_dlq=DLQ,
        topic_events=EVENTS,
    )
