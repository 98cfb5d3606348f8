"""Every outcome kind of SPEC.md §5, through the real worker, broker and Postgres.

One worker run carries all the cases (each worker start costs a group join), in
a module-scoped fixture: phase 1 is produced before the worker starts, so two
records of one key land in one batch; phase 2 sends an accepted
externalReference again once phase 1 is done, so duplicate and conflict are
also seen across batches. The tests then check each record on its own: its one
outcome (found by source offset), the `usages` table and the dead-letter topic.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from tests.support.database import create_database
from tests.support.settings import make_settings
from tests.support.worker import RunningWorker
from usage_ingest.domain.reference import ReferenceFile
from usage_ingest.kafka.admin import ensure_topics
from usage_ingest.settings import Settings
from usage_ingest.store.store import open_store

pytestmark = pytest.mark.integration

INPUT_PARTITIONS = 3
MAX_MESSAGE_BYTES = 2000

H_CODE = "usage-ingest.error.code"
H_MESSAGE = "usage-ingest.error.message"
H_RETRYABLE = "usage-ingest.error.retryable"
H_TOPIC = "usage-ingest.source.topic"
H_PARTITION = "usage-ingest.source.partition"
H_OFFSET = "usage-ingest.source.offset"
H_FAILED_AT = "usage-ingest.failed-at"
H_REPLAY_COUNT = "usage-ingest.replay-count"
DLQ_HEADERS = (
    H_CODE,
    H_MESSAGE,
    H_RETRYABLE,
    H_TOPIC,
    H_PARTITION,
    H_OFFSET,
    H_FAILED_AT,
    H_REPLAY_COUNT,
)
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
BIG_QUANTITY = "123456789012345678.123456789012"

RETRYABLE = {
    "MALFORMED_MESSAGE": False,
    "MESSAGE_TOO_LARGE": False,
    "SCHEMA_VIOLATION": False,
    "UNKNOWN_OPERATING_SITE": True,
    "UNKNOWN_PRODUCT": True,
    "UNKNOWN_CONTRACT": True,
    "CONTRACT_NOT_ACTIVE": True,
    "NO_MATCHING_CONTRACT": True,
    "NO_INVENTORY": True,
    "EXTERNAL_REFERENCE_CONFLICT": False,
}


# --- reference data ----------------------------------------------------------
#
# product 10 p.voice      USAGE_BASED ACTIVE, inventories on sites 500, 504, 505
# product 11 p.flat       FLAT_FEE                 -> UNKNOWN_PRODUCT
# product 12 p.archived   USAGE_BASED ARCHIVED     -> UNKNOWN_PRODUCT
# product 13 p.noinv      USAGE_BASED ACTIVE, no inventory anywhere -> NO_INVENTORY
# contract 100 debtor 5 site 500 from 2026-01-01
# contract 105 debtor 5 site 505 from 2026-05-01 (newer: chosen by debtor 5 in June)
# contract 101 debtor 5 site 501 from 2027-01-01   -> CONTRACT_NOT_ACTIVE in 2026
# contract 103 debtor 8 site 503 ended 2026-03-31 -> CONTRACT_NOT_ACTIVE in June
# contract 102 debtor 6 site 502, no inventory    -> NO_MATCHING_CONTRACT for debtor 6
# contract 104 debtor 9 site 504, inventory 1004 is not billable

REFERENCE = ReferenceFile.model_validate(
    {
        "operatingSites": ["GB-LON", "DE-BER"],
        "productItems": [
            {"id": 10, "reference": "p.voice", "type": "USAGE_BASED", "status": "ACTIVE"},
            {"id": 11, "reference": "p.flat", "type": "FLAT_FEE", "status": "ACTIVE"},
            {"id": 12, "reference": "p.archived", "type": "USAGE_BASED", "status": "ARCHIVED"},
            {"id": 13, "reference": "p.noinv", "type": "USAGE_BASED", "status": "ACTIVE"},
        ],
        "contracts": [
            {"id": 100, "debtorId": 5, "siteId": 500, "startDate": "2026-01-01"},
            {"id": 105, "debtorId": 5, "siteId": 505, "startDate": "2026-05-01"},
            {"id": 101, "debtorId": 5, "siteId": 501, "startDate": "2027-01-01"},
            {
                "id": 103,
                "debtorId": 8,
                "siteId": 503,
                "startDate": "2026-01-01",
                "endDate": "2026-03-31",
            },
            {"id": 102, "debtorId": 6, "siteId": 502, "startDate": "2026-01-01"},
            {"id": 104, "debtorId": 9, "siteId": 504, "startDate": "2026-01-01"},
        ],
        "usageProductInventories": [
            {
                "id": 1000,
                "siteId": 500,
                "usageProductId": 10,
                "startDate": "2026-01-01",
                "billable": True,
                "productReferences": [{"productReference": "4410000"}],
            },
            {
                "id": 1005,
                "siteId": 505,
                "usageProductId": 10,
                "startDate": "2026-05-01",
                "billable": True,
                "productReferences": [{"productReference": "4410005"}],
            },
            {
                "id": 1003,
                "siteId": 503,
                "usageProductId": 10,
                "startDate": "2026-01-01",
                "productReferences": [{"productReference": "4410003"}],
            },
            {
                "id": 1004,
                "siteId": 504,
                "usageProductId": 10,
                "startDate": "2026-01-01",
                "billable": False,
                "productReferences": [{"productReference": "4410004"}],
            },
        ],
    }
)


def event(reference: str, **fields: Any) -> dict[str, Any]:
    """A valid event for contract 100 / p.voice on 2026-06-01, with `fields` changed."""
    body: dict[str, Any] = {
        "externalReference": reference,
        "contractId": 100,
        "productIdent": "p.voice",
        "startDate": "2026-06-01T10:00:00Z",
        "endDate": "2026-06-01T10:05:00Z",
        "unitQuantities": [{"unit": "minute", "quantity": "5"}],
    }
    body.update(fields)
    return body


def as_bytes(value: dict[str, Any]) -> bytes:
    return json.dumps(value).encode()


# --- records sent and read -----------------------------------------------------


@dataclass
class Sent:
    """One input record, and where it landed once produced."""

    value: bytes | None
    key: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    partition: int = -1
    offset: int = -1

    @property
    def source(self) -> tuple[int, int]:
        return (self.partition, self.offset)


@dataclass(frozen=True)
class Read:
    """One record read back, headers as the raw list (repeats stay visible)."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]

    def header(self, name: str) -> list[str]:
        return [v.decode() for k, v in self.headers if k == name]

    def outcome(self) -> dict[str, Any]:
        assert self.value is not None
        parsed: dict[str, Any] = json.loads(self.value)
        return parsed


