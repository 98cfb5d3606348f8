"""The refusals kept in Postgres (SPEC.md §7) through the real worker, broker and
Postgres: a re-delivered record adds no second row; and `usage-ingest rejections
prune`, as a user runs it."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from tests.support.broker import wait_committed
from tests.support.cli import cli_env, run_cli
from tests.support.database import load_demo_reference
from tests.support.events import Outgoing, log_end, produce, usage_event
from tests.support.worker import RunningWorker
from usage_ingest.errors import ExitCode
from usage_ingest.settings import Settings

pytestmark = pytest.mark.integration


async def kept(db: asyncpg.Connection) -> dict[tuple[int, int], dict[str, Any]]:
    rows = await db.fetch("SELECT * FROM usage_rejections")
    return {(r["source_partition"], r["source_offset"]): dict(r) for r in rows}


async def test_a_redelivered_refusal_adds_no_second_row(
    settings: Settings, db: asyncpg.Connection
) -> None:
    """A second consumer group reads the same records again, as after a crash before
    the offsets were committed: the same source coordinates, no second row."""
    await load_demo_reference(settings.require_database_url())
    stored = usage_event("rd-stored", 0)
    conflicting = usage_event("rd-stored", 3)  # another payload under the same reference
    unknown = json.loads(usage_event("rd-unknown", 0))
    unknown["contractId"] = 999
    records = [
        Outgoing(stored, 0, b"rd-stored", "rd-stored"),
        Outgoing(b"{", 0, b"k-broken", None),
        Outgoing(json.dumps(unknown).encode(), 1, b"rd-unknown", None),
        Outgoing(conflicting, 0, b"rd-stored", None),  # after the stored one
    ]
    sent = await produce(settings, records)
    ends = log_end(sent)
    for group in ("first", "second"):
        again = settings.model_copy(update={"group_id": f"{settings.group_id}-{group}"})
        worker = RunningWorker(again).start()
        try:
            await wait_committed(again, ends, within_s=60)
        finally:
            await worker.stop()
        if group == "first":
            first = await kept(db)
    assert await kept(db) == first
    assert sorted(first) == sorted(s.source for s in sent if s.reference is None)
    codes = {source: row["codes"] for source, row in first.items()}
    assert codes == {
        sent[1].source: ["MALFORMED_MESSAGE"],
        sent[2].source: ["UNKNOWN_CONTRACT"],
        sent[3].source: ["EXTERNAL_REFERENCE_CONFLICT"],
    }
    assert first[sent[3].source]["external_reference"] == "rd-stored"
    assert first[sent[1].source]["external_reference"] is None


async def insert_refusal(db: asyncpg.Connection, offset: int, failed_at: datetime) -> None:
    await db.execute(
        "INSERT INTO usage_rejections (external_reference, errors, codes, retryable,"
        " source_topic, source_partition, source_offset, failed_at)"
        " VALUES ($1, $2::jsonb, $3, true, 'events', 0, $4, $5)",
        f"pr-{offset}",
        json.dumps([{"code": "NO_INVENTORY", "field": "productIdent", "message": "none"}]),
        ["NO_INVENTORY"],
        offset,
        failed_at,
    )


async def test_prune_counts_then_deletes_the_refusals_older_than_days(
    settings: Settings, db: asyncpg.Connection
) -> None:
    now = datetime.now(UTC)
    for offset, age in enumerate([timedelta(days=40), timedelta(days=31), timedelta(days=29)]):
        await insert_refusal(db, offset, now - age)
    env = cli_env(settings)

    dry = await run_cli(env, "rejections", "prune", "--older-than", "30", "--dry-run")
    assert (dry.returncode, dry.stderr) == (ExitCode.OK, "")
    assert dry.stdout.startswith("would delete 2 rejections that failed before ")
    assert len(dry.stdout.splitlines()) == 1
    assert len(await kept(db)) == 3

    done = await run_cli(env, "rejections", "prune", "--older-than", "30")
    assert (done.returncode, done.stderr) == (ExitCode.OK, "")
    assert done.stdout.startswith("deleted 2 rejections that failed before ")
    assert [r["external_reference"] for r in (await kept(db)).values()] == ["pr-2"]

    again = await run_cli(env, "rejections", "prune", "--older-than", "30")
    assert again.stdout.startswith("deleted 0 rejections")


@pytest.mark.parametrize("days", ["0", "-3", "1.5", "a month"])
async def test_prune_refuses_a_bad_number_of_days_in_one_line(
    settings: Settings, db: asyncpg.Connection, days: str
) -> None:
    await insert_refusal(db, 0, datetime.now(UTC) - timedelta(days=400))
    result = await run_cli(cli_env(settings), "rejections", "prune", "--older-than", days)
    assert result.returncode == ExitCode.USAGE
    [line] = result.stderr.splitlines()
    assert "--older-than" in line
    assert "whole number of days" in line
    assert result.stdout == ""
    assert len(await kept(db)) == 1
