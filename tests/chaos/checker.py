"""The checker of the chaos suite: what a scenario left behind (the usages table, both
outcome topics and the dead letters), counted against what was produced: stored,
lost, doubled or left without an outcome, and every other broken promise.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tests.support.broker import read_all
from tests.support.database import StoredRow, stored_rows
from tests.support.events import Sent, SourceKey
from usage_ingest.settings import Settings


@dataclass
class Verdict:
    """What a scenario left behind, counted against what was produced."""

    events: int
    stored: int
    lost: int  # events that should have a usage row and have none
    doubled: int  # extra rows per reference + references reported `created` from two sources
    outcomes_missing: int  # source records without any outcome
    problems: list[str] = field(default_factory=list)  # every other broken promise

    @property
    def clean(self) -> bool:
        return not (self.lost or self.doubled or self.outcomes_missing or self.problems)


def _same(outcome: dict[str, Any]) -> tuple[Any, ...]:
    """What must not differ between repeated outcomes of one source record."""
    return (
        outcome.get("status"),
        outcome.get("usageId"),
        outcome.get("externalReference"),
        tuple(e.get("code") for e in outcome.get("errors") or ()),
    )


async def check(
    settings: Settings, database_url: str, sent: Sequence[Sent], *, within_s: float = 60.0
) -> Verdict:
    """Read the usages table, both outcome topics and the dead letters, and compare
    them with the records produced (SPEC.md §1, §5, §6, §8)."""
    rows = await stored_rows(database_url)
    problems: list[str] = []
    outcomes: dict[SourceKey, list[dict[str, Any]]] = defaultdict(list)
    for topic in (settings.topic_accepted, settings.topic_rejected):
        for message in await read_all(settings, topic, within_s=within_s):
            outcome = json.loads(message.value or b"")
            source = outcome["source"]
            if source["topic"] != settings.topic_events:
                problems.append(f"an outcome names a foreign source {source}")
                continue
            outcomes[(source["partition"], source["offset"])].append(outcome)
    dead = Counter(
        (int(h["usage-ingest.source.partition"]), int(h["usage-ingest.source.offset"]))
        for h in (
            dict(m.headers) for m in await read_all(settings, settings.topic_dlq, within_s=within_s)
        )
    )
    return judge(sent, rows, outcomes, dead, problems)


def judge(
    sent: Sequence[Sent],
    rows: Sequence[StoredRow],
    outcomes: dict[SourceKey, list[dict[str, Any]]],
    dead: Counter[SourceKey],
    problems: list[str],
) -> Verdict:
    """The verdict on what was found, for the records produced."""
    per_reference = Counter(r.reference for r in rows)
    row_of = {r.reference: r for r in rows}
    required = {s.reference for s in sent if s.reference is not None and not s.may_reject}
    allowed = {s.reference for s in sent if s.reference is not None}
    wrongly_stored = sorted(set(row_of) - allowed)
    if wrongly_stored:
        problems.append(f"{len(wrongly_stored)} rows nobody asked for: {wrongly_stored[:5]}")
    strangers = sorted(set(outcomes) - {s.source for s in sent})
    if strangers:
        problems.append(f"outcomes for records never produced: {strangers[:5]}")
    missing = 0
    created_from: dict[str, set[SourceKey]] = defaultdict(set)
    for record in sent:
        got = outcomes.get(record.source)
        if not got:
            missing += 1
            continue
        if len({_same(o) for o in got}) != 1:
            problems.append(f"{record.source}: repeated outcomes disagree: {got[:3]}")
        row = row_of.get(record.reference) if record.reference is not None else None
        problems += _judge_one(record, got[0], row, dead[record.source])
        if got[0]["status"] == "created" and record.reference is not None:
            created_from[record.reference].add(record.source)
    return Verdict(
        events=len(sent),
        stored=len(rows),
        lost=len(required - set(row_of)),
        doubled=sum(n - 1 for n in per_reference.values() if n > 1)
        + sum(1 for sources in created_from.values() if len(sources) > 1),
        outcomes_missing=missing,
        problems=problems,
    )


def _judge_one(
    record: Sent, outcome: dict[str, Any], row: StoredRow | None, dead_letters: int
) -> list[str]:
    """What is wrong with one record's outcome, row and dead letter."""
    where, status = record.source, outcome["status"]
    if record.reference is None:  # must be refused
        wrong = [] if status == "rejected" else [f"{where}: invalid record got {status}"]
        return wrong + ([] if dead_letters else [f"{where}: rejected without a dead letter"])
    if status == "rejected":
        if not record.may_reject:
            return [f"{where}: valid record rejected: {outcome.get('errors')}"]
        wrong = [] if dead_letters else [f"{where}: rejected without a dead letter"]
        return wrong + ([f"{where}: rejected, yet {record.reference} is stored"] if row else [])
    wrong = [f"{where}: accepted record {record.reference} dead-lettered"] if dead_letters else []
    if row is None:  # counted as lost, unless resolution could have refused it
        return wrong + ([f"{where}: accepted, yet no row"] if record.may_reject else [])
    if outcome.get("usageId") != row.usage_id or outcome.get("externalReference") != row.reference:
        wrong.append(f"{where}: outcome names usage {outcome.get('usageId')}")
    from_here = row.source == where
    if status == "created" and not from_here:
        wrong.append(f"{where}: `created` but the row came from elsewhere")
    if status == "duplicate" and from_here:
        wrong.append(f"{where}: the row came from here but it says duplicate")
    return wrong
