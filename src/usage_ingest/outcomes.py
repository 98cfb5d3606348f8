"""The outcome message of SPEC.md §5, written straight from the verdict.

`models.Outcome` is the message's published schema (`schemas/outcome.schema.json`);
building a pydantic model per record to write it cost more than the rest of the
outcome, so it is written here from plain dicts by orjson, with the same members in
the same order. A test holds every message written here valid against the model.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

from usage_ingest.models import OutcomeError, OutcomeWarning

Status = Literal["created", "duplicate", "rejected"]
CREATED: Status = "created"
DUPLICATE: Status = "duplicate"
REJECTED: Status = "rejected"


def instant(moment: datetime) -> str:
    """RFC 3339 in UTC with milliseconds, as in SPEC.md §5's example."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@functools.lru_cache(maxsize=4096)
def record_instant(timestamp_ms: int) -> str:
    """A record timestamp as RFC 3339; cached, as a batch's records share few milliseconds."""
    return instant(datetime.fromtimestamp(timestamp_ms / 1000, UTC))


def source(topic: str, partition: int, offset: int, timestamp_ms: int) -> dict[str, Any]:
    """Where the record came from: the same record always has the same source."""
    return {
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "timestamp": record_instant(timestamp_ms) if timestamp_ms >= 0 else None,
    }


def _problem(item: OutcomeError | OutcomeWarning) -> dict[str, Any]:
    return {"code": item.code.value, "field": item.field, "message": item.message}


def outcome_json(
    status: Status,
    external_reference: str | None,
    source: dict[str, Any],
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
    return orjson.dumps(
        {
            "status": status,
            "externalReference": external_reference,
            "usageId": usage_id,
            "contractId": contract_id,
            "debtorId": debtor_id,
            "inventoryId": inventory_id,
            "productIdent": product_ident,
            "billable": billable,
            "errors": [_problem(e) for e in errors],
            "retryable": all(e.code.retryable for e in errors) if errors else None,
            "warnings": [_problem(w) for w in warnings],
            "source": source,
            "processedAt": processed_at,
        }
    )
