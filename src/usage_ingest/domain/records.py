"""The records that pass through the worker: what is read from Kafka, what is written
to it, and what is stored per usage and per refusal. Plain tuples, no behaviour: the
adapters (`kafka`, `store`) build and take them, and everything between sees only these."""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

Partition = tuple[str, int]
Header = tuple[str, bytes]


# Records are NamedTuples, not frozen dataclasses: one is made per record on the hot
# path, and a tuple is built in C where a frozen dataclass sets each field in Python.
class InputRecord(NamedTuple):
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[Header, ...]
    timestamp_ms: int


class OutputRecord(NamedTuple):
    topic: str
    key: bytes | None
    value: bytes | None  # None is a null value (a tombstone), kept as such
    headers: tuple[Header, ...] = ()


class UsageRow(NamedTuple):
    """One usage to store, in the column order of the `usage_batch` staging table: a
    tuple, as COPY takes it."""

    external_reference: str
    contract_id: int
    debtor_id: int
    inventory_id: int
    product_item_id: int
    product_ident: str
    description: str | None
    start_date: str  # RFC 3339 in UTC, as in the canonical payload: Postgres reads it
    end_date: str
    operating_site: str | None
    tax_location: str | None
    performance_location: str | None
    service_country: str | None
    unit_quantities: str | None
    properties: str | None
    billable: bool
    payload_hash: str
    raw_payload: str
    source_topic: str
    source_partition: int
    source_offset: int


USAGE_COLUMNS: tuple[str, ...] = UsageRow._fields


class StoredUsage(NamedTuple):  # one per stored record: a tuple is built in C
    """The row that holds an external reference after `store_usages`."""

    usage_id: int
    inserted: bool
    payload_hash: str
    source_topic: str
    source_partition: int
    source_offset: int


class RejectionRow(NamedTuple):
    """One refused source record to keep in `usage_rejections` (SPEC.md §7)."""

    external_reference: str | None
    errors: str  # JSON array of {"code", "field", "message"}, as on the outcome
    retryable: bool
    source_topic: str
    source_partition: int
    source_offset: int
    source_timestamp_ms: int | None  # None when the record has no timestamp
    replay_count: int


def next_offsets(records: Iterable[InputRecord]) -> dict[Partition, int]:
    """Per partition, the offset after the last record of the batch."""
    offsets: dict[Partition, int] = {}
    for record in records:
        key = (record.topic, record.partition)
        offsets[key] = max(offsets.get(key, 0), record.offset + 1)
    return offsets
