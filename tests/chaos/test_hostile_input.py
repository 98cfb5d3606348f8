"""Scenario 5, hostile input: property-based malformed and adversarial records
(`tests/support/strategies.py`), first straight at the validator and the pipeline's
decision step (thousands of cases, no servers), then through a running worker
(hundreds, twice over, mixed with valid events).

The promises: every record gets exactly one verdict and one outcome, the outcome
and the dead letter can always be written, nothing invalid is stored, a poison
record never crashes or stalls the worker, and its memory stays bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any

import msgspec
import pytest
from hypothesis import given

from tests.chaos.checker import Verdict, check
from tests.chaos.figures import record
from tests.chaos.harness import Chaos, unique
from tests.support.broker import wait_committed
from tests.support.events import Outgoing, log_end, produce, sequence, usage_event
from tests.support.settings import INPUT_PARTITIONS
from tests.support.strategies import draw_many, hostile_records, hypothesis_settings
from usage_ingest.domain.dead_letters import DEAD_LETTER_HEADERS
from usage_ingest.domain.messages import IDENT_PATTERN
from usage_ingest.domain.records import InputRecord, RejectionRow, StoredUsage, UsageRow
from usage_ingest.domain.resolution import (
    Contract,
    Inventory,
    ProductItem,
    ReferenceKeys,
    ReferenceSnapshot,
)
from usage_ingest.domain.validation import InvalidEvent, ValidEvent, validate_record
from usage_ingest.errors import ErrorCode
from usage_ingest.settings import Settings
from usage_ingest.worker.pipeline import Pipeline

CASES = int(os.environ.get("CHAOS_HOSTILE_CASES", "2500"))
THROUGH_WORKER = 300
MAX_BYTES = 65536
SLOWEST_ALLOWED_S = 2.0
RECORD_LEVEL = {
    ErrorCode.MALFORMED_MESSAGE,
    ErrorCode.MESSAGE_TOO_LARGE,
    ErrorCode.SCHEMA_VIOLATION,
}


# --- straight at the validator and the pipeline's decisions -----------------------------


class DemoStore:
    """The demo reference data in memory; every usage is new (the unique index's view)."""

    snapshot = ReferenceSnapshot.build(
        operating_sites=["GB-LON", "DE-BER"],
        products=[ProductItem(1, "demo.usage", "USAGE_BASED", "ACTIVE")],
        contracts=[Contract(1, 1, 1, date(2020, 1, 1), None)],
        inventories=[Inventory(1, 1, 1, date(2020, 1, 1), None, True)],
    )

    async def fetch_reference(self, keys: ReferenceKeys) -> ReferenceSnapshot:
        return self.snapshot

    @contextlib.asynccontextmanager
    async def batch(self) -> AsyncIterator[DemoStore]:
        yield self

    async def store_rejections(self, rows: Sequence[RejectionRow], failed_at: str) -> None:
        """Every refusal, however hostile the record, is one Postgres can keep."""
        for row in rows:
            assert_storable(row.errors)
            assert_storable(json.dumps(json.loads(row.errors), ensure_ascii=False))
            if row.external_reference is not None:
                assert_storable(row.external_reference)

    async def store_usages(self, rows: Sequence[UsageRow]) -> dict[str, StoredUsage]:
        return {
            row.external_reference: StoredUsage(
                n, True, row.payload_hash, row.source_topic, row.source_partition, row.source_offset
            )
            for n, row in enumerate(rows, 1)
        }


def strings_in(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from strings_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings_in(item)


def assert_storable(text: str) -> None:
    assert "\x00" not in text
    text.encode("utf-8")  # no lone surrogate


def assert_sound(value: bytes, verdict: ValidEvent | InvalidEvent) -> None:
    """What a verdict must be, whatever the input."""
    if isinstance(verdict, InvalidEvent):
        assert verdict.errors
        assert {e.code for e in verdict.errors} <= RECORD_LEVEL, verdict.errors
        if verdict.external_reference is not None:
            assert_storable(verdict.external_reference)
        return
    event = verdict.event
    for ident in (event.external_reference, event.product_ident):
        assert ident.isascii()
        assert re.fullmatch(IDENT_PATTERN, ident)
    for text in strings_in(msgspec.to_builtins(event)):
        assert_storable(text)
    for item in event.unit_quantities or ():
        assert isinstance(item.quantity, Decimal)
        assert item.quantity.is_finite()
        assert item.quantity >= 0
    assert event.end_date >= event.start_date
    assert re.fullmatch(r"[0-9a-f]{64}", verdict.payload_hash)
    again = validate_record(value, MAX_BYTES)
    assert isinstance(again, ValidEvent)
    assert again.payload_hash == verdict.payload_hash, "the canonical hash is not deterministic"


def test_every_hostile_record_gets_one_sound_verdict_and_one_writable_outcome() -> None:
    started = time.monotonic()
    pipeline = Pipeline(Settings(), DemoStore(), consumer=None, producer=None)  # type: ignore[arg-type]
    loop = asyncio.new_event_loop()
    seen: Counter[str] = Counter()
    slowest = 0.0

    @hypothesis_settings(CASES)
    @given(hostile_records)
    def one(value: bytes) -> None:
        nonlocal slowest
        began = time.monotonic()
        verdict = validate_record(value, MAX_BYTES)
        assert_sound(value, verdict)
        source = InputRecord("usage.events", 0, 42, b"key", value, (), 1_795_000_000_000)
        verdicts, outgoing = loop.run_until_complete(pipeline.decide([source]))
        slowest = max(slowest, time.monotonic() - began)
        [outcome] = verdicts
        published = json.loads(outgoing[0].value or b"")
        assert published["source"] == {
            "topic": "usage.events",
            "partition": 0,
            "offset": 42,
            "timestamp": published["source"]["timestamp"],
        }
        if isinstance(verdict, InvalidEvent):
            assert outcome.status == "rejected"
            assert [e.code for e in outcome.errors] == [e.code for e in verdict.errors]
        if outcome.status == "rejected":
            # The dead letter: the record unchanged, with headers that are plain UTF-8.
            [dead] = outgoing[1:]
            assert dead.value == value
            assert dead.key == b"key"
            assert {k for k, _ in dead.headers} == DEAD_LETTER_HEADERS
            for _, header in dead.headers:
                header.decode("utf-8")
            seen[outcome.errors[0].code.value] += 1
        else:
            assert outcome.status == "created"
            assert len(outgoing) == 1
            seen["accepted"] += 1

    try:
        one()
    finally:
        loop.close()
    cases = sum(seen.values())
    record(
        "5a hostile input: validator",
        Verdict(events=cases, stored=seen["accepted"], lost=0, doubled=0, outcomes_missing=0),
        recovery_s=None,
        faults=", ".join(f"{code} {n}" for code, n in seen.most_common())
        + f"; slowest {slowest * 1000:.0f} ms",
        started=started,
    )
    assert cases >= CASES * 0.9, "Hypothesis ran far fewer cases than asked"
    assert slowest < SLOWEST_ALLOWED_S, f"one record took {slowest:.1f} s to decide"


# --- through a running worker -----------------------------------------------------------------


def _number(text: str) -> int | Decimal:
    return int(text) if len(text) <= 20 else Decimal(text)


def _fraction(text: str) -> Decimal | str:
    """Exact, or the text itself where no Decimal can hold the exponent (such a number
    can only sit in an unknown field of a valid event, where a string is as good)."""
    try:
        return Decimal(text)
    except InvalidOperation:
        return text


def as_outgoing(values: list[bytes], prefix: str) -> list[Outgoing]:
    """Each hostile value as a record. A valid one gets a reference of its own, so that
    two never conflict (resolution may still refuse it); its other fields, unknown
    ones included, stay as hostile as they were."""
    records = []
    for index, value in enumerate(values):
        partition = index % INPUT_PARTITIONS
        if isinstance(validate_record(value, MAX_BYTES), InvalidEvent):
            records.append(Outgoing(value, partition, b"hostile", None))
            continue
        body = json.loads(value, parse_float=_fraction, parse_int=_number)
        reference = f"{prefix}-{index}"
        body["externalReference"] = reference
        renamed = json.dumps(body, default=str).encode()
        assert isinstance(validate_record(renamed, MAX_BYTES), ValidEvent), value[:300]
        records.append(Outgoing(renamed, partition, reference.encode(), reference, True))
    return records


def rss_mib(worker_rss: tuple[int, int]) -> tuple[float, float]:
    return worker_rss[0] / 1024, worker_rss[1] / 1024


@pytest.mark.integration
@pytest.mark.timeout(150)
async def test_worker_survives_hostile_records_with_bounded_memory(chaos: Chaos) -> None:
    started = time.monotonic()
    url = await chaos.database()
    settings = await chaos.settings(url, batch_max_records=100)
    hostile = as_outgoing(draw_many(hostile_records, THROUGH_WORKER), unique("hostile"))
    valid = sequence(unique("calm"), 0, 3 * THROUGH_WORKER)
    # Hostile records among valid ones: one poison record must not hold back the rest.
    mixed = [
        r for pair in zip(valid[::3], valid[1::3], valid[2::3], hostile, strict=True) for r in pair
    ]
    worker = chaos.worker(settings)
    worker.start()
    warm_up = await produce(settings, sequence(unique("warm"), 0, 300))
    await wait_committed(settings, log_end(warm_up), within_s=60)
    baseline = rss_mib(worker.rss_kib())
    sent = warm_up + await produce(settings, mixed, chunk=200)
    await wait_committed(settings, log_end(sent), within_s=60)
    after_first = rss_mib(worker.rss_kib())
    # The same hostile records again: a leak would grow the worker a second time.
    again = [r for r in hostile if r.reference is None]
    sent += await produce(settings, again, chunk=200)
    healed = time.monotonic()
    caught_up = await wait_committed(settings, log_end(sent), within_s=60)
    after_second = rss_mib(worker.rss_kib())
    assert worker.running, worker.output()[-3000:]
    assert await worker.terminate() == 0
    verdict = await check(settings, url, sent)
    refused = sum(1 for r in sent if r.reference is None)
    record(
        "5b hostile input: worker",
        verdict,
        recovery_s=caught_up - healed,
        faults=f"{refused} hostile records refused; RSS {baseline[0]:.0f} -> {after_first[0]:.0f}"
        f" -> {after_second[0]:.0f} MiB (peak {after_second[1]:.0f})",
        started=started,
    )
    assert verdict.clean, verdict
    assert worker.count("worker_failed") == 0
    assert after_first[0] - baseline[0] < 150, (baseline, after_first)
    assert after_second[0] - after_first[0] < 40, (after_first, after_second)
    assert after_second[1] < 600, f"peak RSS {after_second[1]:.0f} MiB"


def with_number(reference: str, where: str, number: str) -> bytes:
    body = json.loads(usage_event(reference, 0))
    if where == "quantity":
        body["unitQuantities"][0]["quantity"] = "PLACEHOLDER"
    else:
        body[where] = "PLACEHOLDER"
    return json.dumps(body).encode().replace(b'"PLACEHOLDER"', number.encode())


@pytest.mark.integration
@pytest.mark.timeout(120)
async def test_numbers_no_decimal_can_hold_get_one_outcome_each_from_a_running_worker(
    chaos: Chaos,
) -> None:
    """Each of these once stopped `usage-ingest run` with `worker_failed`, and again at
    every restart, blocking its partition for good (SPEC.md §6)."""
    url = await chaos.database()
    settings = await chaos.settings(url)
    prefix = unique("huge")
    poison = [
        Outgoing(b"[0.4e006699999999999999999999999999999999999999]", 0, b"alone", None),
        Outgoing(with_number(f"{prefix}-q", "quantity", "1e1000000000000000000"), 0, b"q", None),
        Outgoing(
            with_number(f"{prefix}-id", "contractId", "1e-1000000000000000000"), 0, b"i", None
        ),
        # Unknown fields are ignored (SPEC.md §3): this one is stored, raw text and all.
        Outgoing(
            with_number(f"{prefix}-x", "extension", "-1e1000000000000000000"),
            0,
            b"x",
            f"{prefix}-x",
        ),
    ]
    after = sequence(prefix, 0, 4 * INPUT_PARTITIONS)  # the same partitions, behind them
    worker = chaos.worker(settings)
    worker.start()
    sent = await produce(settings, [*poison, *after])
    await wait_committed(settings, log_end(sent), within_s=60)
    assert worker.running, worker.output()[-3000:]
    verdict = await check(settings, url, sent)
    assert worker.count("worker_failed") == 0
    assert await worker.terminate() == 0
    assert verdict.clean, verdict
    assert verdict.stored == 1 + len(after)