def keyed(key: str, value: bytes | None) -> Sent:
    """A record keyed by `key`, carrying headers of the producer's own."""
    return Sent(value, key.encode(), [("origin", key.encode()), ("trace", b"\x00\xffbinary")])


async def send(bootstrap: str, topic: str, records: list[Sent]) -> None:
    """Produce in order; fills in the partition and offset of each record."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    await producer.start()
    try:
        futures = [
            await producer.send(topic, r.value, key=r.key, headers=r.headers or None)
            for r in records
        ]
        for record, metadata in zip(records, await asyncio.gather(*futures), strict=True):
            record.partition, record.offset = metadata.partition, metadata.offset
    finally:
        await producer.stop()


async def read_until(
    bootstrap: str, topic: str, count: int, wait_s: float = 30.0, settle_s: float = 0.5
) -> list[Read]:
    """Every record of `topic` from the start: waits for `count`, then `settle_s`
    more without news, so that unwanted extra records would show up too."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    records: list[Read] = []
    quiet_since = loop.time()
    try:
        while loop.time() < deadline:
            batch = await consumer.getmany(timeout_ms=100)
            for messages in batch.values():
                records += [
                    Read(m.partition, m.offset, m.key, m.value, list(m.headers or ()))
                    for m in messages
                ]
                quiet_since = loop.time()
            if len(records) >= count and loop.time() - quiet_since >= settle_s:
                break
    finally:
        await consumer.stop()
    return records


def parse_instant(text: str) -> datetime:
    assert RFC3339.match(text), f"{text!r} is not an RFC 3339 date-time"
    return datetime.fromisoformat(text.replace("z", "Z"))


