"""GET /usages (SPEC-API.md, "The read side"): filters, sort, paging and X-Total-Count,
bad parameters, permissions, and the CSV export, against a real Postgres holding usages
inserted with SQL."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest

from tests.support.api import ALL_PERMISSIONS, ApiWorld, add_key, close_world, open_world
from tests.support.database import create_database
from usage_ingest.api.csv_export import CSV_COLUMNS
from usage_ingest.api.keys import Permission

pytestmark = pytest.mark.integration

_INSERT = """
INSERT INTO usages (
    external_reference, contract_id, debtor_id, inventory_id, product_item_id, product_ident,
    description, start_date, end_date, unit_quantities, billable, payload_hash, raw_payload,
    source_topic, source_partition, source_offset, received_at
)
SELECT r, c, d, i, 1, p, de, s::timestamptz, s::timestamptz + interval '5 minutes',
    q::jsonb, b, 'hash', '{}', 'usage-events', 0, o, ra::timestamptz
FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::text[], $6::text[],
    $7::text[], $8::text[], $9::boolean[], $10::text[])
    WITH ORDINALITY AS t(r, c, d, i, p, de, s, q, b, ra, o)
RETURNING id, external_reference
"""

MINUTES = '[{"unit": "minute", "quantity": 4.5}]'

# name: contract, debtor, inventory, productIdent, description, startDate, quantities,
# billable, receivedAt
USAGES: dict[str, tuple[Any, ...]] = {
    "a": (
        1,
        10,
        100,
        "voice.uk",
        "x",
        "2026-05-01T00:00:00Z",
        MINUTES,
        True,
        "2026-05-02T00:00:00Z",
    ),
    "b": (
        1,
        10,
        101,
        "voice.de",
        None,
        "2026-05-15T12:00:00Z",
        MINUTES,
        False,
        "2026-05-16T00:00:00Z",
    ),
    "c": (2, 10, 100, "sms.uk", "y", "2026-05-31T23:59:59Z", None, True, "2026-06-01T00:00:00Z"),
    "d": (2, 20, 102, "voice.uk", None, "2026-06-01T00:00:00Z", "[]", True, "2026-06-02T00:00:00Z"),
    "e": (
        3,
        20,
        103,
        "DATA.uk",
        "a",
        "2026-04-30T23:59:59.999999Z",
        MINUTES,
        False,
        "2026-05-01T00:00:00Z",
    ),
}


async def insert_usages(url: str, rows: dict[str, tuple[Any, ...]]) -> dict[str, int]:
    columns = list(zip(*rows.values(), strict=True))
    conn = await asyncpg.connect(url)
    try:
        inserted = await conn.fetch(_INSERT, list(rows), *[list(c) for c in columns])
    finally:
        await conn.close()
    return {r["external_reference"]: r["id"] for r in inserted}


@dataclass
class Seeded:
    api: ApiWorld
    ids: dict[str, int]  # externalReference → id

    async def get(self, query: str, status: int = 200, **headers: str) -> httpx.Response:
        response = await self.api.client.get(f"/usages?{query}", headers=headers)
        assert response.status_code == status, response.text
        return response

    async def names(self, query: str) -> list[str]:
        response = await self.get(query)
        return [u["externalReference"] for u in response.json()]


@pytest.fixture(scope="module")
async def seeded(kafka_bootstrap: str, postgres_admin_url: str) -> AsyncIterator[Seeded]:
    world, producer = await open_world(kafka_bootstrap, await create_database(postgres_admin_url))
    assert world.settings.database_url is not None
    ids = await insert_usages(world.settings.database_url.get_secret_value(), USAGES)
    yield Seeded(world, ids)
    await close_world(world, producer)


def csv_rows(response: httpx.Response) -> list[list[str]]:
    assert response.headers["content-type"].startswith("text/csv")
    return list(csv.reader(io.StringIO(response.content.decode("utf-8"), newline="")))


# --- the JSON list ---------------------------------------------------------------------


async def test_pages_in_id_order_with_the_total_count(seeded: Seeded) -> None:
    pages = []
    for page in (1, 2, 3, 4):
        response = await seeded.get(f"page={page}&pageSize=2")
        assert response.headers["X-Total-Count"] == "5"
        pages.append([u["externalReference"] for u in response.json()])
    assert pages == [["a", "b"], ["c", "d"], ["e"], []]


async def test_each_item_is_the_json_of_the_single_read(seeded: Seeded) -> None:
    listed = (await seeded.get("page=1&pageSize=10")).json()
    for item in listed:
        single = await seeded.api.client.get(f"/usages/{item['externalReference']}")
        assert single.status_code == 200
        assert item == single.json()
    assert listed[0]["unitQuantities"] == [{"unit": "minute", "quantity": "4.5"}]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ("contractId=1", ["a", "b"]),
        ("contractId=in:2,3", ["c", "d", "e"]),
        ("contractId=99", []),
        ("debtorId=20", ["d", "e"]),
        ("inventoryId=in:100,103", ["a", "c", "e"]),
        ("productIdent=voice.uk", ["a", "d"]),
        ("productIdent=in:sms.uk,DATA.uk", ["c", "e"]),
        ("productIdent=like:UK", ["a", "c", "d", "e"]),
        ("externalReference=c", ["c"]),
        ("externalReference=like:B", ["b"]),
        ("billable=false", ["b", "e"]),
        ("billable=true", ["a", "c", "d"]),
        ("startDate=2026-06-01T00:00:00Z", ["d"]),
        ("startDate=2026-06-01T02:00:00%2B02:00", ["d"]),
        ("startDate=gte:2026-05-01T00:00:00Z&startDate=lt:2026-06-01T00:00:00Z", ["a", "b", "c"]),
        ("startDate=gt:2026-05-01T00:00:00Z&startDate=lte:2026-06-01T00:00:00Z", ["b", "c", "d"]),
        ("receivedAt=lt:2026-05-02T00:00:00Z", ["e"]),
        ("receivedAt=gte:2026-06-01T00:00:00Z", ["c", "d"]),
        # Repeated filters are AND-ed.
        ("contractId=in:1,2&contractId=in:2,3&billable=true", ["c", "d"]),
        ("productIdent=like:voice&productIdent=like:.uk&debtorId=10", ["a"]),
    ],
)
async def test_filters(seeded: Seeded, filters: str, expected: list[str]) -> None:
    response = await seeded.get(f"page=1&pageSize=100&{filters}")
    assert [u["externalReference"] for u in response.json()] == expected
    assert response.headers["X-Total-Count"] == str(len(expected))


async def test_sort_by_several_keys_the_id_breaking_ties(seeded: Seeded) -> None:
    assert await seeded.names("page=1&pageSize=10&sort=startDate:desc") == [
        "d", "c", "b", "a", "e"
    ]  # fmt: skip
    assert await seeded.names("page=1&pageSize=10&sort=contractId:desc,billable") == [
        "e", "c", "d", "b", "a"
    ]  # fmt: skip
    # Ties on debtorId are broken by id; the second page follows on without overlap.
    assert await seeded.names("page=1&pageSize=2&sort=debtorId:desc") == ["d", "e"]
    assert await seeded.names("page=2&pageSize=2&sort=debtorId:desc") == ["a", "b"]
    assert await seeded.names("page=1&pageSize=10&sort=id:desc") == ["e", "d", "c", "b", "a"]
    # A nullable field: nulls last ascending, first descending.
    assert await seeded.names("page=1&pageSize=10&sort=description") == ["e", "a", "c", "b", "d"]
    assert await seeded.names("page=1&pageSize=10&sort=description:desc") == [
        "b", "d", "c", "a", "e"
    ]  # fmt: skip


async def test_fields_projection(seeded: Seeded) -> None:
    response = await seeded.get("page=1&pageSize=2&fields=externalReference,source,billable")
    assert response.json() == [
        {
            "externalReference": "a",
            "billable": True,
            "source": {"topic": "usage-events", "partition": 0, "offset": 1, "timestamp": None},
        },
        {
            "externalReference": "b",
            "billable": False,
            "source": {"topic": "usage-events", "partition": 0, "offset": 2, "timestamp": None},
        },
    ]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("pageSize=10", "page"),
        ("page=1", "pageSize"),
        ("page=0&pageSize=10", "page"),
        ("page=1&pageSize=1001", "pageSize"),
        ("page=1&pageSize=10&sort=payload", "sort"),
        ("page=1&pageSize=10&sort=id:up", "sort"),
        ("page=1&pageSize=10&sort=source", "sort"),
        ("page=1&pageSize=10&sort=id,id", "sort"),
        ("page=1&pageSize=10&fields=nope", "fields"),
        ("page=1&pageSize=10&colour=blue", "colour"),
        ("page=1&pageSize=10&sort=id&sort=id", "sort"),
        ("page=1&pageSize=10&contractId=x", "contractId"),
        ("page=1&pageSize=10&contractId=0", "contractId"),
        ("page=1&pageSize=10&contractId=9223372036854775808", "contractId"),
        ("page=1&pageSize=10&debtorId=like:1", "debtorId"),
        ("page=1&pageSize=10&inventoryId=in:1,,2", "inventoryId"),
        ("page=1&pageSize=10&productIdent=", "productIdent"),
        ("page=1&pageSize=10&externalReference=like:", "externalReference"),
        ("page=1&pageSize=10&billable=yes", "billable"),
        ("page=1&pageSize=10&startDate=2026-05-01", "startDate"),
        ("page=1&pageSize=10&startDate=ge:2026-05-01T00:00:00Z", "startDate"),
        ("page=1&pageSize=10&receivedAt=lt:2026-13-01T00:00:00Z", "receivedAt"),
        ("page=1&pageSize=10&contractId=in:" + ",".join(["1"] * 1001), "contractId"),
        ("page=1&pageSize=10" + "&contractId=1" * 11, "contractId"),
        ("page=1&pageSize=10" + "&contractId=1" * 10 + "&debtorId=1" * 10 + "&billable=true", None),
    ],
)
async def test_a_bad_parameter_is_one_400(seeded: Seeded, query: str, field: str | None) -> None:
    response = await seeded.get(query, status=400)
    [error] = response.json()["errors"]
    assert (error["code"], error["field"]) == ("INVALID_PARAMETER", field)
    assert error["message"]


async def test_every_bad_parameter_is_reported_at_once(seeded: Seeded) -> None:
    response = await seeded.get("page=1&pageSize=10&sort=x&fields=y&billable=z&startDate=w", 400)
    fields = sorted(e["field"] for e in response.json()["errors"])
    assert fields == ["billable", "fields", "sort", "startDate"]


async def test_permissions(seeded: Seeded) -> None:
    api = seeded.api
    for accept in ("application/json", "text/csv"):
        response = await api.client.get(
            "/usages?page=1&pageSize=1", headers={"X-API-KEY": "", "Accept": accept}
        )
        assert response.status_code == 401
        assert response.json()["errors"][0]["code"] == "UNAUTHORIZED"
        others = await add_key(
            api.store, *(p for p in ALL_PERMISSIONS if p is not Permission.USAGE_READ)
        )
        response = await api.client.get(
            "/usages?page=1&pageSize=1", headers={"X-API-KEY": others, "Accept": accept}
        )
        assert response.status_code == 403
        assert Permission.USAGE_READ.value in response.json()["errors"][0]["message"]
    response = await api.client.get("/usages?page=1&pageSize=1", headers=api.as_reader())
    assert response.status_code == 200


# --- the CSV export --------------------------------------------------------------------


async def test_csv_of_a_selection_with_and_without_quantities(seeded: Seeded) -> None:
    response = await seeded.get("contractId=2&sort=id", Accept="text/csv")
    assert "X-Total-Count" not in response.headers
    assert response.content.endswith(b"\r\n")
    header, *lines = csv_rows(response)
    assert header == list(CSV_COLUMNS)
    # c has no quantities (null), d an empty list: one line each, unit and quantity empty.
    assert lines == [
        ["c", str(seeded.ids["c"]), "2", "10", "100", "sms.uk", "2026-05-31T23:59:59.000000Z",
         "2026-06-01T00:04:59.000000Z", "", "", "true", "2026-06-01T00:00:00.000000Z"],
        ["d", str(seeded.ids["d"]), "2", "20", "102", "voice.uk", "2026-06-01T00:00:00.000000Z",
         "2026-06-01T00:05:00.000000Z", "", "", "true", "2026-06-02T00:00:00.000000Z"],
    ]  # fmt: skip


async def test_csv_page_is_the_json_page_with_its_total(seeded: Seeded) -> None:
    query = "page=2&pageSize=2&sort=startDate:desc"
    response = await seeded.get(query, Accept="text/csv")
    assert response.headers["X-Total-Count"] == "5"
    _, *lines = csv_rows(response)
    json_page = (await seeded.get(query)).json()
    assert [line[0] for line in lines] == [u["externalReference"] for u in json_page] == ["b", "a"]
    assert [line[8:10] for line in lines] == [["minute", "4.5"], ["minute", "4.5"]]


async def test_accept_chooses_between_json_and_csv(seeded: Seeded) -> None:
    for accept, media_type in [
        ("text/csv;q=0.9, application/json", "application/json"),
        ("application/json;q=0.5, text/csv", "text/csv"),
        ("*/*", "application/json"),
        ("text/html", "application/json"),
    ]:
        response = await seeded.get("page=1&pageSize=1", Accept=accept)
        assert response.headers["content-type"].startswith(media_type), accept


@pytest.mark.parametrize(
    ("query", "field"),
    [("page=1", "pageSize"), ("pageSize=5", "page"), ("fields=id", "fields"), ("sort=x", "sort")],
)
async def test_bad_csv_parameters_are_400(seeded: Seeded, query: str, field: str) -> None:
    response = await seeded.get(query, 400, Accept="text/csv")
    assert [(e["code"], e["field"]) for e in response.json()["errors"]] == [
        ("INVALID_PARAMETER", field)
    ]


async def test_csv_quotes_a_comma_and_a_quote_and_defuses_formulas(seeded: Seeded) -> None:
    assert seeded.api.settings.database_url is not None
    url = seeded.api.settings.database_url.get_secret_value()
    quantities = '[{"unit": "@SUM(A1)", "quantity": 1}, {"unit": "call", "quantity": 0.0000001}]'
    row = (50, 50, 50, 'voice,"uk"', None, "2026-07-01T00:00:00Z", quantities, True,
           "2026-07-01T00:00:00Z")  # fmt: skip
    await insert_usages(url, {"=HYPERLINK(x)": row, "-2026-07": row})
    response = await seeded.get("contractId=50", Accept="text/csv")
    raw = response.content.decode().split("\r\n")
    assert raw[1].startswith("'=HYPERLINK(x),")
    assert ',"voice,""uk""",' in raw[1]
    _, *lines = csv_rows(response)
    assert [(line[0], line[5], line[8], line[9]) for line in lines] == [
        ("'=HYPERLINK(x)", 'voice,"uk"', "'@SUM(A1)", "1"),
        ("'=HYPERLINK(x)", 'voice,"uk"', "call", "0.0000001"),
        ("'-2026-07", 'voice,"uk"', "'@SUM(A1)", "1"),
        ("'-2026-07", 'voice,"uk"', "call", "0.0000001"),
    ]


