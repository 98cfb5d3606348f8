"""Outcome messages are written without a model per record (`outcomes.outcome_json`):
each must still be exactly what the published model (`models.Outcome`) writes."""

from __future__ import annotations

import json

import pytest

from tests.support.fakes import event, make_pipeline, record, run_until_drained
from usage_ingest.domain.messages import Outcome

RECORDS = [
    record(event("created"), 0),
    record(event("created"), 1),  # duplicate
    record(event("created", quantity="2"), 2),  # conflict
    record(event("warned", serviceCountry="GB"), 3),
    record(event("no-contract", contractId=999), 4),
    record(event("by-debtor", contractId=None, debtorId=3), 5),
    record(b'{"externalReference": "bad", "productIdent": 5}', 6),
    record(b"not json", 7, key=b"input-key"),
    record(event("na\u00efve-\u2603", description='caf\u00e9 \u2603 "quoted" \\ \n'), 8),
]


@pytest.fixture(scope="module")
async def published() -> list[bytes]:
    pipeline, _, consumer, out = make_pipeline([RECORDS])
    await run_until_drained(pipeline, consumer)
    return [
        r.value for r in out.sent if r.topic in {"usage.accepted", "usage.rejected"} and r.value
    ]


async def test_every_status_and_shape_is_written(published: list[bytes]) -> None:
    statuses = [json.loads(v)["status"] for v in published]
    assert sorted(set(statuses)) == ["created", "duplicate", "rejected"]
    assert len(published) == len(RECORDS)


async def test_each_message_is_byte_for_byte_what_the_model_writes(published: list[bytes]) -> None:
    for value in published:
        model = Outcome.model_validate_json(value)
        assert model.to_json() == value
