"""`usage-ingest reference load FILE` (SPEC.md §9) against a real Postgres: all or
nothing, idempotent, updates what changed, refuses bad files with one clear line."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.support.database import DEMO_REFERENCE
from usage_ingest.domain.reference import ReferenceFile
from usage_ingest.domain.resolution import ReferenceKeys
from usage_ingest.errors import ReferenceDataError
from usage_ingest.store.reference import LoadCounts
from usage_ingest.store.store import Store

pytestmark = pytest.mark.integration

USAGE_INGEST = Path(sys.executable).parent / "usage-ingest"
TABLES = {
    "operating_sites": "code",
    "product_items": "id",
    "contracts": "id",
    "usage_product_inventories": "id",
    "usage_product_references": "id",
}


@dataclass(frozen=True)
class Completed:
    returncode: int
    stdout: str
    stderr: str


async def cli(database_url: str, *args: str) -> Completed:
    """Run the real console script with the database in its environment."""
    assert USAGE_INGEST.is_file(), USAGE_INGEST
    process = await asyncio.create_subprocess_exec(
        str(USAGE_INGEST),
        *args,
        env={**os.environ, "USAGE_INGEST_DATABASE_URL": database_url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return Completed(process.returncode, stdout.decode(), stderr.decode())


async def load_file(database_url: str, path: Path) -> Completed:
    return await cli(database_url, "reference", "load", str(path))


def write(tmp_path: Path, data: dict[str, Any], name: str = "reference.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def assert_one_line_refusal(result: Completed, *fragments: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.endswith("\n")
    assert result.stderr.count("\n") == 1, f"expected one line on stderr, got {result.stderr!r}"
    for fragment in fragments:
        assert fragment in result.stderr
    assert result.stdout == ""


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    store = await Store.open(database_url)
    yield store
    await store.close()


async def load(store: Store, data: dict[str, Any]) -> LoadCounts:
    return await store.load_reference(ReferenceFile.model_validate(data))


async def snapshot(db: asyncpg.Connection) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every reference table, updated_at included."""
    result = {}
    for table, key in TABLES.items():
        rows = await db.fetch(f"SELECT * FROM {table} ORDER BY {key}")
        result[table] = [tuple(r.items()) for r in rows]
    return result


async def row_counts(db: asyncpg.Connection) -> dict[str, int]:
    return {table: await db.fetchval(f"SELECT count(*) FROM {table}") for table in TABLES}


async def assert_nothing_written(db: asyncpg.Connection) -> None:
    assert await row_counts(db) == dict.fromkeys(TABLES, 0)


def product(
    id: int | None = 1,  # noqa: A002 - named after the record field
    reference: str = "voice.uk",
    **extra: Any,
) -> dict[str, Any]:
    item = {"reference": reference, "name": "UK voice", "type": "USAGE_BASED", **extra}
    if id is not None:
        item["id"] = id
    return item


def inventory(
    *,
    id: int | None = 11,  # noqa: A002 - named after the record field
    site_id: int = 100,
    product_id: int = 1,
    start: str = "2026-01-01",
    end: str | None = None,
    references: tuple[str, ...] = ("441234567890",),
    **extra: Any,
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "siteId": site_id,
        "usageProductId": product_id,
        "startDate": start,
        "endDate": end,
        "productReferences": [{"productReference": r} for r in references],
        **extra,
    }
    if id is not None:
        record["id"] = id
    return record


def contract(id: int = 7, **extra: Any) -> dict[str, Any]:  # noqa: A002 - record field
    return {"id": id, "debtorId": 3, "siteId": 100, "startDate": "2026-01-01", **extra}


def reference_file(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "operatingSites": ["GB-LON"],
        "productItems": [product()],
        "contracts": [contract()],
        "usageProductInventories": [inventory()],
    }
    data.update(overrides)
    return data


# --- the demo file, through the console script ---------------------------------------