async def test_an_export_larger_than_any_page_is_streamed_whole(seeded: Seeded) -> None:
    """2,500 usages (pageSize is at most 1,000; the export reads 2,000 at a time), two
    quantities each with 18 digits before the point and 12 after, checked line by line."""
    assert seeded.api.settings.database_url is not None
    url = seeded.api.settings.database_url.get_secret_value()
    count = 2500

    def quantity(i: int) -> str:
        return f"{10**17 + i}.{i:011d}7"

    rows = {
        f"bulk-{i:05d}": (
            77,
            78,
            79,
            "voice.uk",
            None,
            f"2026-08-01T00:00:{i % 60:02d}Z",
            f'[{{"unit": "minute", "quantity": {quantity(i)}}}, '
            f'{{"unit": "call", "quantity": "{quantity(count - i)}"}}]',
            i % 2 == 0,
            "2026-08-02T00:00:00Z",
        )
        for i in range(count)
    }
    ids = await insert_usages(url, rows)
    # Sorted by startDate then (ties) id: several chunks, the position crossing ties.
    response = await seeded.get("contractId=77&sort=startDate", Accept="text/csv")
    header, *lines = csv_rows(response)
    assert header == list(CSV_COLUMNS)
    expected_order = sorted(rows, key=lambda r: (int(r[-5:]) % 60, ids[r]))
    expected = []
    for reference in expected_order:
        i = int(reference[-5:])
        start = f"2026-08-01T00:00:{i % 60:02d}.000000Z"
        end = f"2026-08-01T00:05:{i % 60:02d}.000000Z"
        common = [reference, str(ids[reference]), "77", "78", "79", "voice.uk", start, end]
        last = ["true" if i % 2 == 0 else "false", "2026-08-02T00:00:00.000000Z"]
        expected.append([*common, "minute", quantity(i), *last])
        expected.append([*common, "call", quantity(count - i), *last])
    assert len(lines) == 2 * count
    for number, (line, want) in enumerate(zip(lines, expected, strict=True)):
        assert line == want, number
    assert len(lines[0][9].partition(".")[0]) == 18
    assert len(lines[0][9].partition(".")[2]) == 12
    # Descending and with mixed directions, the same usages come out, each once.
    for sort in ("id:desc", "billable:desc,startDate"):
        response = await seeded.get(f"contractId=77&sort={sort}", Accept="text/csv")
        _, *lines = csv_rows(response)
        assert len(lines) == 2 * count
        assert sorted({line[0] for line in lines}) == sorted(rows)
    _, *lines = csv_rows(await seeded.get("contractId=77&sort=id:desc", Accept="text/csv"))
    assert [line[0] for line in lines[::2]] == sorted(rows, reverse=True)
    _, *lines = csv_rows(
        await seeded.get("contractId=77&sort=billable:desc,startDate", Accept="text/csv")
    )
    assert [line[0] for line in lines[::2]] == sorted(
        rows, key=lambda r: (int(r[-5:]) % 2, int(r[-5:]) % 60, ids[r])
    )