# --- the cases -------------------------------------------------------------------


@dataclass(frozen=True)
class Expect:
    status: str
    codes: tuple[str, ...] = ()
    reference: str | None = None  # the outcome's externalReference
    rejected_key: bytes | None = None  # the key of the outcome on the rejected topic
    fields: tuple[str, ...] | None = None  # the error fields, when checked
    contract: int | None = None
    debtor: int | None = None
    inventory: int | None = None
    billable: bool | None = None


VOICE_100 = {"contract": 100, "debtor": 5, "inventory": 1000, "billable": True}
REPLAYED_HEADERS = [
    ("origin", b"rp-1"),
    (H_REPLAY_COUNT, b"2"),
    (H_CODE, b"UNKNOWN_PRODUCT"),
    (H_FAILED_AT, b"2020-01-01T00:00:00Z"),
    ("after", b"kept"),
]


def rejected(code: str, reference: str, *fields: str, count: int = 1) -> Expect:
    """A refused record whose externalReference could be read."""
    return Expect("rejected", (code,) * count, reference, reference.encode(), fields or None)


def unreadable(code: str, key: bytes | None) -> Expect:
    """A refused record with no readable externalReference: keyed by its input key."""
    return Expect("rejected", (code,), None, key)


def phase_one() -> list[tuple[str, Sent, Expect]]:
    """The records produced before the worker starts: (case id, record, expectation)."""
    full = event(
        "cr-full",
        description="every field",
        operatingSite="GB-LON",
        taxLocation={"country": "GB", "city": "London"},
        performanceLocation={"country": "DEU", "postalCode": "10115"},
        unitQuantities=[
            {"unit": "minute", "quantity": BIG_QUANTITY},
            {"unit": "sms", "quantity": 3},
        ],
        properties=[{"name": "line", "value": "4410000"}],
        **{"x-unknown-field": {"kept": [1, "two"]}},
    )
    schema = {  # endDate missing, four other fields wrong
        "externalReference": "sv-1",
        "contractId": 100,
        "productIdent": "not an ident!",
        "startDate": "yesterday",
        "unitQuantities": [
            {"unit": "minute", "quantity": "-1"},
            {"unit": "sms", "quantity": "1.0000000000001"},
        ],
    }
    in_batch_dup = event("ib-dup", unitQuantities=[{"unit": "minute", "quantity": "7"}])
    in_batch_dup_again = {  # the same canonical payload, written differently
        "unitQuantities": [{"quantity": 7.000, "unit": "minute"}],
        "endDate": "2026-06-01T12:05:00+02:00",
        "startDate": "2026-06-01T10:00:00",
        "productIdent": "p.voice",
        "debtorId": 12345,  # ignored when contractId is given (§3)
        "contractId": 100,
        "externalReference": "ib-dup",
    }
    in_batch_changed = event("ib-conflict", unitQuantities=[{"unit": "minute", "quantity": 6}])
    return [
        # created: by contract, by debtor (the newest matching contract), not billable
        ("cr-full", keyed("cr-full", as_bytes(full)), Expect("created", **VOICE_100)),
        (
            "cr-debtor",
            keyed("cr-debtor", as_bytes(event("cr-debtor", contractId=None, debtorId=5))),
            Expect("created", contract=105, debtor=5, inventory=1005, billable=True),
        ),
        (
            "cr-unbillable",
            keyed("cr-unbillable", as_bytes(event("cr-unbillable", contractId=104))),
            Expect("created", contract=104, debtor=9, inventory=1004, billable=False),
        ),
        ("dup-1", keyed("dup-1", as_bytes(event("dup-1"))), Expect("created", **VOICE_100)),
        # the same key twice in one batch
        ("ib-dup-first", keyed("ib-dup", as_bytes(in_batch_dup)), Expect("created", **VOICE_100)),
        (
            "ib-dup-second",
            keyed("ib-dup", as_bytes(in_batch_dup_again)),
            Expect("duplicate", **VOICE_100),
        ),
        (
            "ib-conflict-first",
            keyed("ib-conflict", as_bytes(event("ib-conflict"))),
            Expect("created", **VOICE_100),
        ),
        (
            "ib-conflict-second",
            keyed("ib-conflict", as_bytes(in_batch_changed)),
            rejected("EXTERNAL_REFERENCE_CONFLICT", "ib-conflict", "externalReference"),
        ),
        # unreadable
        ("malformed-empty", keyed("k-empty", b""), unreadable("MALFORMED_MESSAGE", b"k-empty")),
        ("malformed-null", keyed("k-null", None), unreadable("MALFORMED_MESSAGE", b"k-null")),
        (
            "malformed-utf8",
            keyed("k-utf8", b'{"externalReference": "\xff\xfe"}'),
            unreadable("MALFORMED_MESSAGE", b"k-utf8"),
        ),
        (
            "malformed-json",
            keyed("k-json", b'{"externalReference": "mj-1",'),
            unreadable("MALFORMED_MESSAGE", b"k-json"),
        ),
        (
            "malformed-array",
            keyed("k-array", b'[{"externalReference": "arr-1"}]'),
            unreadable("MALFORMED_MESSAGE", b"k-array"),
        ),
        ("malformed-no-key", Sent(b"not json", None), unreadable("MALFORMED_MESSAGE", None)),
        (
            "too-large",
            keyed("k-large", as_bytes(event("tl-1", padding="x" * MAX_MESSAGE_BYTES))),
            unreadable("MESSAGE_TOO_LARGE", b"k-large"),
        ),
        # readable: keyed by externalReference, whatever the input key
        (
            "schema",
            keyed("input-key-sv", as_bytes(schema)),
            rejected(
                "SCHEMA_VIOLATION",
                "sv-1",
                "productIdent",
                "startDate",
                "endDate",
                "unitQuantities.0.quantity",
                "unitQuantities.1.quantity",
                count=5,
            ),
        ),
        (
            "operating-site",
            keyed("os-1", as_bytes(event("os-1", operatingSite="XX-NOWHERE"))),
            rejected("UNKNOWN_OPERATING_SITE", "os-1", "operatingSite"),
        ),
        (
            "product-missing",
            keyed("up-missing", as_bytes(event("up-missing", productIdent="p.missing"))),
            rejected("UNKNOWN_PRODUCT", "up-missing", "productIdent"),
        ),
        (
            "product-flat-fee",
            keyed("up-flat", as_bytes(event("up-flat", productIdent="p.flat"))),
            rejected("UNKNOWN_PRODUCT", "up-flat", "productIdent"),
        ),
        (
            "product-archived",
            keyed("up-archived", as_bytes(event("up-archived", productIdent="p.archived"))),
            rejected("UNKNOWN_PRODUCT", "up-archived", "productIdent"),
        ),
        (
            "contract-unknown",
            keyed("uc-1", as_bytes(event("uc-1", contractId=999))),
            rejected("UNKNOWN_CONTRACT", "uc-1", "contractId"),
        ),
        (
            "contract-not-started",
            keyed("cna-future", as_bytes(event("cna-future", contractId=101))),
            rejected("CONTRACT_NOT_ACTIVE", "cna-future", "contractId"),
        ),
        (
            "contract-ended",
            keyed("cna-ended", as_bytes(event("cna-ended", contractId=103))),
            rejected("CONTRACT_NOT_ACTIVE", "cna-ended", "contractId"),
        ),
        (
            "debtor-without-inventory",
            keyed("nmc-noinv", as_bytes(event("nmc-noinv", contractId=None, debtorId=6))),
            rejected("NO_MATCHING_CONTRACT", "nmc-noinv", "debtorId"),
        ),
        (
            "debtor-unknown",
            keyed("nmc-nodebtor", as_bytes(event("nmc-nodebtor", contractId=None, debtorId=77))),
            rejected("NO_MATCHING_CONTRACT", "nmc-nodebtor", "debtorId"),
        ),
        (
            "no-inventory",
            keyed("ni-1", as_bytes(event("ni-1", productIdent="p.noinv"))),
            rejected("NO_INVENTORY", "ni-1", "productIdent"),
        ),
        (
            "replayed",
            Sent(as_bytes(event("rp-1", contractId=999)), b"rp-key", list(REPLAYED_HEADERS)),
            rejected("UNKNOWN_CONTRACT", "rp-1", "contractId"),
        ),
    ]


