"""The shortest path through the whole system: one event in, one row and one outcome out."""

from __future__ import annotations

import json

import asyncpg

from tests.support.broker import produce_values, read_topic
from tests.support.database import DEMO_REFERENCE
from usage_ingest.domain.reference import read_reference_file
from usage_ingest.settings import Settings
from usage_ingest.store.store import open_store


async def test_one_event_is_stored_and_accepted(
    settings: Settings, db: asyncpg.Connection, start_worker
) -> None:
    store = await open_store(settings)
    await store.load_reference(read_reference_file(DEMO_REFERENCE))
    await store.close()
    event = {
        "externalReference": "smoke-1",
        "contractId": 1,
        "productIdent": "demo.usage",
        "startDate": "2026-11-22T10:00:00Z",
        "endDate": "2026-11-22T10:01:00Z",
        "unitQuantities": [{"unit": "minute", "quantity": 1}],
    }
    await produce_values(
        settings.kafka_bootstrap_servers, settings.topic_events, [json.dumps(event).encode()]
    )
    worker = start_worker(settings)
    accepted = await read_topic(settings.kafka_bootstrap_servers, settings.topic_accepted, 1)
    await worker.stop()
    assert [json.loads(m.value)["status"] for m in accepted] == ["created"]
    assert (
        await db.fetchval("SELECT count(*) FROM usages WHERE external_reference = 'smoke-1'") == 1
    )