async def test_demo_file_loads(database_url: str, db: asyncpg.Connection) -> None:
    result = await load_file(database_url, DEMO_REFERENCE)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert json.loads(result.stdout) == {
        "inserted": {
            "operatingSites": 2,
            "productItems": 1,
            "contracts": 1,
            "usageProductInventories": 1,
            "productReferences": 1,
        },
        "updated": {},
    }
    assert await row_counts(db) == {
        "operating_sites": 2,
        "product_items": 1,
        "contracts": 1,
        "usage_product_inventories": 1,
        "usage_product_references": 1,
    }
    assert await db.fetchval("SELECT reference FROM product_items WHERE id = 1") == "demo.usage"


async def test_loading_the_same_file_twice_changes_nothing(
    database_url: str, db: asyncpg.Connection
) -> None:
    first = await load_file(database_url, DEMO_REFERENCE)
    assert first.returncode == 0, first.stderr
    before = await snapshot(db)
    second = await load_file(database_url, DEMO_REFERENCE)
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout) == {"inserted": {}, "updated": {}}
    assert await snapshot(db) == before


async def test_reloading_records_without_ids_changes_nothing(
    store: Store, db: asyncpg.Connection
) -> None:
    data = reference_file(
        productItems=[product(id=1)],
        usageProductInventories=[inventory(id=None)],
    )
    first = await load(store, data)
    assert first.inserted["usageProductInventories"] == 1
    before = await snapshot(db)
    second = await load(store, data)
    assert (second.inserted, second.updated) == ({}, {})
    assert await snapshot(db) == before


# --- changes ---------------------------------------------------------------------------


async def test_changed_contract_is_updated(store: Store, db: asyncpg.Connection) -> None:
    await load(store, reference_file())
    before = await snapshot(db)
    counts = await load(store, reference_file(contracts=[contract(endDate="2026-12-31")]))
    assert (counts.inserted, counts.updated) == ({}, {"contracts": 1})
    row = await db.fetchrow("SELECT end_date, updated_at FROM contracts WHERE id = 7")
    assert row["end_date"].isoformat() == "2026-12-31"
    assert row["updated_at"] > dict(before["contracts"][0])["updated_at"]
    after = await snapshot(db)
    for table in ("product_items", "usage_product_inventories", "usage_product_references"):
        assert after[table] == before[table], f"{table} changed although its records did not"


async def test_changed_inventory_is_updated(store: Store, db: asyncpg.Connection) -> None:
    await load(store, reference_file())
    counts = await load(store, reference_file(usageProductInventories=[inventory(billable=False)]))
    assert (counts.inserted, counts.updated) == ({}, {"usageProductInventories": 1})
    assert (
        await db.fetchval("SELECT billable FROM usage_product_inventories WHERE id = 11") is False
    )


async def test_changed_product_item_is_updated(store: Store, db: asyncpg.Connection) -> None:
    await load(store, reference_file())
    counts = await load(store, reference_file(productItems=[product(status="ARCHIVED")]))
    assert (counts.inserted, counts.updated) == ({}, {"productItems": 1})
    assert await db.fetchval("SELECT status FROM product_items WHERE id = 1") == "ARCHIVED"


async def test_changed_product_references_are_replaced(
    store: Store, db: asyncpg.Connection
) -> None:
    await load(store, reference_file())
    await load(store, reference_file(usageProductInventories=[inventory(references=("44999",))]))
    references = await db.fetch("SELECT product_reference FROM usage_product_references")
    assert [r["product_reference"] for r in references] == ["44999"]


async def test_inventory_without_id_is_matched_by_site_product_and_start_on_reload(
    store: Store, db: asyncpg.Connection
) -> None:
    await load(store, reference_file(usageProductInventories=[inventory(id=None)]))
    first_id = await db.fetchval("SELECT id FROM usage_product_inventories")
    counts = await load(
        store, reference_file(usageProductInventories=[inventory(id=None, billable=False)])
    )
    assert counts.updated == {"usageProductInventories": 1}
    rows = await db.fetch("SELECT id, billable FROM usage_product_inventories")
    assert [(r["id"], r["billable"]) for r in rows] == [(first_id, False)]


async def test_inventory_without_id_and_another_start_is_a_new_record(
    store: Store, db: asyncpg.Connection
) -> None:
    await load(
        store, reference_file(usageProductInventories=[inventory(id=None, end="2026-06-30")])
    )
    counts = await load(
        store,
        reference_file(
            usageProductInventories=[inventory(id=None, start="2026-07-01", references=("4455",))]
        ),
    )
    assert counts.inserted.get("usageProductInventories") == 1
    assert await db.fetchval("SELECT count(*) FROM usage_product_inventories") == 2