def phase_two() -> list[tuple[str, Sent, Expect]]:
    """Sent once phase 1 is done: dup-1 again, the same and then a different payload."""
    dup_again = {  # the canonical payload of dup-1, written differently
        "note": "an unknown field, not part of the canonical payload",
        "unitQuantities": [{"unit": "minute", "quantity": 5.0}],
        "endDate": "2026-06-01T06:05:00-04:00",
        "startDate": "2026-06-01T10:00:00.000Z",
        "productIdent": "p.voice",
        "contractId": 100,
        "externalReference": "dup-1",
        "description": None,
    }
    changed = event("dup-1", unitQuantities=[{"unit": "minute", "quantity": "5.5"}])
    return [
        ("later-duplicate", keyed("dup-1", as_bytes(dup_again)), Expect("duplicate", **VOICE_100)),
        (
            "later-conflict",
            keyed("another-key", as_bytes(changed)),
            rejected("EXTERNAL_REFERENCE_CONFLICT", "dup-1", "externalReference"),
        ),
    ]


CASES = {case_id: expect for case_id, _, expect in phase_one() + phase_two()}
REJECTED_CASES = [case_id for case_id, expect in CASES.items() if expect.status == "rejected"]
ACCEPTED_CASES = [case_id for case_id, expect in CASES.items() if expect.status != "rejected"]


