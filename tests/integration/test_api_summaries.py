"""GET /usage-summaries (SPEC-API.md, "The read side"): exact decimal totals by group and
unit, summed by a real Postgres over usages written straight into the `usages` table."""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx
import pytest

from tests.support.api import ApiWorld, add_key, unique, unique_int
from usage_ingest.api.keys import Permission

pytestmark = pytest.mark.integration

MAY = "startDate=gte:2026-05-01T00:00:00Z&startDate=lt:2026-06-01T00:00:00Z"
# 18 digits before the point and 12 after: a binary float keeps about 16 of them.
BIG_1 = "123456789012345678.123456789012"
BIG_2 = "111111111111111111.111111111111"
BIG_SUM = "234567900123456789.234567900123"


def codes(response: httpx.Response) -> list[tuple[str, str | None]]:
    return [(e["code"], e["field"]) for e in response.json()["errors"]]


async def insert_usages(api: ApiWorld, usages: list[dict[str, Any]]) -> None:
    """Stored usages, as the worker would have written them (quantities exact JSON
    numbers in `unit_quantities`)."""
    assert api.settings.database_url is not None
    conn = await asyncpg.connect(api.settings.database_url.get_secret_value())
    try:
        for usage in usages:
            await conn.execute(
                """
                INSERT INTO usages (
                    external_reference, contract_id, debtor_id, inventory_id, product_item_id,
                    product_ident, start_date, end_date, unit_quantities, billable,
                    payload_hash, raw_payload, source_topic, source_partition, source_offset
                ) VALUES (
                    $1, $2, $3, $4, 1, $5, $6::text::timestamptz, $6::text::timestamptz,
                    $7::jsonb, $8, 'hash', '{}', 'usage.events', 0, 0
                )
                """,
                unique("sum-"),
                usage["contract"],
                usage.get("debtor", 7),
                usage.get("inventory", 70),
                usage.get("product", "voice.uk"),
                usage["start"],
                usage.get("quantities"),
                usage.get("billable", True),
            )
    finally:
        await conn.close()


def quantities(*pairs: tuple[str, str]) -> str:
    return "[" + ",".join(f'{{"unit":"{u}","quantity":{q}}}' for u, q in pairs) + "]"


@pytest.fixture(scope="module")
async def contracts(api: ApiWorld) -> tuple[int, int]:
    """Two contracts (the first one's id is the smaller) and their usages."""
    first, second = unique_int(), unique_int()
    await insert_usages(
        api,
        [
            {
                "contract": first,
                "start": "2026-05-01T10:00:00Z",
                "quantities": quantities(("minute", BIG_1), ("sms", "1")),
            },
            {
                "contract": first,
                "start": "2026-05-01T23:59:59.999999Z",
                "quantities": quantities(("minute", BIG_2)),
            },
            # 2026-05-01T23:30:00Z: still the 1st of May in UTC.
            {
                "contract": first,
                "start": "2026-05-02T01:30:00+02:00",
                "quantities": quantities(("second", "30")),
            },
            {
                "contract": first,
                "start": "2026-05-02T00:00:00Z",
                "quantities": quantities(("minute", "0.5")),
                "billable": False,
            },
            {"contract": first, "start": "2026-05-03T12:00:00Z", "quantities": None},
            {"contract": first, "start": "2026-05-04T12:00:00Z", "quantities": "[]"},
            # Outside May: not counted.
            {
                "contract": first,
                "start": "2026-06-01T00:00:00Z",
                "quantities": quantities(("minute", "1000")),
            },
            {
                "contract": first,
                "start": "2026-04-30T23:59:59Z",
                "quantities": quantities(("minute", "1000")),
            },
            {
                "contract": second,
                "start": "2026-05-10T08:00:00Z",
                "quantities": quantities(("minute", "2.000")),
                "product": "data.uk",
            },
        ],
    )
    return first, second


async def summaries(api: ApiWorld, query: str) -> tuple[int, list[dict[str, Any]]]:
    response = await api.client.get(f"/usage-summaries?{query}", headers=api.as_reader())
    assert response.status_code == 200, response.text
    return int(response.headers["X-Total-Count"]), response.json()


async def test_totals_by_unit_are_exact_decimals(api: ApiWorld, contracts: tuple[int, int]) -> None:
    first, _ = contracts
    total, items = await summaries(api, f"{MAY}&contractId={first}")
    assert total == 4
    assert items == [
        {"unit": "minute", "usages": 3, "quantity": "234567900123456789.734567900123"},
        {"unit": "second", "usages": 1, "quantity": "30"},
        {"unit": "sms", "usages": 1, "quantity": "1"},
        # A usage without quantities (null or an empty list) counts under unit null.
        {"unit": None, "usages": 2, "quantity": "0"},
    ]


