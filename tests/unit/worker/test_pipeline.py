"""The batch loop's decisions and commit protocol, with in-memory fakes of its ports."""

from __future__ import annotations

import asyncio
import decimal
import json
import random
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg
import pytest
import structlog
from aiokafka.partitioner import murmur2 as aiokafka_murmur2

from tests.support.fakes import (
    FIXED_NOW,
    TOPIC,
    FakeConsumer,
    FakeProducer,
    FakeStore,
    event,
    make_pipeline,
    record,
    run_until_drained,
    settings,
)
from usage_ingest.domain.dead_letters import DEAD_LETTER_HEADERS
from usage_ingest.domain.records import OutputRecord, Partition, next_offsets
from usage_ingest.errors import StoreRefusedData, StoreUnavailable
from usage_ingest.kafka.producer import murmur2, partition_for
from usage_ingest.store import connection as store_module
from usage_ingest.worker import pipeline as pipeline_module
from usage_ingest.worker.pipeline import Pipeline


async def test_first_arrival_is_created_then_same_payload_is_duplicate() -> None:
    pipeline, store, consumer, out = make_pipeline(
        [[record(event(quantity="1.50"), 0)], [record(event(quantity=1.5), 1)]]
    )
    await run_until_drained(pipeline, consumer)
    statuses = [o["status"] for o in out.on("usage.accepted")]
    assert statuses == ["created", "duplicate"]
    assert len(store.rows) == 1


async def test_redelivery_of_the_creating_record_is_reported_created_again() -> None:
    """The outcome depends on the source record, not on how often it was delivered."""
    pipeline, _, consumer, out = make_pipeline([[record(event(), 5)], [record(event(), 5)]])
    await run_until_drained(pipeline, consumer)
    outcomes = out.on("usage.accepted")
    assert [o["status"] for o in outcomes] == ["created", "created"]
    assert outcomes[0]["source"] == outcomes[1]["source"]
    assert outcomes[0]["usageId"] == outcomes[1]["usageId"]


async def test_same_reference_twice_in_one_batch() -> None:
    pipeline, store, consumer, out = make_pipeline(
        [[record(event(), 0), record(event(), 1), record(event(quantity="2"), 2)]]
    )
    await run_until_drained(pipeline, consumer)
    assert [o["status"] for o in out.on("usage.accepted")] == ["created", "duplicate"]
    [conflict] = out.on("usage.rejected")
    assert conflict["errors"][0]["code"] == "EXTERNAL_REFERENCE_CONFLICT"
    assert conflict["retryable"] is False
    assert len(store.rows) == 1


async def test_offsets_are_committed_after_every_outcome_is_acknowledged() -> None:
    pipeline, _, consumer, out = make_pipeline(
        [[record(event("a"), 3, 0), record(event("b"), 9, 1), record(b"{", 4, 0)]], fail_first=2
    )
    await run_until_drained(pipeline, consumer)
    assert consumer.commits == [{(TOPIC, 0): 5, (TOPIC, 1): 10}]
    # Publishing failed twice, was retried, and the commit came only after it succeeded.
    assert consumer.events[-2:] == [consumer.events[-2], "commit"]
    assert consumer.events[-2].startswith("published")
    assert len(out.on("usage.accepted")) == 2


class GatedProducer(FakeProducer):
    """Holds the first batch's acknowledgements until the test opens the gate."""

    def __init__(self, consumer: FakeConsumer) -> None:
        super().__init__(consumer)
        self.gate = asyncio.Event()

    async def publish(self, records: Sequence[OutputRecord]) -> list[OutputRecord]:
        await self.gate.wait()
        return await super().publish(records)


async def test_the_next_batch_is_stored_while_the_one_before_awaits_its_acks() -> None:
    store, consumer = FakeStore(), FakeConsumer([[record(event("a"), 0)], [record(event("b"), 1)]])
    out = GatedProducer(consumer)
    pipeline = Pipeline(settings(), store, consumer, out, clock=lambda: FIXED_NOW)
    running = asyncio.create_task(run_until_drained(pipeline, consumer))
    await until(lambda: store.calls == 2)
    # Both batches are stored, none is acknowledged or committed yet.
    assert (store.calls, out.sent, consumer.commits) == (2, [], [])
    out.gate.set()
    await running
    # Delivered in order: each batch published, then committed, then the next one.
    assert consumer.events == ["published 1", "commit", "published 1", "commit"]
    assert consumer.commits == [{(TOPIC, 0): 1}, {(TOPIC, 0): 2}]


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(100):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")


