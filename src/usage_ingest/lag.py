"""The consumer lag report of `usage-ingest lag`: offset lag and time lag per
partition, totals per topic, the group's state, and the alert thresholds.

`read_lag_report` asks the broker (through the Kafka adapter); the rest is pure: it
builds and renders the report from the positions read.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import msgspec
from rich.table import Table

from usage_ingest.kafka.admin import (
    GroupDescription,
    PartitionPosition,
    describe_group,
    read_positions,
)
from usage_ingest.settings import Settings


# JSON members in the platform's camelCase; `_s` suffixes spelled out as Seconds.
class PartitionLag(msgspec.Struct, frozen=True, rename="camel"):
    topic: str
    partition: int
    committed: int | None
    log_end: int
    offset_lag: int
    time_lag_s: float = msgspec.field(name="timeLagSeconds")


class TopicLag(msgspec.Struct, frozen=True, rename="camel"):
    topic: str
    offset_lag: int
    time_lag_s: float = msgspec.field(name="timeLagSeconds")


@dataclass(frozen=True, slots=True)
class LagReport:
    group_id: str
    state: str
    members: tuple[str, ...]
    partitions: tuple[PartitionLag, ...]

    @property
    def topics(self) -> tuple[TopicLag, ...]:
        totals: dict[str, TopicLag] = {}
        for p in self.partitions:
            seen = totals.get(p.topic, TopicLag(p.topic, 0, 0.0))
            totals[p.topic] = TopicLag(
                p.topic, seen.offset_lag + p.offset_lag, max(seen.time_lag_s, p.time_lag_s)
            )
        return tuple(totals.values())

    @property
    def offset_lag(self) -> int:
        return sum(p.offset_lag for p in self.partitions)

    @property
    def time_lag_s(self) -> float:
        return max((p.time_lag_s for p in self.partitions), default=0.0)

    def as_json(self) -> dict[str, Any]:
        document = _ReportJson(
            self.group_id,
            self.state,
            self.members,
            self.offset_lag,
            self.time_lag_s,
            self.topics,
            self.partitions,
        )
        as_json: dict[str, Any] = msgspec.to_builtins(document)
        return as_json


class _ReportJson(msgspec.Struct, frozen=True, rename="camel"):
    """The report as `--json` prints it, member by member."""

    group_id: str
    state: str
    members: tuple[str, ...]
    offset_lag: int
    time_lag_s: float = msgspec.field(name="timeLagSeconds")
    topics: tuple[TopicLag, ...]
    partitions: tuple[PartitionLag, ...]


def partition_lag(position: PartitionPosition, now_ms: int) -> PartitionLag:
    """Offset lag counts from the committed offset, or from the log start when the
    group never committed (it will start at the earliest record). Time lag is the age
    of the oldest unprocessed record, 0 when caught up."""
    start = position.committed if position.committed is not None else position.log_start
    offset_lag = max(position.log_end - start, 0)
    time_lag = 0.0
    if offset_lag and position.oldest_unprocessed_ms is not None:
        time_lag = max(now_ms - position.oldest_unprocessed_ms, 0) / 1000
    return PartitionLag(
        position.topic,
        position.partition,
        position.committed,
        position.log_end,
        offset_lag,
        time_lag,
    )


def build_report(
    group: GroupDescription, positions: list[PartitionPosition], now_ms: int
) -> LagReport:
    return LagReport(
        group.group_id,
        group.state,
        group.members,
        tuple(partition_lag(p, now_ms) for p in positions),
    )


async def read_lag_report(settings: Settings, group_id: str, topics: list[str]) -> LagReport:
    """The group's lag on `topics`, read from the broker now: no worker needs to run."""
    group, positions = await asyncio.gather(
        describe_group(settings, group_id), read_positions(settings, group_id, topics)
    )
    return build_report(group, positions, int(time.time() * 1000))


def breaches(report: LagReport, max_lag: int | None, max_time_lag: float | None) -> list[str]:
    """The thresholds the report exceeds, each as one sentence."""
    found = []
    if max_lag is not None and report.offset_lag > max_lag:
        found.append(f"offset lag {report.offset_lag} exceeds {max_lag}")
    if max_time_lag is not None and report.time_lag_s > max_time_lag:
        found.append(f"time lag {report.time_lag_s:.1f} s exceeds {max_time_lag:g} s")
    return found


def render(report: LagReport) -> Table:
    members = ", ".join(report.members) or "none"
    table = Table(
        title=f"group {report.group_id}: {report.state}, members: {members}",
        title_justify="left",
    )
    for column in ("topic", "partition", "committed", "log end", "offset lag", "time lag (s)"):
        table.add_column(column, justify="left" if column == "topic" else "right")
    for p in report.partitions:
        committed = "-" if p.committed is None else str(p.committed)
        table.add_row(
            p.topic,
            str(p.partition),
            committed,
            str(p.log_end),
            str(p.offset_lag),
            f"{p.time_lag_s:.1f}",
        )
    for t in report.topics:
        table.add_row(
            t.topic, "total", "", "", str(t.offset_lag), f"{t.time_lag_s:.1f}", style="bold"
        )
    return table
