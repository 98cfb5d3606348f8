"""The outcome message of SPEC.md §5, written straight from the verdict.

`models.Outcome` is the message's published schema (`schemas/outcome.schema.json`);
building a pydantic model per record to write it cost more than the rest of the
outcome, so it is written here by msgspec from plain structs, with the same members in
the same order. A test holds every message written here byte for byte what the model
writes.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Literal

import msgspec

from usage_ingest.domain.messages import OutcomeError, OutcomeWarning
from usage_ingest.times import format_utc_millis

Status = Literal["created", "duplicate", "rejected"]
CREATED: Status = "created"
DUPLICATE: Status = "duplicate"
REJECTED: Status = "rejected"


@functools.lru_cache(maxsize=4096)
def record_instant(timestamp_ms: int) -> str:
    """A record timestamp as RFC 3339; cached, as a batch's records share few milliseconds."""
    return format_utc_millis(datetime.fromtimestamp(timestamp_ms / 1000, UTC))


class Source(msgspec.Struct, frozen=True, gc=False):
    """Where the record came from: the same record always has the same source."""

    topic: str
    partition: int
    offset: int
    timestamp: str | None


def source(topic: str, partition: int, offset: int, timestamp_ms: int) -> Source:
    return Source(
        topic, partition, offset, record_instant(timestamp_ms) if timestamp_ms >= 0 else None
    )


class _Problem(msgspec.Struct, frozen=True, gc=False):
    code: str
    field: str | None
    message: str


class _Outcome(msgspec.Struct, frozen=True, gc=False, rename="camel"):
    """The members of `models.Outcome`, in its order."""

    status: Status
    external_reference: str | None
    usage_id: int | None
    contract_id: int | None
    debtor_id: int | None
    inventory_id: int | None
    product_ident: str | None
    billable: bool | None
    errors: list[_Problem]
    retryable: bool | None
    warnings: list[_Problem]
    source: Source
    processed_at: str


def _problem(item: OutcomeError | OutcomeWarning) -> _Problem:
    return _Problem(item.code.value, item.field, item.message)


_ENCODER = msgspec.json.Encoder()


def outcome_json(
    status: Status,
    external_reference: str | None,
    source: Source,
    processed_at: str,
    *,
    usage_id: int | None = None,
    contract_id: int | None = None,
    debtor_id: int | None = None,
    inventory_id: int | None = None,
    product_ident: str | None = None,
    billable: bool | None = None,
    errors: Sequence[OutcomeError] = (),
    warnings: Sequence[OutcomeWarning] = (),
) -> bytes:
    """One outcome message; `retryable` is worked out from the errors (§5)."""
    return _ENCODER.encode(
        _Outcome(
            status,
            external_reference,
            usage_id,
            contract_id,
            debtor_id,
            inventory_id,
            product_ident,
            billable,
            [_problem(e) for e in errors],
            all(e.code.retryable for e in errors) if errors else None,
            [_problem(w) for w in warnings],
            source,
            processed_at,
        )
    )
