"""Usage product inventories over HTTP (SPEC-API.md): POST, GET by id and PATCH, against a
real Postgres. The list endpoint has its own module (test_api_list.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from tests.support.api import PATCH_JSON, ApiWorld, unique, unique_int

pytestmark = pytest.mark.integration


def codes(response: Any) -> list[tuple[str, str | None]]:
    return [(e["code"], e["field"]) for e in response.json()["errors"]]


async def stored(api: ApiWorld, inventory_id: int) -> dict[str, Any]:
    response = await api.client.get(f"/usage-product-inventories/{inventory_id}")
    assert response.status_code == 200
    return dict(response.json())


async def row_versions(api: ApiWorld, inventory_id: int) -> tuple[Any, ...]:
    """What a failed change must not touch: the record's and its references' rows."""
    assert api.settings.database_url is not None
    conn = await asyncpg.connect(api.settings.database_url.get_secret_value())
    try:
        record = await conn.fetchrow(
            "SELECT *, xmin::text AS version FROM usage_product_inventories WHERE id = $1",
            inventory_id,
        )
        references = await conn.fetch(
            "SELECT *, xmin::text AS version FROM usage_product_references"
            " WHERE inventory_id = $1 ORDER BY id",
            inventory_id,
        )
    finally:
        await conn.close()
    return (tuple(record.items()), tuple(tuple(r.items()) for r in references))


# --- POST ---------------------------------------------------------------------------


async def test_post_stores_every_field_and_assigns_the_ids(api: ApiWorld) -> None:
    product = await api.product_item()
    body = {
        "siteId": unique_int(),
        "usageProductId": product["id"],
        "startDate": "2026-01-01",
        "endDate": "2026-12-31",
        "supplierAccountId": 55,
        "billByServiceId": True,
        "serviceId": "SVC-1",
        "billable": False,
        "inFlightOrder": False,
        "externalOrderReference": "ORD-1",
        "externalNetworkOrderReference": "NET-1",
        "pendingEndDate": "2026-11-30",
        "usageCapEnabled": True,
        "defaultUsageCap": 10_000,
        "overrideUsageCap": 0,
        "applySurcharges": True,
        "productReferences": [
            {
                "productReference": unique("44"),
                "primary": True,
                "label": "Main line",
                "startDate": "2026-01-01",
                "endDate": "2026-06-30",
                "userId": "u-1",
                "userEmail": "ann@example.com",
                "costCentreCode": "CC-1",
                "departmentCode": "D-1",
                "notes": "first",
            },
            {"productReference": unique("44")},
        ],
    }
    response = await api.client.post("/usage-product-inventories", json=body)
    assert response.status_code == 201, response.text
    record = response.json()
    assert isinstance(record["id"], int)
    assert all(isinstance(ref["id"], int) for ref in record["productReferences"])
    expected = {**body, "id": record["id"]}
    expected["productReferences"] = [
        {
            "id": record["productReferences"][index]["id"],
            "primary": None,
            "label": None,
            "startDate": None,
            "endDate": None,
            "userId": None,
            "userEmail": None,
            "costCentreCode": None,
            "departmentCode": None,
            "notes": None,
            **ref,
        }
        for index, ref in enumerate(body["productReferences"])
    ]
    assert record == expected
    assert await stored(api, record["id"]) == record


async def test_post_defaults_billable_to_true_and_leaves_the_rest_null(api: ApiWorld) -> None:
    record = await api.inventory()
    assert record["billable"] is True
    assert record["endDate"] is None
    assert record["defaultUsageCap"] is None


async def test_post_reports_each_invalid_field(api: ApiWorld) -> None:
    response = await api.client.post(
        "/usage-product-inventories",
        json={
            "usageProductId": "1",
            "startDate": "01/02/2026",
            "endDate": "2026-02-30",
            "defaultUsageCap": -1,
            "overrideUsageCap": 1.5,
            "billable": "yes",
            "unknownField": 1,
            "productReferences": [{"label": "no number"}],
        },
    )
    assert response.status_code == 400
    assert sorted(codes(response)) == sorted(
        [
            ("SCHEMA_VIOLATION", "siteId"),
            ("SCHEMA_VIOLATION", "usageProductId"),
            ("SCHEMA_VIOLATION", "startDate"),
            ("SCHEMA_VIOLATION", "endDate"),
            ("SCHEMA_VIOLATION", "defaultUsageCap"),
            ("SCHEMA_VIOLATION", "overrideUsageCap"),
            ("SCHEMA_VIOLATION", "billable"),
            ("SCHEMA_VIOLATION", "unknownField"),
            ("SCHEMA_VIOLATION", "productReferences.0.productReference"),
        ]
    )
    assert all(e["message"] for e in response.json()["errors"])


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"productReferences": []}, "productReferences"),
        ({"endDate": "2025-12-31"}, "endDate"),
        (
            {
                "productReferences": [
                    {"productReference": "1", "startDate": "2026-02-01", "endDate": "2026-01-31"}
                ]
            },
            "productReferences.0.endDate",
        ),
        (
            {"productReferences": [{"productReference": "1"}, {"productReference": "1"}]},
            "productReferences",
        ),
        ({"serviceId": "x" * 256}, "serviceId"),
        ({"serviceId": "nul\x00"}, "serviceId"),
    ],
)
async def test_post_cross_field_and_length_rules(
    api: ApiWorld, change: dict[str, Any], field: str
) -> None:
    product = await api.product_item()
    body = {
        "siteId": unique_int(),
        "usageProductId": product["id"],
        "startDate": "2026-01-01",
        "productReferences": [{"productReference": unique("44")}],
        **change,
    }
    response = await api.client.post("/usage-product-inventories", json=body)
    assert response.status_code == 400
    assert codes(response) == [("SCHEMA_VIOLATION", field)]


async def test_post_refuses_ids_as_read_only(api: ApiWorld) -> None:
    product = await api.product_item()
    response = await api.client.post(
        "/usage-product-inventories",
        json={
            "id": 123456,
            "siteId": unique_int(),
            "usageProductId": product["id"],
            "startDate": "2026-01-01",
            "productReferences": [{"id": 5, "productReference": unique("44")}],
        },
    )
    assert response.status_code == 400
    assert codes(response) == [
        ("READ_ONLY_FIELD", "id"),
        ("READ_ONLY_FIELD", "productReferences.0.id"),
    ]


async def test_post_with_an_unknown_product_item_is_404_and_writes_nothing(
    api: ApiWorld,
) -> None:
    site = unique_int()
    response = await api.client.post(
        "/usage-product-inventories",
        json={
            "siteId": site,
            "usageProductId": 987_654_321,
            "startDate": "2026-01-01",
            "productReferences": [{"productReference": unique("44")}],
        },
    )
    assert response.status_code == 404
    assert codes(response) == [("UNKNOWN_PRODUCT_ITEM", "usageProductId")]
    listed = await api.client.get(f"/usage-product-inventories?page=1&pageSize=10&siteId={site}")
    assert listed.json() == []


async def test_post_with_a_product_reference_on_an_overlapping_record_is_412(
    api: ApiWorld,
) -> None:
    number = unique("44")
    first = await api.inventory(
        startDate="2026-01-01",
        endDate="2026-06-30",
        productReferences=[{"productReference": number}],
    )
    product = await api.product_item()
    overlapping = {
        "siteId": unique_int(),
        "usageProductId": product["id"],
        "startDate": "2026-06-30",  # the last day of the first record: overlaps
        "productReferences": [{"productReference": unique("44")}, {"productReference": number}],
    }
    response = await api.client.post("/usage-product-inventories", json=overlapping)
    assert response.status_code == 412
    assert codes(response) == [
        ("PRODUCT_REFERENCE_OVERLAP", "productReferences.1.productReference")
    ]
    assert str(first["id"]) in response.json()["errors"][0]["message"]
    listed = await api.client.get(
        f"/usage-product-inventories?page=1&pageSize=10&productReference={number}"
    )
    assert [r["id"] for r in listed.json()] == [first["id"]]
    # The day after the first record ends, the number may move to another record.
    response = await api.client.post(
        "/usage-product-inventories", json={**overlapping, "startDate": "2026-07-01"}
    )
    assert response.status_code == 201, response.text


async def test_post_twice_for_one_site_product_and_start_is_409(api: ApiWorld) -> None:
    first = await api.inventory()
    again = {
        "siteId": first["siteId"],
        "usageProductId": first["usageProductId"],
        "startDate": first["startDate"],
        "productReferences": [{"productReference": unique("44")}],
    }
    response = await api.client.post("/usage-product-inventories", json=again)
    assert response.status_code == 409
    assert codes(response) == [("INVENTORY_EXISTS", "startDate")]
    assert str(first["id"]) in response.json()["errors"][0]["message"]
    assert await stored(api, first["id"]) == first


async def test_concurrent_posts_of_one_number_store_exactly_one(api: ApiWorld) -> None:
    number = unique("44")
    products = [await api.product_item() for _ in range(4)]
    responses = await asyncio.gather(
        *(
            api.client.post(
                "/usage-product-inventories",
                json={
                    "siteId": unique_int(),
                    "usageProductId": product["id"],
                    "startDate": "2026-01-01",
                    "productReferences": [{"productReference": number}],
                },
            )
            for product in products
        )
    )
    assert sorted(r.status_code for r in responses) == [201, 412, 412, 412]


@pytest.mark.parametrize(
    ("content", "content_type", "status", "code"),
    [
        (b'{"siteId": 1,', "application/json", 400, "MALFORMED_MESSAGE"),
        (b"[1, 2]", "application/json", 400, "MALFORMED_MESSAGE"),
        (b"", "application/json", 400, "MALFORMED_MESSAGE"),
        (b"siteId=1", "application/x-www-form-urlencoded", 415, "UNSUPPORTED_MEDIA_TYPE"),
        (b"{}", None, 415, "UNSUPPORTED_MEDIA_TYPE"),
    ],
)
async def test_post_body_that_is_not_a_json_object(
    api: ApiWorld, content: bytes, content_type: str | None, status: int, code: str
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = await api.client.post("/usage-product-inventories", content=content, headers=headers)
    assert response.status_code == status
    assert [e["code"] for e in response.json()["errors"]] == [code]


# --- GET by id ----------------------------------------------------------------------


async def test_get_unknown_id_is_404_and_a_non_integer_id_is_400(api: ApiWorld) -> None:
    response = await api.client.get("/usage-product-inventories/987654321")
    assert response.status_code == 404
    assert codes(response) == [("NOT_FOUND", None)]
    response = await api.client.get("/usage-product-inventories/abc")
    assert response.status_code == 400
    assert codes(response) == [("INVALID_PARAMETER", "id")]


# --- PATCH --------------------------------------------------------------------------


async def patch(api: ApiWorld, inventory_id: int, operations: list[dict[str, Any]]) -> Any:
    return await api.client.patch(
        f"/usage-product-inventories/{inventory_id}", json=operations, headers=PATCH_JSON
    )


async def test_patch_applies_every_operation_kind(api: ApiWorld) -> None:
    first, second = unique("44"), unique("44")
    record = await api.inventory(
        serviceId="SVC-OLD",
        productReferences=[{"productReference": first, "label": "Main"}],
    )
    response = await patch(
        api,
        record["id"],
        [
            {"op": "test", "path": "/billable", "value": True},
            {"op": "replace", "path": "/billable", "value": False},
            {"op": "add", "path": "/endDate", "value": "2026-12-31"},
            {"op": "remove", "path": "/serviceId"},
            {"op": "copy", "from": "/productReferences/0/label", "path": "/externalOrderReference"},
            {
                "op": "move",
                "from": "/productReferences/0/label",
                "path": "/productReferences/0/notes",
            },
            {"op": "add", "path": "/productReferences/-", "value": {"productReference": second}},
        ],
    )
    assert response.status_code == 200, response.text
    patched = response.json()
    assert patched["billable"] is False
    assert patched["endDate"] == "2026-12-31"
    assert patched["serviceId"] is None
    assert patched["externalOrderReference"] == "Main"
    old, new = patched["productReferences"]
    assert (old["id"], old["productReference"]) == (
        record["productReferences"][0]["id"],
        first,
    )
    assert (old["label"], old["notes"]) == (None, "Main")
    assert new["productReference"] == second
    assert isinstance(new["id"], int)
    assert await stored(api, record["id"]) == patched


async def test_patch_removing_a_product_reference_deletes_it(api: ApiWorld) -> None:
    keep, drop = unique("44"), unique("44")
    record = await api.inventory(
        productReferences=[{"productReference": keep}, {"productReference": drop}]
    )
    response = await patch(api, record["id"], [{"op": "remove", "path": "/productReferences/1"}])
    assert response.status_code == 200
    assert [r["productReference"] for r in response.json()["productReferences"]] == [keep]
    listed = await api.client.get(
        f"/usage-product-inventories?page=1&pageSize=10&productReference={drop}"
    )
    assert listed.json() == []


async def test_patch_with_a_failing_test_op_leaves_the_record_unchanged(api: ApiWorld) -> None:
    record = await api.inventory(serviceId="SVC-1")
    before = await row_versions(api, record["id"])
    response = await patch(
        api,
        record["id"],
        [
            {"op": "replace", "path": "/serviceId", "value": "SVC-2"},
            {"op": "add", "path": "/productReferences/-", "value": {"productReference": "1"}},
            {"op": "test", "path": "/billable", "value": False},
        ],
    )
    assert response.status_code == 400
    assert codes(response) == [("PATCH_TEST_FAILED", "2")]
    assert await stored(api, record["id"]) == record
    assert await row_versions(api, record["id"]) == before


@pytest.mark.parametrize(
    ("operations", "expected"),
    [
        ([{"op": "remove", "path": "/noSuchField"}], [("PATCH_FAILED", "0")]),
        (
            [{"op": "replace", "path": "/productReferences/7/label", "value": "x"}],
            [("PATCH_FAILED", "0")],
        ),
        ([{"op": "add", "path": "no-leading-slash", "value": 1}], [("PATCH_FAILED", "0")]),
        ([{"op": "move", "from": "/nothing", "path": "/serviceId"}], [("PATCH_FAILED", "0")]),
        ([{"op": "remove", "path": "/siteId"}], [("SCHEMA_VIOLATION", "siteId")]),
        (
            [{"op": "replace", "path": "/startDate", "value": "2026/01/01"}],
            [("SCHEMA_VIOLATION", "startDate")],
        ),
        (
            [{"op": "replace", "path": "/endDate", "value": "2020-01-01"}],
            [("SCHEMA_VIOLATION", "endDate")],
        ),
        (
            [{"op": "replace", "path": "/defaultUsageCap", "value": -5}],
            [("SCHEMA_VIOLATION", "defaultUsageCap")],
        ),
        ([{"op": "add", "path": "/color", "value": "red"}], [("SCHEMA_VIOLATION", "color")]),
        (
            [{"op": "replace", "path": "/productReferences", "value": []}],
            [("SCHEMA_VIOLATION", "productReferences")],
        ),
        ([{"op": "replace", "path": "", "value": [1]}], [("SCHEMA_VIOLATION", None)]),
        ([{"op": "replace", "path": "/id", "value": 1}], [("READ_ONLY_FIELD", "id")]),
        ([{"op": "remove", "path": "/id"}], [("READ_ONLY_FIELD", "id")]),
        (
            [{"op": "replace", "path": "/productReferences/0/id", "value": 1}],
            [("READ_ONLY_FIELD", "productReferences.0.id")],
        ),
        (
            [{"op": "copy", "from": "/productReferences/0", "path": "/productReferences/-"}],
            [("SCHEMA_VIOLATION", "productReferences")],
        ),
        ([{"op": "jump", "path": "/billable"}], [("SCHEMA_VIOLATION", "0.op")]),
        ([{"op": "add", "path": "/billable"}], [("SCHEMA_VIOLATION", "0.value")]),
    ],
)
async def test_patch_that_fails_is_400_and_changes_nothing(
    api: ApiWorld, operations: list[dict[str, Any]], expected: list[tuple[str, str | None]]
) -> None:
    record = await api.inventory(serviceId="SVC-1", endDate="2026-12-31")
    before = await row_versions(api, record["id"])
    response = await patch(
        api, record["id"], [{"op": "replace", "path": "/billable", "value": False}, *operations]
    )
    assert response.status_code == 400, response.text
    for item in expected:  # the first operation is fine: errors are counted from it
        code, field = item
        shifted = str(int(field) + 1) if field is not None and field.isdigit() else field
        if field is not None and field.startswith("0."):
            shifted = "1." + field.removeprefix("0.")
        assert (code, shifted) in codes(response), codes(response)
    assert await row_versions(api, record["id"]) == before


async def test_patch_unknown_id_is_404(api: ApiWorld) -> None:
    response = await patch(api, 987_654_321, [{"op": "remove", "path": "/serviceId"}])
    assert response.status_code == 404
    assert codes(response) == [("NOT_FOUND", None)]


async def test_patch_onto_an_overlapping_number_is_412_and_changes_nothing(
    api: ApiWorld,
) -> None:
    taken = unique("44")
    await api.inventory(productReferences=[{"productReference": taken}])
    record = await api.inventory()
    before = await row_versions(api, record["id"])
    response = await patch(
        api,
        record["id"],
        [{"op": "add", "path": "/productReferences/-", "value": {"productReference": taken}}],
    )
    assert response.status_code == 412
    assert codes(response) == [
        ("PRODUCT_REFERENCE_OVERLAP", "productReferences.1.productReference")
    ]
    assert await row_versions(api, record["id"]) == before


async def test_patch_onto_another_records_site_product_and_start_is_409(api: ApiWorld) -> None:
    product = await api.product_item()
    first = await api.inventory(usageProductId=product["id"], startDate="2026-01-01")
    second = await api.inventory(
        usageProductId=product["id"], siteId=first["siteId"], startDate="2026-02-01"
    )
    response = await patch(
        api, second["id"], [{"op": "replace", "path": "/startDate", "value": "2026-01-01"}]
    )
    assert response.status_code == 409
    assert codes(response) == [("INVENTORY_EXISTS", "startDate")]
    assert await stored(api, second["id"]) == second


async def test_patch_to_an_unknown_product_item_is_404(api: ApiWorld) -> None:
    record = await api.inventory()
    response = await patch(
        api, record["id"], [{"op": "replace", "path": "/usageProductId", "value": 987_654_321}]
    )
    assert response.status_code == 404
    assert codes(response) == [("UNKNOWN_PRODUCT_ITEM", "usageProductId")]


@pytest.mark.parametrize("content_type", ["application/json", "application/merge-patch+json"])
async def test_patch_needs_the_json_patch_media_type(api: ApiWorld, content_type: str) -> None:
    record = await api.inventory()
    response = await api.client.patch(
        f"/usage-product-inventories/{record['id']}",
        json=[{"op": "remove", "path": "/serviceId"}],
        headers={"Content-Type": content_type},
    )
    assert response.status_code == 415
    assert codes(response) == [("UNSUPPORTED_MEDIA_TYPE", None)]


async def test_patch_with_only_a_passing_test_changes_nothing(api: ApiWorld) -> None:
    record = await api.inventory()
    before = await row_versions(api, record["id"])
    response = await patch(
        api, record["id"], [{"op": "test", "path": "/siteId", "value": record["siteId"]}]
    )
    assert response.status_code == 200
    assert response.json() == record
    assert await row_versions(api, record["id"]) == before
