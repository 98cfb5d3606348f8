"""Step 2 of the commit protocol with the fakes: every refusal is kept in the batch's
transaction, with its usages, before anything of the batch is published."""

from __future__ import annotations

import asyncio
import json

from tests.support.fakes import (
    FIXED_NOW,
    TOPIC,
    FakeConsumer,
    FakeProducer,
    FakeStore,
    event,
    record,
    run_until_drained,
    settings,
)
from usage_ingest.domain.dead_letters import H_FAILED_AT, H_REPLAY_COUNT
from usage_ingest.domain.messages import OutcomeError
from usage_ingest.domain.records import InputRecord
from usage_ingest.domain.validation import InvalidEvent
from usage_ingest.errors import ErrorCode
from usage_ingest.worker.outcomes import Verdict, rejection_row
from usage_ingest.worker.pipeline import Pipeline


def wired(
    batches: list[list[InputRecord]],
) -> tuple[Pipeline, FakeStore, FakeConsumer, FakeProducer]:
    """A pipeline whose store writes into the consumer's log of events, so the order of
    "stored", "published" and "commit" shows."""
    consumer = FakeConsumer(batches)
    store = FakeStore(consumer.events)
    out = FakeProducer(consumer)
    return Pipeline(settings(), store, consumer, out, clock=lambda: FIXED_NOW), store, consumer, out


MIXED = [
    record(event("good"), 0),
    record(b"{", 1, key=b"k-broken"),  # validation: MALFORMED_MESSAGE
    record(event("stranger", contractId=999), 2),  # resolution: UNKNOWN_CONTRACT
    record(event("twice"), 3),
    record(event("twice", quantity="2"), 4),  # storage: EXTERNAL_REFERENCE_CONFLICT
    record(event("poison"), 5),  # storage: the database refuses it
    record(event("again", contractId=999), 6, headers=[(H_REPLAY_COUNT, b"3")]),  # replayed 3 times
]


async def test_every_refusal_is_stored_with_the_usages_in_one_transaction_before_publishing() -> (
    None
):
    pipeline, store, consumer, _ = wired([MIXED])
    store.refused_references = {"poison"}
    await run_until_drained(pipeline, consumer)
    [batch] = store.committed
    assert sorted(batch.rows) == ["good", "twice"]
    kept = {offset: row for (_, _, offset), (_, row) in batch.rejections.items()}
    assert {o: [e["code"] for e in json.loads(r.errors)] for o, r in kept.items()} == {
        1: ["MALFORMED_MESSAGE"],
        2: ["UNKNOWN_CONTRACT"],
        4: ["EXTERNAL_REFERENCE_CONFLICT"],
        5: ["SCHEMA_VIOLATION"],
        6: ["UNKNOWN_CONTRACT"],
    }
    # One statement for every refusal, whichever step decided it.
    assert [len(call) for call in batch.rejection_calls] == [5]
    # Stored, then published, then committed.
    assert consumer.events == ["stored 2 usages, 5 rejections", "published 12", "commit"]
    assert sorted(store.rejections) == [(TOPIC, 0, o) for o in (1, 2, 4, 5, 6)]


async def test_a_stored_refusal_is_what_its_outcome_and_dead_letter_say() -> None:
    pipeline, store, consumer, out = wired([MIXED])
    store.refused_references = {"poison"}
    await run_until_drained(pipeline, consumer)
    outcomes = {o["source"]["offset"]: o for o in out.on("usage.rejected")}
    letters = {
        int(dict(r.headers)["usage-ingest.source.offset"]): dict(r.headers)
        for r in out.sent
        if r.topic == "usage.events.dlq"
    }
    assert sorted(outcomes) == sorted(letters) == [1, 2, 4, 5, 6]
    for (topic, partition, offset), (failed_at, row) in store.rejections.items():
        outcome = outcomes[offset]
        assert json.loads(row.errors) == outcome["errors"]
        assert row.retryable is outcome["retryable"]
        assert row.external_reference == outcome["externalReference"]
        assert (topic, partition, offset) == (TOPIC, 0, outcome["source"]["offset"])
        assert row.source_timestamp_ms == 1_795_000_000_000
        assert failed_at.encode() == letters[offset][H_FAILED_AT]
        assert str(row.replay_count).encode() == letters[offset][H_REPLAY_COUNT]
    assert store.rejections[(TOPIC, 0, 6)][1].replay_count == 3
    assert store.rejections[(TOPIC, 0, 1)][1].external_reference is None
    assert store.rejections[(TOPIC, 0, 4)][1].external_reference == "twice"


async def test_a_batch_of_only_refusals_goes_through_the_store_before_publishing() -> None:
    pipeline, store, consumer, _ = wired([[record(b"{", 0), record(b"", 1)]])
    await run_until_drained(pipeline, consumer)
    assert store.calls == 1
    assert consumer.events == ["stored 0 usages, 2 rejections", "published 4", "commit"]
    assert len(store.rejections) == 2


async def test_a_store_outage_stalls_a_batch_of_only_refusals() -> None:
    """While the database is away nothing of the batch is published or committed, and
    the refusal is never turned into anything else; once it is back, all goes on."""
    pipeline, store, consumer, out = wired([[record(b"{", 0)]])
    store.failures_left = 10**9
    stop = asyncio.Event()
    running = asyncio.create_task(pipeline.run(stop))
    for _ in range(10_000):
        if store.calls >= 5:
            break
        await asyncio.sleep(0.001)
    assert store.calls >= 5
    assert (out.sent, consumer.commits, store.rejections) == ([], [], {})
    store.failures_left = 0
    consumer.on_drained = stop.set
    await asyncio.wait_for(running, 5)
    assert consumer.events == ["stored 0 usages, 1 rejections", "published 2", "commit"]
    [outcome] = out.on("usage.rejected")
    assert outcome["errors"][0]["code"] == "MALFORMED_MESSAGE"


async def test_a_transaction_lost_after_its_usages_is_retried_whole() -> None:
    """The connection is lost after the usages were written, at the refusals: nothing
    of that attempt stays, and the retry decides afresh (the usage is `created`, not a
    duplicate of its own rolled-back write)."""
    pipeline, store, consumer, out = wired(
        [[record(event("a"), 0), record(event("a", quantity="2"), 1)]]
    )
    store.rejection_failures_left = 1
    await run_until_drained(pipeline, consumer)
    assert store.calls == 2
    assert len(store.committed) == 1
    assert [o["status"] for o in out.on("usage.accepted")] == ["created"]
    [conflict] = out.on("usage.rejected")
    assert conflict["errors"][0]["code"] == "EXTERNAL_REFERENCE_CONFLICT"
    assert list(store.rejections) == [(TOPIC, 0, 1)]


def test_a_refusal_is_always_storable() -> None:
    """Postgres stores no NUL character and no unpaired surrogate, in text or JSON: the
    stored errors carry a replacement instead."""
    problem = OutcomeError(
        code=ErrorCode.SCHEMA_VIOLATION, field="a\x00b", message="bad \ud800 value \x00"
    )
    row = rejection_row(Verdict(record(b"x", 0), InvalidEvent("ref", (problem,))))
    [stored] = json.loads(row.errors)
    assert stored == {
        "code": "SCHEMA_VIOLATION",
        "field": "a\ufffdb",
        "message": "bad ? value \ufffd",
    }
    assert row.retryable is False
    assert row.errors.encode("utf-8")