# --- one worker run ----------------------------------------------------------------


@dataclass
class Run:
    settings: Settings
    started: datetime
    sent: dict[str, Sent]
    accepted: list[Read]
    rejected: list[Read]
    dead: list[Read]
    outcomes: dict[tuple[int, int], list[Read]]  # by source (partition, offset)
    rows_after_phase_one: dict[str, dict[str, Any]]
    rows: dict[str, dict[str, Any]]
    big_quantity: dict[str, Any]
    rejections: list[dict[str, Any]]  # usage_rejections, every row

    def outcome_of(self, case_id: str) -> Read:
        found = self.outcomes[self.sent[case_id].source]
        assert len(found) == 1, f"{case_id}: {len(found)} outcomes"
        return found[0]

    def dead_letters_of(self, case_id: str) -> list[Read]:
        record = self.sent[case_id]
        return [
            d
            for d in self.dead
            if d.header(H_PARTITION) == [str(record.partition)]
            and d.header(H_OFFSET) == [str(record.offset)]
        ]


async def usages(db: asyncpg.Connection) -> dict[str, dict[str, Any]]:
    rows = await db.fetch("SELECT * FROM usages")
    return {row["external_reference"]: dict(row) for row in rows}


def by_source(*topics: list[Read]) -> dict[tuple[int, int], list[Read]]:
    found: dict[tuple[int, int], list[Read]] = {}
    for records in topics:
        for record in records:
            source = record.outcome()["source"]
            found.setdefault((source["partition"], source["offset"]), []).append(record)
    return found


