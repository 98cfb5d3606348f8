"""Dead-letter replay's reader (`usage-ingest replay`, see `usage_ingest.replay.run`).

A bounded read of one topic: from the replay group's committed offsets (or the
beginning, or a given offset) up to the log end seen at start (or an earlier end it is
given: where a dry run read to), then it is done. Partitions are assigned by hand, so
there is no group membership and no rebalance; the group only keeps the committed
offsets between runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata

from usage_ingest.domain.records import InputRecord, Partition
from usage_ingest.errors import BrokerUnavailable, ReplayRefused
from usage_ingest.kafka.connection import connection_options
from usage_ingest.kafka.consumer import input_records
from usage_ingest.settings import Settings

# A short long-poll: the log end of an empty partition is known after one fetch.
_REPLAY_FETCH_WAIT_MS = 100
_REPLAY_END_TIMEOUT_S = 15.0


class ReplayReader:
    """Reads `topic` once, up to the log end each partition had at start.

    The log end is the high watermark of the first fetch response of each
    partition, learnt before any record is handed out. ListOffsets is not used
    for it: the embedded broker under-reports the latest offset (DESIGN.md).
    Records appended later (e.g. dead letters of records this run replayed) are
    never handed out, so a run cannot feed itself.

    `read_only` (dry run): offsets are read from the group but never committed.
    """

    def __init__(
        self, settings: Settings, topic: str, group_id: str, *, read_only: bool = False
    ) -> None:
        self.topic = topic
        self.group_id = group_id
        self.read_only = read_only
        self._consumer = AIOKafkaConsumer(
            **connection_options(settings),
            group_id=group_id,
            client_id="usage-ingest-replay",
            enable_auto_commit=False,
            # Only where a position is no longer on the log (retention): its earliest record.
            auto_offset_reset="earliest",
            fetch_max_wait_ms=_REPLAY_FETCH_WAIT_MS,
        )
        self._started = False
        self._partitions: list[TopicPartition] = []
        self._starts: dict[int, int] = {}
        self._ends: dict[int, int] = {}
        self._buffer: list[InputRecord] = []

    async def start(
        self,
        partitions: Sequence[int] = (),
        *,
        from_beginning: bool = False,
        offset: int | None = None,
        end_timeout_s: float = _REPLAY_END_TIMEOUT_S,
    ) -> None:
        """Position every selected partition (all when `partitions` is empty) and
        learn where each one ends; nothing is handed out before that is known."""
        try:
            await self._consumer.start()
            self._started = True
            available = await self._topic_partitions(self.topic)
            if available is None:
                raise ReplayRefused(f"topic {self.topic!r} does not exist")
            unknown = sorted(set(partitions) - available)
            if unknown:
                raise ReplayRefused(
                    f"topic {self.topic!r} has no partition {', '.join(map(str, unknown))} "
                    f"(it has {len(available)}: 0-{len(available) - 1})"
                )
            self._partitions = [
                TopicPartition(self.topic, p) for p in sorted(set(partitions) or available)
            ]
            self._consumer.assign(self._partitions)
            await self._seek(from_beginning=from_beginning, offset=offset)
            self._starts = {
                tp.partition: await self._consumer.position(tp) for tp in self._partitions
            }
            await self._learn_ends(end_timeout_s)
        except KafkaError as exc:
            raise BrokerUnavailable(f"cannot read {self.topic!r}: {exc}") from exc
        beyond = {p: s for p, s in self._starts.items() if s > self._ends[p]}
        if beyond:
            raise ReplayRefused(
                "offset beyond the end of "
                + ", ".join(f"partition {p} (ends at {self._ends[p]})" for p in sorted(beyond))
            )

    async def _topic_partitions(self, topic: str) -> set[int] | None:
        """The partitions of `topic`, None when it does not exist (before `assign`,
        the client holds the metadata of every topic, fetched when it started)."""
        if not await self.has_topic(topic):
            return None
        found: set[int] | None = self._consumer.partitions_for_topic(topic)
        if not found:
            raise BrokerUnavailable(f"no partition metadata for topic {topic!r}")
        return set(found)

    async def has_topic(self, topic: str) -> bool:
        """Whether `topic` exists (asks the broker; never creates it)."""
        try:
            names: set[str] = await self._consumer.topics()
        except KafkaError as exc:
            raise BrokerUnavailable(f"cannot read the topic list: {exc}") from exc
        return topic in names

    async def _seek(self, *, from_beginning: bool, offset: int | None) -> None:
        if offset is not None:
            for tp in self._partitions:
                self._consumer.seek(tp, offset)
            return
        if from_beginning:
            await self._consumer.seek_to_beginning(*self._partitions)
            return
        for tp in self._partitions:
            committed = await self._consumer.committed(tp)
            if committed is None:  # a group with no committed offset starts at the earliest
                await self._consumer.seek_to_beginning(tp)
            else:
                self._consumer.seek(tp, committed)

    async def _learn_ends(self, timeout_s: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            highwater = {tp.partition: self._consumer.highwater(tp) for tp in self._partitions}
            unknown = sorted(p for p, end in highwater.items() if end is None)
            if not unknown:
                break
            if loop.time() > deadline:
                raise BrokerUnavailable(
                    f"no fetch response for {self.topic!r} partition(s) "
                    f"{', '.join(map(str, unknown))} within {timeout_s:g} s: "
                    "cannot tell where they end"
                )
            batches = await self._consumer.getmany(timeout_ms=_REPLAY_FETCH_WAIT_MS)
            self._buffer.extend(input_records(batches))
        self._ends = {p: end for p, end in highwater.items() if end is not None}
        self._buffer = [r for r in self._buffer if r.offset < self._ends[r.partition]]
        await self._pause_finished()

    async def cap_ends(self, bounds: Mapping[int, int]) -> None:
        """Read each partition only up to its bound, where that comes before its log end:
        a confirmed replay reads what its dry run read, not what arrived since. Records
        at or past the new end are never handed out (nor, so, committed)."""
        self._ends = {p: min(end, bounds.get(p, end)) for p, end in self._ends.items()}
        self._buffer = [r for r in self._buffer if r.offset < self._ends[r.partition]]
        try:
            await self._pause_finished()
        except KafkaError as exc:
            raise BrokerUnavailable(f"cannot read positions of {self.topic!r}: {exc}") from exc

    @property
    def starts(self) -> dict[int, int]:
        """Per partition, the offset this run started at."""
        return dict(self._starts)

    @property
    def ends(self) -> dict[int, int]:
        """Per partition, where this run reads up to: the log end seen at start, or the
        bound `cap_ends` gave when it comes first."""
        return dict(self._ends)

    @property
    def total(self) -> int:
        """How many offsets lie between the start and the end (the scan's length)."""
        return sum(max(self._ends[p] - s, 0) for p, s in self._starts.items())

    async def fetch(self, max_records: int, timeout_ms: int) -> list[InputRecord]:
        """The next records before the end, in offset order per partition."""
        if self._buffer:
            records, self._buffer = self._buffer[:max_records], self._buffer[max_records:]
            return records
        try:
            batches = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
            records = [r for r in input_records(batches) if r.offset < self._ends[r.partition]]
            await self._pause_finished()
        except KafkaError as exc:
            raise BrokerUnavailable(f"fetch from {self.topic!r} failed: {exc}") from exc
        return records

    async def _pause_finished(self) -> None:
        """Stop fetching partitions that reached their end."""
        paused = self._consumer.paused()
        for tp in self._partitions:
            if tp not in paused and await self._consumer.position(tp) >= self._ends[tp.partition]:
                self._consumer.pause(tp)

    async def done(self) -> bool:
        """True once every record before the end has been handed out."""
        if self._buffer:
            return False
        try:
            for tp in self._partitions:
                if await self._consumer.position(tp) < self._ends[tp.partition]:
                    return False
        except KafkaError as exc:
            raise BrokerUnavailable(f"cannot read positions of {self.topic!r}: {exc}") from exc
        return True

    async def commit(self, next_offsets: dict[Partition, int]) -> None:
        """Commit, per partition, the offset of the next record to read."""
        if self.read_only:
            raise RuntimeError("a read-only (dry-run) reader never commits")
        offsets = {
            TopicPartition(topic, partition): OffsetAndMetadata(offset, "")
            for (topic, partition), offset in next_offsets.items()
        }
        try:
            await self._consumer.commit(offsets)
        except KafkaError as exc:
            raise BrokerUnavailable(f"commit to group {self.group_id!r} failed: {exc}") from exc

    async def stop(self) -> None:
        if self._started:
            self._started = False
            await self._consumer.stop()