async def test_grouped_by_contract_and_day_in_utc(
    api: ApiWorld, contracts: tuple[int, int]
) -> None:
    first, second = contracts
    total, items = await summaries(
        api, f"{MAY}&contractId=in:{first},{second}&groupBy=contractId,day"
    )
    assert items == [
        {"contractId": first, "day": "2026-05-01", "unit": "minute", "usages": 2,
         "quantity": BIG_SUM},
        {"contractId": first, "day": "2026-05-01", "unit": "second", "usages": 1,
         "quantity": "30"},
        {"contractId": first, "day": "2026-05-01", "unit": "sms", "usages": 1, "quantity": "1"},
        {"contractId": first, "day": "2026-05-02", "unit": "minute", "usages": 1,
         "quantity": "0.5"},
        {"contractId": first, "day": "2026-05-03", "unit": None, "usages": 1, "quantity": "0"},
        {"contractId": first, "day": "2026-05-04", "unit": None, "usages": 1, "quantity": "0"},
        {"contractId": second, "day": "2026-05-10", "unit": "minute", "usages": 1,
         "quantity": "2.000"},
    ]  # fmt: skip
    assert total == len(items)


async def test_grouped_by_month_billable_and_product_with_filters(
    api: ApiWorld, contracts: tuple[int, int]
) -> None:
    first, second = contracts
    both = f"contractId=in:{first},{second}"
    _, items = await summaries(api, f"{MAY}&{both}&groupBy=month,billable&productIdent=voice.uk")
    assert items == [
        {"month": "2026-05", "billable": False, "unit": "minute", "usages": 1, "quantity": "0.5"},
        {"month": "2026-05", "billable": True, "unit": "minute", "usages": 2, "quantity": BIG_SUM},
        {"month": "2026-05", "billable": True, "unit": "second", "usages": 1, "quantity": "30"},
        {"month": "2026-05", "billable": True, "unit": "sms", "usages": 1, "quantity": "1"},
        {"month": "2026-05", "billable": True, "unit": None, "usages": 2, "quantity": "0"},
    ]
    _, items = await summaries(api, f"{MAY}&{both}&groupBy=productIdent&productIdent=like:DATA")
    assert items == [
        {"productIdent": "data.uk", "unit": "minute", "usages": 1, "quantity": "2.000"}
    ]
    _, items = await summaries(api, f"{MAY}&{both}&billable=false")
    assert items == [{"unit": "minute", "usages": 1, "quantity": "0.5"}]
    # lte: takes the bound itself, lt: does not.
    june = "startDate=gte:2026-05-01T00:00:00Z&startDate=lte:2026-06-01T00:00:00Z"
    _, items = await summaries(api, f"{june}&contractId={first}&groupBy=month")
    assert [(i["month"], i["unit"], i["quantity"]) for i in items][-1] == (
        "2026-06",
        "minute",
        "1000",
    )


async def test_pages_of_groups_with_the_total(api: ApiWorld, contracts: tuple[int, int]) -> None:
    first, _ = contracts
    total, items = await summaries(api, f"{MAY}&contractId={first}&page=2&pageSize=3")
    assert total == 4
    assert items == [{"unit": None, "usages": 2, "quantity": "0"}]
    total, items = await summaries(api, f"{MAY}&contractId={first}&page=3&pageSize=3")
    assert (total, items) == (4, [])


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", [("INVALID_PARAMETER", "startDate")]),
        ("startDate=gte:2026-05-01T00:00:00Z", [("INVALID_PARAMETER", "startDate")]),
        ("startDate=lt:2026-06-01T00:00:00Z", [("INVALID_PARAMETER", "startDate")]),
        (
            "startDate=gt:2026-05-01T00:00:00Z&startDate=gte:2026-05-02T00:00:00Z",
            [("INVALID_PARAMETER", "startDate")],
        ),
        (
            "startDate=gte:yesterday&startDate=lt:2026-06-01T00:00:00Z",
            [("INVALID_PARAMETER", "startDate")],
        ),
        (
            f"{MAY}&groupBy=contractId,week&contractId=x&billable=yes&color=red",
            [
                ("INVALID_PARAMETER", "color"),
                ("INVALID_PARAMETER", "groupBy"),
                ("INVALID_PARAMETER", "contractId"),
                ("INVALID_PARAMETER", "billable"),
            ],
        ),
        (f"{MAY}&groupBy=day,day", [("INVALID_PARAMETER", "groupBy")]),
        (f"{MAY}&pageSize=1001", [("INVALID_PARAMETER", "pageSize")]),
        (f"{MAY}&page=1&page=2", [("INVALID_PARAMETER", "page")]),
    ],
)
async def test_bad_parameters_are_400_one_error_each(
    api: ApiWorld, query: str, expected: list[tuple[str, str]]
) -> None:
    response = await api.client.get(f"/usage-summaries?{query}")
    assert response.status_code == 400, response.text
    assert codes(response) == expected


async def test_summaries_need_usage_read(api: ApiWorld) -> None:
    others = [p for p in Permission if p is not Permission.USAGE_READ]
    key = await add_key(api.store, *others)
    response = await api.client.get(f"/usage-summaries?{MAY}", headers={"X-API-KEY": key})
    assert response.status_code == 403
    key = await add_key(api.store, Permission.USAGE_READ)
    response = await api.client.get(f"/usage-summaries?{MAY}", headers={"X-API-KEY": key})
    assert response.status_code == 200