async def test_a_batch_stored_after_one_that_did_not_commit_is_not_committed() -> None:
    """Batch 2 is stored while batch 1 awaits its acks; then batch 1's commit is refused
    (a rebalance). Batch 2 must not commit past batch 1's records: neither commits,
    both go back to be fetched again."""
    store, consumer = FakeStore(), FakeConsumer([[record(event("a"), 0)], [record(event("b"), 1)]])
    out = GatedProducer(consumer)
    pipeline = Pipeline(settings(), store, consumer, out, clock=lambda: FIXED_NOW)
    consumer.refuse_commits = 1
    running = asyncio.create_task(run_until_drained(pipeline, consumer))
    await until(lambda: store.calls == 2)
    out.gate.set()
    await running
    # (Batch 2 is abandoned as the test stops the worker: no rewind is needed then.)
    assert consumer.commits == []
    assert consumer.events == ["published 1", "commit refused", "rewind"]
    assert [o["externalReference"] for o in out.on("usage.accepted")] == ["a"]


async def test_records_fetched_before_an_abandoned_batch_rewound_go_back_too() -> None:
    """Batch 2 was fetched before batch 1's refused commit rewound its partition: it is
    dropped and rewound (fetched again), never committed past batch 1's records."""
    pipeline, store, consumer, _ = make_pipeline([[record(event("a"), 0)], [record(event("b"), 1)]])
    consumer.refuse_commits = 1
    await run_until_drained(pipeline, consumer)
    assert consumer.commits == []
    assert consumer.events == ["published 1", "commit refused", "rewind", "rewind"]
    assert store.calls == 1


async def test_database_outage_is_retried_not_rejected() -> None:
    pipeline, store, consumer, out = make_pipeline([[record(event("a"), 0), record(event("b"), 1)]])
    store.failures_left = 3
    await run_until_drained(pipeline, consumer)
    assert store.calls == 4
    assert out.on("usage.rejected") == []
    assert [o["status"] for o in out.on("usage.accepted")] == ["created", "created"]


async def test_a_record_the_database_refuses_does_not_block_the_others() -> None:
    pipeline, store, consumer, out = make_pipeline(
        [[record(event("good-1"), 0), record(event("poison"), 1), record(event("good-2"), 2)]]
    )
    store.refused_references = {"poison"}
    await run_until_drained(pipeline, consumer)
    assert sorted(store.rows) == ["good-1", "good-2"]
    [rejected] = out.on("usage.rejected")
    assert rejected["externalReference"] == "poison"
    assert consumer.commits == [{(TOPIC, 0): 3}]


async def test_dead_letter_keeps_the_record_and_replaces_earlier_failure_headers() -> None:
    stale = [
        ("trace", b"t-1"),
        ("usage-ingest.error.code", b"OLD"),
        ("usage-ingest.replay-count", b"2"),
    ]
    pipeline, _, consumer, out = make_pipeline(
        [[record(event(contractId=999), 7, 2, key=b"k-1", headers=stale)]]
    )
    await run_until_drained(pipeline, consumer)
    [dead] = [r for r in out.sent if r.topic == "usage.events.dlq"]
    assert dead.key == b"k-1"
    assert dead.value == event(contractId=999)
    headers = dict(dead.headers)
    assert len(dead.headers) == len(headers), "a header appears twice"
    assert headers["trace"] == b"t-1"
    assert headers["usage-ingest.error.code"] == b"UNKNOWN_CONTRACT"
    assert headers["usage-ingest.error.retryable"] == b"true"
    assert headers["usage-ingest.source.partition"] == b"2"
    assert headers["usage-ingest.source.offset"] == b"7"
    assert headers["usage-ingest.replay-count"] == b"2"
    assert set(headers) >= DEAD_LETTER_HEADERS


async def test_unreadable_record_is_keyed_by_its_input_key() -> None:
    pipeline, _, consumer, out = make_pipeline([[record(b"\xff\xfe", 0, key=b"input-key")]])
    await run_until_drained(pipeline, consumer)
    [rejected] = [r for r in out.sent if r.topic == "usage.rejected"]
    assert rejected.key == b"input-key"
    assert json.loads(rejected.value)["externalReference"] is None


