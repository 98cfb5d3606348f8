"""GET /usage-product-inventories (SPEC-API.md): paging with X-Total-Count, sort by
several keys, the `fields` projection, and every filter operator, against a real
Postgres holding five records created over HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.support.api import ApiWorld, close_world, open_world
from tests.support.database import create_database

pytestmark = pytest.mark.integration


@dataclass
class Seeded:
    api: ApiWorld
    ids: dict[str, int]  # record name → id
    products: dict[str, int]  # product name → product item id

    def names(self, records: list[dict[str, Any]]) -> list[str]:
        by_id = {v: k for k, v in self.ids.items()}
        return [by_id[r["id"]] for r in records]

    async def get(self, query: str, status: int = 200) -> Any:
        response = await self.api.client.get(f"/usage-product-inventories?{query}")
        assert response.status_code == status, response.text
        return response

    async def matching(self, filters: str) -> set[str]:
        response = await self.get(f"page=1&pageSize=100&{filters}")
        assert int(response.headers["X-Total-Count"]) == len(response.json())
        return set(self.names(response.json()))


RECORDS: dict[str, dict[str, Any]] = {
    "one": {
        "siteId": 1,
        "product": "a",
        "startDate": "2026-01-01",
        "endDate": None,
        "serviceId": "SVC-ALPHA",
        "productReferences": [{"productReference": "441000000001", "label": "Main Line"}],
    },
    "two": {
        "siteId": 1,
        "product": "b",
        "startDate": "2026-02-01",
        "endDate": "2026-06-30",
        "serviceId": "svc-beta",
        "productReferences": [{"productReference": "441000000002", "label": "fax"}],
    },
    "three": {
        "siteId": 2,
        "product": "a",
        "startDate": "2026-03-01",
        "endDate": "2026-03-31",
        "serviceId": None,
        "productReferences": [
            {"productReference": "441000000003"},
            {"productReference": "441000000004", "label": "Backup LINE"},
        ],
    },
    "four": {
        "siteId": 2,
        "product": "b",
        "startDate": "2025-12-01",
        "endDate": None,
        "serviceId": "SVC-GAMMA",
        "productReferences": [{"productReference": "449999999999", "label": "Main line"}],
    },
    "five": {
        "siteId": 3,
        "product": "a",
        "startDate": "2026-02-01",
        "endDate": "2026-12-31",
        "serviceId": "SVC-ALPHA-2",
        "productReferences": [{"productReference": "441000000005"}],
    },
}


@pytest.fixture(scope="module")
async def seeded(kafka_bootstrap: str, postgres_admin_url: str) -> AsyncIterator[Seeded]:
    world, producer = await open_world(kafka_bootstrap, await create_database(postgres_admin_url))
    products = {"a": await world.product_item(), "b": await world.product_item()}
    ids = {}
    for name, record in RECORDS.items():
        body = {k: v for k, v in record.items() if k != "product"}
        body["usageProductId"] = products[record["product"]]["id"]
        ids[name] = (await world.inventory(**body))["id"]
    yield Seeded(world, ids, {name: item["id"] for name, item in products.items()})
    await close_world(world, producer)


async def test_pages_come_in_id_order_with_the_total_count(seeded: Seeded) -> None:
    pages = []
    for page in (1, 2, 3, 4):
        response = await seeded.get(f"page={page}&pageSize=2")
        assert response.headers["X-Total-Count"] == "5"
        pages.append(seeded.names(response.json()))
    assert pages == [["one", "two"], ["three", "four"], ["five"], []]


async def test_records_are_returned_whole_without_fields(seeded: Seeded) -> None:
    listed = (await seeded.get("page=1&pageSize=1")).json()
    single = await seeded.api.client.get(f"/usage-product-inventories/{seeded.ids['one']}")
    assert listed == [single.json()]


async def test_sort_by_two_keys_with_desc(seeded: Seeded) -> None:
    response = await seeded.get("page=1&pageSize=10&sort=startDate:desc,siteId")
    assert seeded.names(response.json()) == ["three", "two", "five", "one", "four"]
    response = await seeded.get("page=1&pageSize=10&sort=siteId:desc,startDate")
    assert seeded.names(response.json()) == ["five", "four", "three", "one", "two"]
    # Ties (siteId) are broken by id, so pages never overlap or skip.
    response = await seeded.get("page=2&pageSize=2&sort=siteId")
    assert seeded.names(response.json()) == ["three", "four"]


async def test_fields_projection(seeded: Seeded) -> None:
    response = await seeded.get("page=1&pageSize=10&fields=id,serviceId&sort=id:desc")
    assert response.json()[0] == {"id": seeded.ids["five"], "serviceId": "SVC-ALPHA-2"}
    assert all(set(record) == {"id", "serviceId"} for record in response.json())
    response = await seeded.get("page=1&pageSize=1&fields=productReferences,siteId")
    [record] = response.json()
    assert set(record) == {"productReferences", "siteId"}
    assert [(r["productReference"], r["label"]) for r in record["productReferences"]] == [
        ("441000000001", "Main Line")
    ]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ("siteId=2", {"three", "four"}),
        ("siteId=99", set()),
        ("usageProductId={b}", {"two", "four"}),
        ("startDate=2026-02-01", {"two", "five"}),
        ("startDate=lt:2026-02-01", {"one", "four"}),
        ("startDate=gt:2026-02-01", {"three"}),
        ("startDate=gtn:2026-02-01", {"three"}),
        ("endDate=2026-03-31", {"three"}),
        ("endDate=lt:2026-06-30", {"three"}),
        ("endDate=gt:2026-06-30", {"five"}),
        ("endDate=gtn:2026-06-30", {"one", "four", "five"}),
        ("startDate=gt:2026-01-01&startDate=lt:2026-03-01", {"two", "five"}),
        ("productReference=441000000004", {"three"}),
        ("productReference=in:441000000001,449999999999", {"one", "four"}),
        ("productReference=like:0000000", {"one", "two", "three", "five"}),
        ("serviceId=SVC-ALPHA", {"one"}),
        ("serviceId=svc-alpha", set()),
        ("serviceId=like:alpha", {"one", "five"}),
        ("serviceId=in:svc-beta,SVC-GAMMA", {"two", "four"}),
        ("label=Main Line", {"one"}),
        ("label=like:main line", {"one", "four"}),
        ("label=like:LINE", {"one", "three", "four"}),
        ("label=in:fax,Backup LINE", {"two", "three"}),
        ("siteId=1&serviceId=like:alpha", {"one"}),
        ("serviceId=x' OR '1'='1", set()),
        ("label=like:%", set()),
        ("label=like:_", set()),
        # The product-reference filters hold for one and the same reference.
        ("productReference=441000000004&label=like:backup", {"three"}),
        ("productReference=441000000003&label=like:backup", set()),
        ("productReference=like:4410000&label=like:line&label=like:main", {"one"}),
    ],
)
async def test_filters(seeded: Seeded, filters: str, expected: set[str]) -> None:
    assert await seeded.matching(filters.format(b=seeded.products["b"])) == expected


async def test_filters_and_paging_together(seeded: Seeded) -> None:
    response = await seeded.get("page=2&pageSize=1&serviceId=like:alpha&sort=id:desc")
    assert response.headers["X-Total-Count"] == "2"
    assert seeded.names(response.json()) == ["one"]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("pageSize=10", "page"),
        ("page=1", "pageSize"),
        ("page=0&pageSize=10", "page"),
        ("page=x&pageSize=10", "page"),
        ("page=1&pageSize=0", "pageSize"),
        ("page=1&pageSize=1001", "pageSize"),
        ("page=1&page=2&pageSize=10", "page"),
        ("page=1&pageSize=10&sort=color", "sort"),
        ("page=1&pageSize=10&sort=productReferences", "sort"),
        ("page=1&pageSize=10&sort=startDate:up", "sort"),
        ("page=1&pageSize=10&sort=id;DROP TABLE usages", "sort"),
        ("page=1&pageSize=10&sort=siteId,siteId:desc", "sort"),
        ("page=1&pageSize=10&fields=id,color", "fields"),
        ("page=1&pageSize=10&fields=", "fields"),
        ("page=1&pageSize=10&siteId=abc", "siteId"),
        ("page=1&pageSize=10&siteId=like:1", "siteId"),
        ("page=1&pageSize=10&usageProductId=99999999999999999999", "usageProductId"),
        ("page=1&pageSize=10&startDate=2026-13-01", "startDate"),
        ("page=1&pageSize=10&startDate=le:2026-01-01", "startDate"),
        ("page=1&pageSize=10&endDate=gtn:tomorrow", "endDate"),
        ("page=1&pageSize=10&endDate=in:2026-01-01", "endDate"),
        ("page=1&pageSize=10&productReference=", "productReference"),
        ("page=1&pageSize=10&productReference=in:a,,b", "productReference"),
        ("page=1&pageSize=10&label=like:", "label"),
        ("page=1&pageSize=10&serviceId=%00", "serviceId"),
        ("page=1&pageSize=10&siteID=1", "siteID"),
        ("page=1&pageSize=10" + "&label=like:a" * 11, "label"),
        ("page=1&pageSize=10" + "&siteId=1" * 10 + "&label=like:a" * 10 + "&serviceId=x", None),
    ],
)
async def test_malformed_query_is_400(seeded: Seeded, query: str, field: str | None) -> None:
    response = await seeded.get(query, status=400)
    errors = response.json()["errors"]
    assert [(e["code"], e["field"]) for e in errors] == [("INVALID_PARAMETER", field)]
    assert errors[0]["message"]


async def test_every_problem_of_a_query_is_reported(seeded: Seeded) -> None:
    response = await seeded.get(
        "page=1&pageSize=10&sort=color&fields=size&startDate=soon&siteId=x&nope=1", status=400
    )
    fields = sorted(e["field"] for e in response.json()["errors"])
    assert fields == ["fields", "nope", "siteId", "sort", "startDate"]
