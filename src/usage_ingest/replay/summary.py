"""What one replay run did (`ReplaySummary`), as the command line prints it and the
console shows it, and the dead letters it names (`Sample`)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import msgspec

from usage_ingest.domain.dead_letters import DeadLetter
from usage_ingest.replay.selection import SkipReason


class Sample(msgspec.Struct, frozen=True, rename="camel"):
    """One dead letter named in the summary."""

    reference: str | None = msgspec.field(name="externalReference")
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
    starts: dict[int, int] = field(default_factory=dict)  # partition -> first offset read
    ends: dict[int, int] = field(default_factory=dict)  # partition -> offset it reads up to
    stopped_because: str | None = None  # why an interrupted run stopped, when not asked to

    def to_json(self) -> dict[str, Any]:
        document = _SummaryJson(
            dry_run=self.dry_run,
            source=self.source,
            destination=self.destination,
            group=self.group_id,
            scanned=self.scanned,
            matched=self.matched,
            replayed=self.replayed,
            skipped={reason.value: self.skipped[reason] for reason in SkipReason},
            replayed_by_code=dict(sorted(self.replayed_by_code.items())),
            replayed_records=self.replayed_sample,
            max_replays_reached=self.max_replays_sample,
            limit_reached=self.limit_reached,
            interrupted=self.interrupted,
            committed={str(p): o for p, o in sorted(self.committed.items())},
        )
        as_json: dict[str, Any] = msgspec.to_builtins(document)
        return as_json


class _SummaryJson(msgspec.Struct, frozen=True, rename="camel"):
    """The summary as `--json` prints it, member by member."""

    dry_run: bool
    source: str
    destination: str
    group: str
    scanned: int
    matched: int
    replayed: int
    skipped: dict[str, int]
    replayed_by_code: dict[str, int]
    replayed_records: list[Sample]
    max_replays_reached: list[Sample]
    limit_reached: bool
    interrupted: bool
    committed: dict[str, int]