# --- refusals: one line, nothing written -------------------------------------------------


async def test_bad_file_is_refused_with_its_path_and_nothing_written(
    database_url: str, db: asyncpg.Connection, tmp_path: Path
) -> None:
    data = reference_file(
        contracts=[contract(id=7), contract(id=8, startDate=["2026-01-01"])],
    )
    result = await load_file(database_url, write(tmp_path, data))
    assert_one_line_refusal(result, "contracts.1.startDate")
    await assert_nothing_written(db)


@pytest.mark.parametrize(
    ("data", "path"),
    [
        pytest.param(
            reference_file(usageProductInventories=[inventory(), inventory(id=12, billable="x")]),
            "usageProductInventories.1.billable",
            id="inventory-billable",
        ),
        pytest.param(
            reference_file(productItems=[product(type="SUBSCRIPTION")]),
            "productItems.0.type",
            id="product-type",
        ),
        pytest.param(
            reference_file(
                usageProductInventories=[
                    inventory(productReferences=[{"productReference": "1"}, {"primary": True}])
                ]
            ),
            "usageProductInventories.0.productReferences.1.productReference",
            id="missing-deep-field",
        ),
        pytest.param(
            reference_file(contracts=[contract(startDate="2026-02-01", endDate="2026-01-01")]),
            "contracts.0",
            id="contract-ends-before-start",
        ),
        pytest.param(
            reference_file(contracts=[contract(id=7), contract(id=-5)]),
            "contracts.1.id",
            id="negative-contract-id",  # ids are positive (README, "Ids")
        ),
        pytest.param(
            reference_file(
                usageProductInventories=[
                    inventory(productReferences=[{"productReference": "\u202e0987"}])
                ]
            ),
            "usageProductInventories.0.productReferences.0.productReference",
            id="bidi-override-in-a-number",
        ),
    ],
)
async def test_invalid_file_names_the_offending_path(
    database_url: str, db: asyncpg.Connection, tmp_path: Path, data: dict[str, Any], path: str
) -> None:
    result = await load_file(database_url, write(tmp_path, data))
    assert_one_line_refusal(result, path)
    await assert_nothing_written(db)