@pytest.fixture(scope="module")
async def run(kafka_bootstrap: str, postgres_admin_url: str) -> Run:
    database_url = await create_database(postgres_admin_url)
    settings = make_settings(kafka_bootstrap, database_url, max_message_bytes=MAX_MESSAGE_BYTES)
    await ensure_topics(settings, [settings.topic_events], partitions=INPUT_PARTITIONS)
    await ensure_topics(settings, settings.output_topics)
    store = await open_store(settings)
    try:
        await store.load_reference(REFERENCE)
    finally:
        await store.close()
    bootstrap = settings.kafka_bootstrap_servers
    first, second = phase_one(), phase_two()
    sent = {case_id: record for case_id, record, _ in first + second}
    count_rejected = sum(e.status == "rejected" for _, _, e in first)
    started = datetime.now(UTC)
    # Phase 1 is on the topic before the worker starts: same-key records share a batch.
    await send(bootstrap, settings.topic_events, [r for _, r, _ in first])
    db = await asyncpg.connect(database_url)
    worker = RunningWorker(settings).start()
    try:
        await read_until(bootstrap, settings.topic_accepted, len(first) - count_rejected)
        await read_until(bootstrap, settings.topic_rejected, count_rejected)
        rows_after_phase_one = await usages(db)

        await send(bootstrap, settings.topic_events, [r for _, r, _ in second])
        count_rejected += sum(e.status == "rejected" for _, _, e in second)
        count_all = len(first) + len(second)
        accepted = await read_until(bootstrap, settings.topic_accepted, count_all - count_rejected)
        rejected_ = await read_until(bootstrap, settings.topic_rejected, count_rejected)
        dead = await read_until(bootstrap, settings.topic_dlq, count_rejected)
        await worker.stop()
        rows = await usages(db)
        big_quantity = await db.fetchrow(
            "SELECT unit_quantities -> 0 ->> 'quantity' AS text,"
            " jsonb_typeof(unit_quantities -> 0 -> 'quantity') AS type,"
            " (unit_quantities -> 0 -> 'quantity')::numeric = $1::numeric AS equal,"
            " (unit_quantities -> 1 -> 'quantity')::numeric AS second"
            " FROM usages WHERE external_reference = 'cr-full'",
            BIG_QUANTITY,
        )
        rejections = [dict(r) for r in await db.fetch("SELECT * FROM usage_rejections")]
    finally:
        if worker.task is not None and not worker.task.done():
            await worker.crash()
        await db.close()
    return Run(
        settings,
        started,
        sent,
        accepted,
        rejected_,
        dead,
        by_source(accepted, rejected_),
        rows_after_phase_one,
        rows,
        dict(big_quantity) if big_quantity else {},
        rejections,
    )


# --- every record --------------------------------------------------------------------


def test_every_input_record_has_exactly_one_outcome(run: Run) -> None:
    assert sorted(run.outcomes) == sorted(r.source for r in run.sent.values())
    repeated = {source: len(found) for source, found in run.outcomes.items() if len(found) != 1}
    assert repeated == {}
    for read in run.accepted + run.rejected:
        assert read.outcome()["source"]["topic"] == run.settings.topic_events


@pytest.mark.parametrize("case_id", list(CASES))
def test_outcome_status_and_topic(run: Run, case_id: str) -> None:
    expect = CASES[case_id]
    read = run.outcome_of(case_id)
    outcome = read.outcome()
    assert outcome["status"] == expect.status, outcome
    assert read in (run.rejected if expect.status == "rejected" else run.accepted)
    source = outcome["source"]
    assert (source["topic"], source["partition"], source["offset"]) == (
        run.settings.topic_events,
        *run.sent[case_id].source,
    )
    parse_instant(source["timestamp"])
    processed_at = parse_instant(outcome["processedAt"])
    assert run.started - timedelta(seconds=5) <= processed_at <= datetime.now(UTC)


@pytest.mark.parametrize("case_id", ACCEPTED_CASES)
def test_accepted_outcome(run: Run, case_id: str) -> None:
    expect = CASES[case_id]
    read = run.outcome_of(case_id)
    outcome = read.outcome()
    reference = json.loads(run.sent[case_id].value or b"")["externalReference"]
    assert read.key == reference.encode()
    assert outcome["externalReference"] == reference
    assert isinstance(outcome["usageId"], int)
    assert outcome["usageId"] == run.rows[reference]["id"]
    assert (outcome["contractId"], outcome["debtorId"], outcome["inventoryId"]) == (
        expect.contract,
        expect.debtor,
        expect.inventory,
    )
    assert outcome["productIdent"] == "p.voice"
    assert outcome["billable"] is expect.billable
    assert outcome["errors"] == []
    assert outcome["retryable"] is None
    assert run.dead_letters_of(case_id) == []


@pytest.mark.parametrize("case_id", REJECTED_CASES)
def test_rejected_outcome(run: Run, case_id: str) -> None:
    expect = CASES[case_id]
    read = run.outcome_of(case_id)
    outcome = read.outcome()
    assert read.key == expect.rejected_key
    assert outcome["externalReference"] == expect.reference
    assert tuple(e["code"] for e in outcome["errors"]) == expect.codes
    assert all(e["message"] for e in outcome["errors"])
    if expect.fields is not None:
        assert sorted(e["field"] for e in outcome["errors"]) == sorted(expect.fields)
    assert outcome["retryable"] is all(RETRYABLE[code] for code in expect.codes)
    assert outcome["usageId"] is None
    assert outcome["billable"] is None
    if expect.reference is not None and expect.codes[0] != "EXTERNAL_REFERENCE_CONFLICT":
        assert expect.reference not in run.rows


