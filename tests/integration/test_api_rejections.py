"""GET /usage-rejections (SPEC-API.md, "The read side"): the item's form, `resolvedBy`
from the usage stored under the same reference, newest first, sort, paging with
X-Total-Count, `fields`, every filter, and a 400 per bad parameter, against a real
Postgres holding refusals and usages inserted with SQL."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest

from tests.support.api import ApiWorld, add_key, close_world, open_world
from tests.support.database import INSERT_REJECTION, INSERT_USAGE, create_database
from usage_ingest.api.keys import Permission

pytestmark = pytest.mark.integration

T = "usage.events"


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def error(code: str, field: str | None = None) -> dict[str, Any]:
    return {"code": code, "field": field, "message": f"{code} at {field}"}


# name → (externalReference, errors, retryable, (topic, partition, offset, timestamp),
# failedAt, replayCount). Inserted in this order, so ids ascend in it.
REJECTIONS: dict[str, tuple[Any, ...]] = {
    "a": ("R-1", [error("NO_INVENTORY")], True, (T, 0, 10, "2026-05-01T09:59:59.5Z"),
          "2026-05-01T10:00:00Z", 0),
    # The same record, refused again after a replay: another source, its replay count.
    "b": ("R-1", [error("NO_INVENTORY")], True, (T, 0, 42, "2026-05-02T09:00:00Z"),
          "2026-05-02T10:00:00Z", 1),
    "c": ("R-2", [error("SCHEMA_VIOLATION", "startDate"), error("SCHEMA_VIOLATION", "endDate")],
          False, (T, 1, 7, None), "2026-05-03T00:00:00Z", 0),
    # Unreadable: no reference. Failed in the same batch as "c".
    "d": (None, [error("MALFORMED_MESSAGE")], False, (T, 1, 8, None), "2026-05-03T00:00:00Z", 0),
    "e": ("R-3:x", [error("UNKNOWN_OPERATING_SITE", "operatingSite"),
          error("UNKNOWN_PRODUCT", "productIdent")], True, (T, 2, 1, "2026-05-31T23:00:00Z"),
          "2026-06-01T00:00:00Z", 0),
    "f": ("R-10", [error("EXTERNAL_REFERENCE_CONFLICT", "externalReference")], False,
          (T, 2, 2, "2026-04-30T23:00:00Z"), "2026-04-30T23:59:59.999Z", 2),
}  # fmt: skip
NEWEST_FIRST = ["e", "d", "c", "b", "a", "f"]


async def insert_rejection(conn: asyncpg.Connection, row: tuple[Any, ...]) -> int:
    reference, errors, retryable, (topic, partition, offset, timestamp), failed, replays = row
    rejection_id: int = await conn.fetchval(
        INSERT_REJECTION,
        reference,
        json.dumps(errors),
        [e["code"] for e in errors],
        retryable,
        topic,
        partition,
        offset,
        None if timestamp is None else at(timestamp),
        at(failed),
        replays,
    )
    return rejection_id


async def insert_usage(conn: asyncpg.Connection, reference: str, offset: int) -> int:
    usage_id: int = await conn.fetchval(
        INSERT_USAGE, reference, at("2026-05-01T00:00:00Z"), T, offset
    )
    return usage_id


def database_of(world: ApiWorld) -> str:
    assert world.settings.database_url is not None
    return world.settings.database_url.get_secret_value()


@dataclass
class Seeded:
    api: ApiWorld
    ids: dict[str, int]  # refusal name → id
    usage_id: int  # the usage stored under R-1

    def names(self, items: list[dict[str, Any]]) -> list[str]:
        by_id = {v: k for k, v in self.ids.items()}
        return [by_id[item["id"]] for item in items]

    async def get(self, query: str, status: int = 200) -> httpx.Response:
        response = await self.api.client.get(f"/usage-rejections?{query}")
        assert response.status_code == status, response.text
        return response

    async def matching(self, filters: str) -> set[str]:
        response = await self.get(f"page=1&pageSize=100&{filters}")
        assert int(response.headers["X-Total-Count"]) == len(response.json())
        return set(self.names(response.json()))


@pytest.fixture(scope="module")
async def seeded(kafka_bootstrap: str, postgres_admin_url: str) -> AsyncIterator[Seeded]:
    world, producer = await open_world(kafka_bootstrap, await create_database(postgres_admin_url))
    conn = await asyncpg.connect(database_of(world))
    try:
        ids = {name: await insert_rejection(conn, row) for name, row in REJECTIONS.items()}
        usage_id = await insert_usage(conn, "R-1", 100)
        await insert_usage(conn, "R-unrelated", 101)
    finally:
        await conn.close()
    yield Seeded(world, ids, usage_id)
    await close_world(world, producer)


async def test_items_carry_the_refusal_and_the_usage_that_resolved_it(seeded: Seeded) -> None:
    items = {item["id"]: item for item in (await seeded.get("page=1&pageSize=10")).json()}
    assert items[seeded.ids["a"]] == {
        "id": seeded.ids["a"],
        "externalReference": "R-1",
        "errors": [{"code": "NO_INVENTORY", "field": None, "message": "NO_INVENTORY at None"}],
        "retryable": True,
        "source": {
            "topic": T,
            "partition": 0,
            "offset": 10,
            "timestamp": "2026-05-01T09:59:59.500Z",
        },
        "failedAt": "2026-05-01T10:00:00.000Z",
        "replayCount": 0,
        "resolvedBy": seeded.usage_id,
    }
    # Refused again after a replay: listed again, with the replayed copy's source and count.
    replayed = items[seeded.ids["b"]]
    assert (replayed["source"]["offset"], replayed["replayCount"]) == (42, 1)
    assert replayed["resolvedBy"] == seeded.usage_id
    schema = items[seeded.ids["c"]]
    assert [(e["code"], e["field"]) for e in schema["errors"]] == [
        ("SCHEMA_VIOLATION", "startDate"),
        ("SCHEMA_VIOLATION", "endDate"),
    ]
    assert (schema["source"]["timestamp"], schema["resolvedBy"]) == (None, None)
    assert items[seeded.ids["d"]]["externalReference"] is None
    assert items[seeded.ids["f"]]["failedAt"] == "2026-04-30T23:59:59.999Z"


async def test_newest_first_by_default_in_pages_with_the_total_count(seeded: Seeded) -> None:
    pages = []
    for page in (1, 2, 3, 4):
        response = await seeded.get(f"page={page}&pageSize=2")
        assert response.headers["X-Total-Count"] == "6"
        pages.append(seeded.names(response.json()))
    assert pages == [["e", "d"], ["c", "b"], ["a", "f"], []]


@pytest.mark.parametrize(
    ("sort", "expected"),
    [
        ("failedAt", ["f", "a", "b", "c", "d", "e"]),  # ties (c, d) by id
        ("failedAt:desc,id:desc", NEWEST_FIRST),
        ("id:desc", ["f", "e", "d", "c", "b", "a"]),
        ("replayCount:desc,failedAt:asc", ["f", "b", "a", "c", "d", "e"]),
        ("externalReference", ["a", "b", "f", "c", "e", "d"]),  # null last
        ("retryable:desc,id", ["a", "b", "e", "c", "d", "f"]),
        ("resolvedBy:desc", ["c", "d", "e", "f", "a", "b"]),  # null first when descending
    ],
)
async def test_sort(seeded: Seeded, sort: str, expected: list[str]) -> None:
    response = await seeded.get(f"page=1&pageSize=10&sort={sort}")
    assert seeded.names(response.json()) == expected


async def test_sort_and_paging_together(seeded: Seeded) -> None:
    response = await seeded.get("page=2&pageSize=2&sort=failedAt&retryable=false")
    assert response.headers["X-Total-Count"] == "3"
    assert seeded.names(response.json()) == ["d"]


async def test_fields_projection(seeded: Seeded) -> None:
    response = await seeded.get("page=1&pageSize=2&fields=resolvedBy,id&sort=id")
    assert response.json() == [
        {"id": seeded.ids["a"], "resolvedBy": seeded.usage_id},
        {"id": seeded.ids["b"], "resolvedBy": seeded.usage_id},
    ]
    response = await seeded.get("page=1&pageSize=1&fields=source")
    assert response.json() == [
        {
            "source": {
                "topic": T,
                "partition": 2,
                "offset": 1,
                "timestamp": "2026-05-31T23:00:00.000Z",
            }
        }
    ]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ("externalReference=R-1", {"a", "b"}),
        ("externalReference=r-1", set()),
        ("externalReference=R-3:x", {"e"}),  # a colon is not an operator here
        ("externalReference=in:R-1,R-2,nothing", {"a", "b", "c"}),
        ("externalReference=like:r-1", {"a", "b", "f"}),
        ("externalReference=like:3:X", {"e"}),
        ("externalReference=like:%", set()),
        ("externalReference=x' OR '1'='1", set()),
        ("code=NO_INVENTORY", {"a", "b"}),
        ("code=SCHEMA_VIOLATION", {"c"}),
        ("code=UNKNOWN_PRODUCT", {"e"}),  # any of the record's errors
        ("code=UNKNOWN_OPERATING_SITE", {"e"}),
        ("code=in:MALFORMED_MESSAGE,UNKNOWN_PRODUCT", {"d", "e"}),
        ("code=UNKNOWN_CONTRACT", set()),
        ("retryable=true", {"a", "b", "e"}),
        ("retryable=false", {"c", "d", "f"}),
        ("resolved=true", {"a", "b"}),
        ("resolved=false", {"c", "d", "e", "f"}),
        ("failedAt=2026-05-03T00:00:00Z", {"c", "d"}),
        ("failedAt=2026-05-03T02:00:00%2B02:00", {"c", "d"}),
        ("failedAt=2026-04-30T23:59:59.999Z", {"f"}),
        ("failedAt=gte:2026-05-02T10:00:00Z", {"b", "c", "d", "e"}),
        ("failedAt=gt:2026-05-02T10:00:00Z", {"c", "d", "e"}),
        ("failedAt=lt:2026-05-01T10:00:00Z", {"f"}),
        ("failedAt=lte:2026-05-01T10:00:00Z", {"a", "f"}),
        (
            "failedAt=gte:2026-05-01T00:00:00Z&failedAt=lt:2026-06-01T00:00:00Z",
            {"a", "b", "c", "d"},
        ),
        (
            "retryable=false&resolved=false&code=in:SCHEMA_VIOLATION,EXTERNAL_REFERENCE_CONFLICT",
            {"c", "f"},
        ),
        ("resolved=true&failedAt=gt:2026-05-01T10:00:00Z", {"b"}),
        ("externalReference=like:R&externalReference=like:0", {"f"}),
    ],
)
async def test_filters(seeded: Seeded, filters: str, expected: set[str]) -> None:
    assert await seeded.matching(filters) == expected


async def test_a_usage_stored_later_resolves_its_refusals(
    kafka_bootstrap: str, database_url: str
) -> None:
    world, producer = await open_world(kafka_bootstrap, database_url)
    try:
        conn = await asyncpg.connect(database_url)
        try:
            refused = await insert_rejection(conn, REJECTIONS["c"])
            listed = await world.client.get("/usage-rejections?page=1&pageSize=10&resolved=false")
            assert [(i["id"], i["resolvedBy"]) for i in listed.json()] == [(refused, None)]
            # Fixed and replayed: the usage is now stored under the reference.
            usage_id = await insert_usage(conn, "R-2", 1)
        finally:
            await conn.close()
        unresolved = await world.client.get("/usage-rejections?page=1&pageSize=10&resolved=false")
        assert (unresolved.json(), unresolved.headers["X-Total-Count"]) == ([], "0")
        resolved = await world.client.get("/usage-rejections?page=1&pageSize=10&resolved=true")
        assert [(i["id"], i["resolvedBy"]) for i in resolved.json()] == [(refused, usage_id)]
    finally:
        await close_world(world, producer)


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("pageSize=10", "page"),
        ("page=1", "pageSize"),
        ("page=0&pageSize=10", "page"),
        ("page=1&pageSize=1001", "pageSize"),
        ("page=1&page=2&pageSize=10", "page"),
        ("page=1&pageSize=10&sort=errors", "sort"),
        ("page=1&pageSize=10&sort=source", "sort"),
        ("page=1&pageSize=10&sort=failedAt:newest", "sort"),
        ("page=1&pageSize=10&sort=id,id:desc", "sort"),
        ("page=1&pageSize=10&sort=id;DROP TABLE usages", "sort"),
        ("page=1&pageSize=10&fields=id,usageId", "fields"),
        ("page=1&pageSize=10&fields=", "fields"),
        ("page=1&pageSize=10&externalReference=", "externalReference"),
        ("page=1&pageSize=10&externalReference=in:a,,b", "externalReference"),
        ("page=1&pageSize=10&externalReference=like:", "externalReference"),
        ("page=1&pageSize=10&externalReference=%00", "externalReference"),
        ("page=1&pageSize=10&code=NO_SUCH_CODE", "code"),
        ("page=1&pageSize=10&code=no_inventory", "code"),
        ("page=1&pageSize=10&code=like:NO_", "code"),
        ("page=1&pageSize=10&code=in:NO_INVENTORY,", "code"),
        ("page=1&pageSize=10&retryable=yes", "retryable"),
        ("page=1&pageSize=10&retryable=True", "retryable"),
        ("page=1&pageSize=10&resolved=", "resolved"),
        ("page=1&pageSize=10&resolved=in:true", "resolved"),
        ("page=1&pageSize=10&failedAt=2026-05-01", "failedAt"),
        ("page=1&pageSize=10&failedAt=yesterday", "failedAt"),
        ("page=1&pageSize=10&failedAt=ge:2026-05-01T00:00:00Z", "failedAt"),
        ("page=1&pageSize=10&failedAt=in:2026-05-01T00:00:00Z", "failedAt"),
        ("page=1&pageSize=10&failedAt=gte:2026-13-01T00:00:00Z", "failedAt"),
        ("page=1&pageSize=10&failedAt=lt:2026-05-01T00:00:00%2B24:00", "failedAt"),
        ("page=1&pageSize=10&failedAt=gt:", "failedAt"),
        ("page=1&pageSize=10&failed_at=gt:2026-05-01T00:00:00Z", "failed_at"),
        ("page=1&pageSize=10" + "&code=NO_INVENTORY" * 11, "code"),
        (
            "page=1&pageSize=10"
            + "&code=NO_INVENTORY" * 10
            + "&retryable=true" * 10
            + "&resolved=true",
            None,
        ),
    ],
)
async def test_a_bad_parameter_is_one_400(seeded: Seeded, query: str, field: str | None) -> None:
    response = await seeded.get(query, status=400)
    errors = response.json()["errors"]
    assert [(e["code"], e["field"]) for e in errors] == [("INVALID_PARAMETER", field)]
    assert errors[0]["message"]


async def test_every_problem_of_a_query_is_reported(seeded: Seeded) -> None:
    response = await seeded.get(
        "page=1&pageSize=10&sort=colour&fields=size&failedAt=soon&code=X&retryable=1&nope=1",
        status=400,
    )
    fields = sorted(e["field"] for e in response.json()["errors"])
    assert fields == ["code", "failedAt", "fields", "nope", "retryable", "sort"]


async def test_reading_refusals_needs_usage_read(seeded: Seeded) -> None:
    path = "/usage-rejections?page=1&pageSize=1"
    anonymous = await seeded.api.client.get(path, headers={"X-API-KEY": ""})
    assert anonymous.status_code == 401
    assert [e["code"] for e in anonymous.json()["errors"]] == ["UNAUTHORIZED"]
    inventories_only = await add_key(seeded.api.store, Permission.USAGE_PRODUCT_INVENTORY_READ)
    forbidden = await seeded.api.client.get(path, headers={"X-API-KEY": inventories_only})
    assert forbidden.status_code == 403
    assert "USAGE.READ" in forbidden.json()["errors"][0]["message"]
    reader = await add_key(seeded.api.store, Permission.USAGE_READ)
    allowed = await seeded.api.client.get(
        path, headers={"X-API-KEY": "", "Authorization": f"Bearer {reader}"}
    )
    assert allowed.status_code == 200
    assert seeded.names(allowed.json()) == ["e"]