@pytest.mark.parametrize(
    ("offsets", "expected"),
    [([0], {(TOPIC, 0): 1}), ([4, 2, 9], {(TOPIC, 0): 10})],
)
def test_next_offsets_is_one_past_the_highest(
    offsets: list[int], expected: dict[Partition, int]
) -> None:
    assert next_offsets([record(b"{}", o) for o in offsets]) == expected


def poison_on(marker: bytes, real: Callable[..., Any]) -> Callable[..., Any]:
    """`real`, except that it raises for the record whose value contains `marker`."""

    def deciding(value: Any, *args: Any) -> Any:
        raw = value if isinstance(value, bytes) else getattr(value, "external_reference", "")
        if marker in (raw if isinstance(raw, bytes) else raw.encode()):
            raise decimal.InvalidOperation([decimal.InvalidOperation])
        return real(value, *args)

    return deciding


@pytest.mark.parametrize("step", ["validate_record", "resolve"])
async def test_a_record_whose_decision_raises_is_refused_and_the_batch_goes_on(
    step: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SPEC.md §6: a poison record never blocks its partition, even one that meets a
    defect: it is refused as MALFORMED_MESSAGE and dead-lettered, the rest is stored."""
    monkeypatch.setattr(pipeline_module, step, poison_on(b"poison", getattr(pipeline_module, step)))
    batch = [record(event("a"), 0), record(event("poison"), 1, key=b"k"), record(event("b"), 2)]
    pipeline, store, consumer, out = make_pipeline([batch])
    with structlog.testing.capture_logs() as logs:
        await run_until_drained(pipeline, consumer)
    assert [o["externalReference"] for o in out.on("usage.accepted")] == ["a", "b"]
    [refused] = out.on("usage.rejected")
    assert [e["code"] for e in refused["errors"]] == ["MALFORMED_MESSAGE"]
    assert "InvalidOperation" in refused["errors"][0]["message"]
    assert refused["retryable"] is False
    assert refused["source"]["offset"] == 1
    [dead] = [r for r in out.sent if r.topic == "usage.events.dlq"]
    assert (dead.key, dead.value) == (b"k", event("poison"))
    assert set(store.rows) == {"a", "b"}
    assert consumer.commits == [{(TOPIC, 0): 3}]
    [failed] = [line for line in logs if line["event"] == "record_decision_failed"]
    assert (failed["log_level"], failed["offset"], failed["error"]) == (
        "error",
        1,
        "InvalidOperation",
    )
    assert isinstance(failed["exc_info"], decimal.InvalidOperation)
    assert pipeline.metrics.decision_failures._value.get() == 1


def test_murmur2_is_kafkas_for_keys_of_every_length() -> None:
    """Outcomes are keyed like the Java client's default partitioner (aiokafka's copy
    of it is the reference); the project's faster murmur2 must never differ."""
    rng = random.Random(7)
    for length in range(300):
        for _ in range(10):
            key = rng.randbytes(length)
            assert murmur2(key) == aiokafka_murmur2(key), key
    assert partition_for(b"call-1", [0, 1, 2]) == (aiokafka_murmur2(b"call-1") & 0x7FFFFFFF) % 3
    # One partition: no hash to compute, the same answer as the partitioner's.
    for key in (b"call-1", b"", None, rng.randbytes(40)):
        assert partition_for(key, [0]) == 0
        assert partition_for(key, [3]) == 3


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (ConnectionResetError("reset by peer"), StoreUnavailable),
        (asyncpg.InternalClientError("cannot switch to state 15"), StoreUnavailable),
        (asyncpg.SerializationError("could not serialize"), StoreUnavailable),
        (asyncpg.NumericValueOutOfRangeError("out of range"), StoreRefusedData),
    ],
)
async def test_driver_errors_leave_the_store_as_the_projects_own(
    raised: Exception, expected: type[Exception]
) -> None:
    """What the pipeline retries (the database away, or one connection broken) against
    what it isolates row by row (a value refused)."""
    with pytest.raises(expected):
        async with store_module._translated_errors("store usages"):
            raise raised