@pytest.mark.parametrize("case_id", REJECTED_CASES)
def test_rejected_record_is_dead_lettered_unchanged_with_headers(run: Run, case_id: str) -> None:
    record = run.sent[case_id]
    outcome = run.outcome_of(case_id).outcome()
    letters = run.dead_letters_of(case_id)
    assert len(letters) == 1, f"{len(letters)} dead letters"
    letter = letters[0]
    assert letter.key == record.key
    assert letter.value == record.value
    ours = set(DLQ_HEADERS)
    assert [h for h in letter.headers if h[0] not in ours] == [
        h for h in record.headers if h[0] not in ours
    ]
    repeated = {name: letter.header(name) for name in DLQ_HEADERS if len(letter.header(name)) != 1}
    assert repeated == {}, "each dead-letter header must appear exactly once"
    header = {name: letter.header(name)[0] for name in DLQ_HEADERS}
    assert header[H_CODE] == outcome["errors"][0]["code"]
    assert header[H_RETRYABLE] == ("true" if outcome["retryable"] else "false")
    assert header[H_TOPIC] == run.settings.topic_events
    assert header[H_PARTITION] == str(record.partition)
    assert header[H_OFFSET] == str(record.offset)
    for error in outcome["errors"]:
        assert error["message"][:80] in header[H_MESSAGE]
    failed_at = parse_instant(header[H_FAILED_AT])
    assert run.started - timedelta(seconds=5) <= failed_at <= datetime.now(UTC)
    assert header[H_REPLAY_COUNT] == dict(record.headers).get(H_REPLAY_COUNT, b"0").decode()


def test_only_rejected_records_are_dead_lettered(run: Run) -> None:
    assert len(run.dead) == len(REJECTED_CASES)


def test_replayed_record_keeps_its_count_and_loses_stale_headers(run: Run) -> None:
    (letter,) = run.dead_letters_of("replayed")
    assert letter.header(H_REPLAY_COUNT) == ["2"]
    assert letter.header(H_CODE) == ["UNKNOWN_CONTRACT"]
    assert letter.header(H_FAILED_AT) != ["2020-01-01T00:00:00Z"]
    assert len(letter.header(H_FAILED_AT)) == 1
    assert letter.header("origin") == ["rp-1"]
    assert letter.header("after") == ["kept"]


# --- the refusals kept in Postgres (SPEC.md §7) ----------------------------------------


def test_every_refused_record_is_kept_once_and_no_accepted_one(run: Run) -> None:
    kept = sorted(
        (r["source_topic"], r["source_partition"], r["source_offset"]) for r in run.rejections
    )
    expected = sorted((run.settings.topic_events, *run.sent[c].source) for c in REJECTED_CASES)
    assert kept == expected


@pytest.mark.parametrize("case_id", REJECTED_CASES)
def test_a_kept_refusal_is_what_its_outcome_and_dead_letter_say(run: Run, case_id: str) -> None:
    outcome = run.outcome_of(case_id).outcome()
    [letter] = run.dead_letters_of(case_id)
    [row] = [
        r
        for r in run.rejections
        if (r["source_partition"], r["source_offset"]) == run.sent[case_id].source
    ]
    assert row["external_reference"] == outcome["externalReference"]
    assert json.loads(row["errors"]) == outcome["errors"]
    assert row["codes"] == [e["code"] for e in outcome["errors"]]
    assert list(CASES[case_id].codes) == row["codes"]
    assert row["retryable"] is outcome["retryable"]
    assert row["source_topic"] == run.settings.topic_events
    assert row["source_timestamp"] == parse_instant(outcome["source"]["timestamp"])
    assert row["failed_at"] == parse_instant(letter.header(H_FAILED_AT)[0])
    assert str(row["replay_count"]) == letter.header(H_REPLAY_COUNT)[0]


def test_a_replayed_refusal_keeps_its_replay_count(run: Run) -> None:
    [row] = [r for r in run.rejections if r["external_reference"] == "rp-1"]
    assert row["replay_count"] == 2