async def test_file_that_is_not_json_is_refused_on_one_line(
    database_url: str, db: asyncpg.Connection, tmp_path: Path
) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"operatingSites": [', encoding="utf-8")
    assert_one_line_refusal(await load_file(database_url, path), str(path))
    await assert_nothing_written(db)


async def test_unknown_product_item_id_is_refused_with_its_path_and_nothing_written(
    database_url: str, db: asyncpg.Connection, tmp_path: Path
) -> None:
    data = reference_file(
        usageProductInventories=[inventory(), inventory(id=12, site_id=200, product_id=99)]
    )
    result = await load_file(database_url, write(tmp_path, data))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "usageProductInventories.1" in result.stderr
    await assert_nothing_written(db)


async def test_database_refusal_is_reported_on_one_line(database_url: str, tmp_path: Path) -> None:
    data = reference_file(
        usageProductInventories=[inventory(), inventory(id=12, site_id=200, product_id=99)]
    )
    result = await load_file(database_url, write(tmp_path, data))
    assert_one_line_refusal(result, "usageProductInventories.1")


# --- product references on two inventories ------------------------------------------------


@pytest.mark.parametrize(
    ("first", "second"),
    [
        pytest.param(("2026-01-01", None), ("2026-03-01", None), id="both-open-ended"),
        pytest.param(("2026-01-01", "2026-06-30"), ("2026-06-30", None), id="share-one-day"),
        pytest.param(("2026-01-01", "2026-12-31"), ("2026-03-01", "2026-04-30"), id="inside"),
    ],
)
async def test_overlapping_product_references_are_refused(
    store: Store,
    db: asyncpg.Connection,
    first: tuple[str, str | None],
    second: tuple[str, str | None],
) -> None:
    data = reference_file(
        usageProductInventories=[
            inventory(id=11, site_id=100, start=first[0], end=first[1]),
            inventory(id=12, site_id=200, start=second[0], end=second[1]),
        ]
    )
    with pytest.raises(ReferenceDataError, match="441234567890"):
        await load(store, data)
    await assert_nothing_written(db)


@pytest.mark.parametrize(
    ("first", "second", "references"),
    [
        pytest.param(
            ("2026-01-01", "2026-06-30"), ("2026-07-01", None), ("441234567890",), id="consecutive"
        ),
        pytest.param(
            ("2026-01-01", None), ("2026-01-01", None), ("441234567899",), id="other-reference"
        ),
    ],
)
async def test_non_overlapping_product_references_are_accepted(
    store: Store,
    db: asyncpg.Connection,
    first: tuple[str, str | None],
    second: tuple[str, str | None],
    references: tuple[str, ...],
) -> None:
    data = reference_file(
        usageProductInventories=[
            inventory(id=11, site_id=100, start=first[0], end=first[1]),
            inventory(id=12, site_id=200, start=second[0], end=second[1], references=references),
        ]
    )
    await load(store, data)
    assert await db.fetchval("SELECT count(*) FROM usage_product_references") == 2


async def test_overlap_with_an_earlier_load_is_refused_and_changes_nothing(
    store: Store, db: asyncpg.Connection
) -> None:
    await load(store, reference_file())
    before = await snapshot(db)
    later = reference_file(usageProductInventories=[inventory(id=12, site_id=200)])
    with pytest.raises(ReferenceDataError, match="441234567890"):
        await load(store, later)
    assert await snapshot(db) == before


# --- ids -------------------------------------------------------------------------------


async def test_explicit_ids_do_not_collide_with_later_assigned_ids(
    store: Store, db: asyncpg.Connection
) -> None:
    explicit = reference_file(
        productItems=[product(id=10, reference="voice.uk")],
        usageProductInventories=[
            inventory(
                id=20,
                product_id=10,
                productReferences=[{"id": 30, "productReference": "441234567890"}],
            )
        ],
    )
    await load(store, explicit)
    before = await snapshot(db)
    assigned = reference_file(
        productItems=[product(id=10, reference="voice.uk"), product(id=None, reference="sms.uk")],
        usageProductInventories=[
            inventory(
                id=20,
                product_id=10,
                productReferences=[{"id": 30, "productReference": "441234567890"}],
            ),
            inventory(id=None, site_id=200, product_id=10, references=("44777",)),
        ],
    )
    counts = await load(store, assigned)
    assert counts.inserted == {
        "productItems": 1,
        "usageProductInventories": 1,
        "productReferences": 1,
    }
    assert await db.fetchval("SELECT id FROM product_items WHERE reference = 'sms.uk'") > 10
    assert await db.fetchval("SELECT id FROM usage_product_inventories WHERE site_id = 200") > 20
    new_reference_id = await db.fetchval(
        "SELECT id FROM usage_product_references WHERE product_reference = '44777'"
    )
    assert new_reference_id > 30
    after = await snapshot(db)
    for table in ("product_items", "usage_product_inventories", "usage_product_references"):
        assert set(before[table]) <= set(after[table]), f"{table}: an explicit-id row changed"


@pytest.mark.parametrize("explicit_first", [False, True], ids=["id-less-first", "explicit-first"])
async def test_explicit_ids_in_the_same_file_do_not_collide_with_assigned_ids(
    store: Store, db: asyncpg.Connection, explicit_first: bool
) -> None:
    """One file mixing records with and without ids, on an empty database."""
    products = [product(id=None, reference="sms.uk"), product(id=1, reference="voice.uk")]
    inventories = [
        inventory(id=None, site_id=100, references=("4401",)),
        inventory(id=1, site_id=200, references=("4402",)),
    ]
    if explicit_first:
        products.reverse()
        inventories.reverse()
    await load(store, reference_file(productItems=products, usageProductInventories=inventories))
    products_stored = await db.fetch("SELECT id, reference FROM product_items ORDER BY reference")
    assert [r["reference"] for r in products_stored] == ["sms.uk", "voice.uk"]
    assert dict(products_stored[1]) == {"id": 1, "reference": "voice.uk"}
    inventories_stored = await db.fetch(
        "SELECT id, site_id FROM usage_product_inventories ORDER BY site_id"
    )
    assert [r["site_id"] for r in inventories_stored] == [100, 200]
    assert inventories_stored[1]["id"] == 1
    references = await db.fetch(
        "SELECT product_reference FROM usage_product_references ORDER BY product_reference"
    )
    assert [r["product_reference"] for r in references] == ["4401", "4402"]


async def test_extreme_dates_round_trip_to_resolution(database_url: str) -> None:
    """9999-12-31 is a common 'open-ended' end date; asyncpg stores it as infinity."""
    store = await Store.open(database_url)
    try:
        await store.load_reference(
            ReferenceFile.model_validate(
                {
                    "productItems": [{"id": 1, "reference": "p", "type": "USAGE_BASED"}],
                    "contracts": [
                        {
                            "id": 1,
                            "debtorId": 1,
                            "siteId": 1,
                            "startDate": "0001-01-01",
                            "endDate": "9999-12-31",
                        }
                    ],
                    "usageProductInventories": [
                        {
                            "id": 1,
                            "siteId": 1,
                            "usageProductId": 1,
                            "startDate": "2020-01-01",
                            "endDate": "9999-12-31",
                            "productReferences": [{"productReference": "x"}],
                        }
                    ],
                }
            )
        )
        snapshot = await store.fetch_reference(
            ReferenceKeys(
                frozenset({(1, "p")}),
                frozenset(),
                frozenset(),
                date(2026, 1, 1),
                date(2026, 1, 1),
            )
        )
    finally:
        await store.close()
    assert snapshot.contracts_by_id[1].end_date == date.max
    assert snapshot.contracts_by_id[1].start_date == date.min
    assert snapshot.inventories_by_site_product[(1, 1)][0].end_date == date.max


def _inventory_record(record_id: int, site: int, product: int, start: str) -> dict[str, Any]:
    return {
        "id": record_id,
        "siteId": site,
        "usageProductId": product,
        "startDate": start,
        "productReferences": [{"productReference": f"n{record_id}"}],
    }


async def test_fetch_reference_takes_only_the_inventories_of_named_pairs(
    database_url: str,
) -> None:
    """Contract 1 (site 1) is named with product a, debtor 9 (contracts 2 and 3, sites 2
    and 3) with product b: the inventories of those sites for those products come back,
    the other product's records on the same sites do not, nor do records that ended
    before the batch's first day."""
    store = await Store.open(database_url)
    try:
        await store.load_reference(
            ReferenceFile.model_validate(
                {
                    "productItems": [
                        {"id": 1, "reference": "a", "type": "USAGE_BASED"},
                        {"id": 2, "reference": "b", "type": "USAGE_BASED"},
                    ],
                    "contracts": [
                        {"id": 1, "debtorId": 8, "siteId": 1, "startDate": "2020-01-01"},
                        {"id": 2, "debtorId": 9, "siteId": 2, "startDate": "2020-01-01"},
                        {"id": 3, "debtorId": 9, "siteId": 3, "startDate": "2020-01-01"},
                    ],
                    "usageProductInventories": [
                        _inventory_record(10, 1, 1, "2020-01-01"),
                        _inventory_record(11, 1, 2, "2020-01-01"),
                        _inventory_record(20, 2, 2, "2020-01-01"),
                        _inventory_record(21, 2, 1, "2020-01-01"),
                        _inventory_record(30, 3, 2, "2020-01-01"),
                        {**_inventory_record(31, 3, 2, "2019-01-01"), "endDate": "2019-12-31"},
                        _inventory_record(32, 3, 2, "2027-01-01"),
                    ],
                }
            )
        )
        snapshot = await store.fetch_reference(
            ReferenceKeys(
                frozenset({(1, "a")}),
                frozenset({(9, "b")}),
                frozenset(),
                date(2026, 1, 1),
                date(2026, 6, 30),
            )
        )
    finally:
        await store.close()
    fetched = {
        key: [r.id for r in records]
        for key, records in snapshot.inventories_by_site_product.items()
    }
    assert fetched == {(1, 1): [10], (2, 2): [20], (3, 2): [30]}
    assert sorted(snapshot.contracts_by_id) == [1, 2, 3]
    assert sorted(snapshot.products_by_reference) == ["a", "b"]
