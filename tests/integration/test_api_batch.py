"""POST /usages with a JSON array (SPEC-API.md, "The read side"): all or nothing, on the
real broker. What was published is read back from the input topic up to its log end."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from tests.support.api import ApiWorld, unique
from tests.support.broker import read_all
from tests.support.settings import INPUT_PARTITIONS
from usage_ingest.api.app import create_app
from usage_ingest.kafka.producer import OutputProducer

pytestmark = pytest.mark.integration

JSON = {"Content-Type": "application/json"}


def codes(response: httpx.Response) -> list[tuple[str, str | None]]:
    return [(e["code"], e["field"]) for e in response.json()["errors"]]


def event(reference: str, **fields: Any) -> bytes:
    return json.dumps(
        {
            "externalReference": reference,
            "contractId": 1,
            "productIdent": "voice.uk",
            "startDate": "2026-11-22T10:00:00Z",
            "endDate": "2026-11-22T10:04:30Z",
            "unitQuantities": [{"unit": "minute", "quantity": "4.5"}],
            **fields,
        }
    ).encode()


async def published(api: ApiWorld) -> dict[bytes, list[bytes]]:
    """Every record of the input topic up to its log end: values by key."""
    records = await read_all(api.settings, api.settings.topic_events, INPUT_PARTITIONS)
    by_key: dict[bytes, list[bytes]] = {}
    for record in records:
        assert record.key is not None
        by_key.setdefault(record.key, []).append(record.value or b"")
    return by_key


async def post(api: ApiWorld, content: bytes) -> httpx.Response:
    return await api.client.post("/usages", content=content, headers=JSON)


async def test_a_good_batch_is_published_all_of_it_as_sent(api: ApiWorld) -> None:
    references = [unique("batch-") for _ in range(3)]
    events = [
        event(references[0]),
        event(references[1], futureField={"x": 1}),
        event(references[2], unitQuantities=[{"unit": "sms", "quantity": "12.50"}]),
    ]
    content = b" [\n" + events[0] + b" ,\n  " + events[1] + b",\t" + events[2] + b"\n] "
    before = api.registry.get_sample_value("usage_ingest_api_usages_queued_total") or 0
    response = await post(api, content)
    assert response.status_code == 202, response.text
    assert response.json() == {"status": "queued", "queued": 3, "externalReferences": references}
    on_topic = await published(api)
    # Each event keyed by its reference, its value byte for byte what was sent.
    assert [on_topic.get(r.encode()) for r in references] == [[e] for e in events]
    after = api.registry.get_sample_value("usage_ingest_api_usages_queued_total")
    assert after == before + 3


async def test_a_batch_with_one_bad_event_publishes_nothing(api: ApiWorld) -> None:
    good, bad_quantity, bad_reference = unique("batch-"), unique("batch-"), "bad ref!"
    content = (
        b"["
        + event(good)
        + b","
        + event(bad_quantity, unitQuantities=[{"unit": "minute", "quantity": "-1"}])
        + b","
        + event(bad_reference)
        + b","
        + b'{"externalReference": "x", "externalReference": "y"}'
        + b"]"
    )
    response = await post(api, content)
    assert response.status_code == 400
    assert codes(response) == [
        ("SCHEMA_VIOLATION", "1.unitQuantities.0.quantity"),
        ("SCHEMA_VIOLATION", "2.externalReference"),
        ("MALFORMED_MESSAGE", "3"),
    ]
    # Published after the refused batch: once it is on the topic, so would the batch be.
    after = unique("after-")
    assert (await post(api, event(after))).status_code == 202
    on_topic = await published(api)
    assert after.encode() in on_topic
    assert not {good.encode(), bad_quantity.encode(), b"x", b"y"} & on_topic.keys()


async def test_one_reference_with_two_payloads_in_a_batch_is_refused(api: ApiWorld) -> None:
    reference, other = unique("batch-"), unique("batch-")
    content = (
        b"["
        + event(reference)
        + b","
        + event(other)
        + b","
        + event(reference, unitQuantities=[{"unit": "minute", "quantity": "5"}])
        + b"]"
    )
    response = await post(api, content)
    assert response.status_code == 400
    assert codes(response) == [("EXTERNAL_REFERENCE_CONFLICT", "2.externalReference")]
    assert "event 0" in response.json()["errors"][0]["message"]
    after = unique("after-")
    assert (await post(api, event(after))).status_code == 202
    on_topic = await published(api)
    assert after.encode() in on_topic
    assert not {reference.encode(), other.encode()} & on_topic.keys()


async def test_one_reference_with_the_same_canonical_payload_twice_is_taken(
    api: ApiWorld,
) -> None:
    reference = unique("batch-")
    # "4.5" and 4.50 are the same decimal: the same canonical payload (§6).
    same = event(reference, unitQuantities=[{"unit": "minute", "quantity": 4.50}])
    response = await post(api, b"[" + event(reference) + b"," + same + b"]")
    assert response.status_code == 202, response.text
    assert response.json()["externalReferences"] == [reference, reference]


@pytest.mark.parametrize(
    ("content", "code"),
    [
        (b"[]", "SCHEMA_VIOLATION"),
        (b"[ ", "MALFORMED_MESSAGE"),
        (b'[{"a": 1},]', "MALFORMED_MESSAGE"),
        (b'[{"a": 1} {"b": 2}]', "MALFORMED_MESSAGE"),
        (b'[{"a": 1}] []', "MALFORMED_MESSAGE"),
        (b'[{"a": 1}', "MALFORMED_MESSAGE"),
    ],
)
async def test_a_body_that_is_no_array_of_events_is_400(
    api: ApiWorld, content: bytes, code: str
) -> None:
    response = await post(api, content)
    assert response.status_code == 400
    assert [e["code"] for e in response.json()["errors"]] == [code]


async def test_a_batch_over_the_maximum_is_400_and_publishes_nothing(api: ApiWorld) -> None:
    settings = api.settings.model_copy(update={"api_max_batch": 2})
    producer = OutputProducer(settings)
    await producer.start()
    app = create_app(settings, api.store, producer, registry=CollectorRegistry())
    references = [unique("batch-") for _ in range(3)]
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://api.test",
        headers={"X-API-KEY": api.admin_key, **JSON},
    ) as client:
        content = b"[" + b",".join(event(r) for r in references) + b"]"
        response = await client.post("/usages", content=content)
        assert response.status_code == 400
        assert codes(response) == [("SCHEMA_VIOLATION", None)]
        assert "at most 2" in response.json()["errors"][0]["message"]
        content = b"[" + b",".join(event(r) for r in references[:2]) + b"]"
        assert (await client.post("/usages", content=content)).status_code == 202
    await producer.stop()
    on_topic = await published(api)
    assert [r.encode() in on_topic for r in references] == [True, True, False]