def test_conflicts_decided_by_storage_are_kept_too(run: Run) -> None:
    conflicts = sorted(
        r["source_offset"] for r in run.rejections if r["codes"] == ["EXTERNAL_REFERENCE_CONFLICT"]
    )
    assert conflicts == sorted(run.sent[c].offset for c in ("ib-conflict-second", "later-conflict"))


# --- the usages table ----------------------------------------------------------------


def test_rows_exist_exactly_for_accepted_references(run: Run) -> None:
    accepted = {json.loads(run.sent[c].value or b"")["externalReference"] for c in ACCEPTED_CASES}
    assert set(run.rows) == accepted
    assert set(run.rows_after_phase_one) == accepted


@pytest.mark.parametrize("case_id", [c for c in ACCEPTED_CASES if CASES[c].status == "created"])
def test_created_row(run: Run, case_id: str) -> None:
    expect = CASES[case_id]
    record = run.sent[case_id]
    row = run.rows[json.loads(record.value or b"")["externalReference"]]
    assert (row["contract_id"], row["debtor_id"], row["inventory_id"]) == (
        expect.contract,
        expect.debtor,
        expect.inventory,
    )
    assert row["product_item_id"] == 10
    assert row["product_ident"] == "p.voice"
    assert row["billable"] is expect.billable
    assert SHA256_HEX.match(row["payload_hash"]), row["payload_hash"]
    assert (row["source_topic"], row["source_partition"], row["source_offset"]) == (
        run.settings.topic_events,
        record.partition,
        record.offset,
    )
    assert row["start_date"] == datetime(2026, 6, 1, 10, tzinfo=UTC)
    assert row["end_date"] == datetime(2026, 6, 1, 10, 5, tzinfo=UTC)
    assert row["raw_payload"] == (record.value or b"").decode()
    assert row["received_at"] >= run.started - timedelta(seconds=5)


def test_unknown_top_level_fields_are_kept_in_raw_payload(run: Run) -> None:
    raw = json.loads(run.rows["cr-full"]["raw_payload"])
    assert raw["x-unknown-field"] == {"kept": [1, "two"]}


def test_quantities_are_stored_exactly(run: Run) -> None:
    assert run.big_quantity == {
        "text": BIG_QUANTITY,
        "type": "number",
        "equal": True,
        "second": Decimal(3),
    }


# --- duplicates and conflicts --------------------------------------------------------


@pytest.mark.parametrize("pair", ["ib-dup", "ib-conflict"])
def test_same_key_twice_in_one_batch(run: Run, pair: str) -> None:
    first, second = run.sent[f"{pair}-first"], run.sent[f"{pair}-second"]
    assert first.partition == second.partition
    assert first.offset < second.offset
    first_outcome = run.outcome_of(f"{pair}-first").outcome()
    second_outcome = run.outcome_of(f"{pair}-second").outcome()
    # One batch shares one processedAt: without it this test would prove nothing.
    assert first_outcome["processedAt"] == second_outcome["processedAt"], (
        "precondition: the two records were not processed in one batch"
    )
    assert first_outcome["status"] == "created"
    row = run.rows[pair]
    assert (row["source_partition"], row["source_offset"]) == first.source
    assert row["id"] == first_outcome["usageId"]
    if pair == "ib-dup":
        assert second_outcome["status"] == "duplicate"
        assert second_outcome["usageId"] == first_outcome["usageId"]
    else:
        assert second_outcome["status"] == "rejected"
        assert [e["code"] for e in second_outcome["errors"]] == ["EXTERNAL_REFERENCE_CONFLICT"]


def test_later_duplicate_and_conflict_leave_the_row_unchanged(run: Run) -> None:
    original = run.outcome_of("dup-1").outcome()
    duplicate = run.outcome_of("later-duplicate").outcome()
    conflict = run.outcome_of("later-conflict").outcome()
    assert original["processedAt"] != duplicate["processedAt"], "precondition: a later batch"
    assert duplicate["status"] == "duplicate"
    assert duplicate["usageId"] == original["usageId"]
    assert conflict["status"] == "rejected"
    assert conflict["retryable"] is False
    assert run.rows == run.rows_after_phase_one
