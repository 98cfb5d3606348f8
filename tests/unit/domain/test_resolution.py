"""Resolution of a usage to its contract and inventory record (SPEC.md §4),
against hand-built reference data."""

from __future__ import annotations

import json
from datetime import date
from typing import Any

import pytest

from usage_ingest.domain.events import UsageEvent
from usage_ingest.domain.messages import OutcomeError
from usage_ingest.domain.resolution import (
    Contract,
    Inventory,
    ProductItem,
    ReferenceKeys,
    ReferenceSnapshot,
    Resolution,
    resolve,
)
from usage_ingest.domain.validation import ValidEvent, validate_record
from usage_ingest.errors import ErrorCode

DAY = date(2026, 11, 22)
SITE = 100
PRODUCT = ProductItem(id=1, reference="voice.uk", type="USAGE_BASED", status="ACTIVE")
OTHER_PRODUCT = ProductItem(id=2, reference="sms.uk", type="USAGE_BASED", status="ACTIVE")


def contract(
    *,
    id: int = 7,  # noqa: A002 - named after the record field
    debtor_id: int = 3,
    site_id: int = SITE,
    start: date = date(2026, 1, 1),
    end: date | None = None,
) -> Contract:
    return Contract(id=id, debtor_id=debtor_id, site_id=site_id, start_date=start, end_date=end)


def inventory(
    *,
    id: int = 11,  # noqa: A002 - named after the record field
    site_id: int = SITE,
    product_id: int = PRODUCT.id,
    start: date = date(2026, 1, 1),
    end: date | None = None,
    billable: bool = True,
) -> Inventory:
    return Inventory(
        id=id,
        site_id=site_id,
        usage_product_id=product_id,
        start_date=start,
        end_date=end,
        billable=billable,
    )


def snapshot(
    contracts: list[Contract] | None = None,
    inventories: list[Inventory] | None = None,
    products: list[ProductItem] | None = None,
    sites: tuple[str, ...] = ("GB-LON", "DE-BER"),
) -> ReferenceSnapshot:
    return ReferenceSnapshot.build(
        operating_sites=sites,
        products=[PRODUCT, OTHER_PRODUCT] if products is None else products,
        contracts=[contract()] if contracts is None else contracts,
        inventories=[inventory()] if inventories is None else inventories,
    )


def usage(**fields: Any) -> UsageEvent:
    values: dict[str, Any] = {
        "externalReference": "ref-1",
        "contractId": 7,
        "productIdent": "voice.uk",
        "startDate": "2026-11-22T10:00:00Z",
        "endDate": "2026-11-22T10:05:00Z",
    }
    values.update(fields)
    checked = validate_record(
        json.dumps({k: v for k, v in values.items() if v is not None}).encode(), 65536
    )
    assert isinstance(checked, ValidEvent), checked
    return checked.event


def by_debtor(debtor_id: int = 3, **fields: Any) -> UsageEvent:
    return usage(contractId=None, debtorId=debtor_id, **fields)


def resolved(event: UsageEvent, snap: ReferenceSnapshot, day: date = DAY) -> Resolution:
    result = resolve(event, day, snap)
    assert isinstance(result, Resolution), result
    return result


def refusal(event: UsageEvent, snap: ReferenceSnapshot, day: date = DAY) -> OutcomeError:
    result = resolve(event, day, snap)
    assert isinstance(result, OutcomeError), result
    assert result.message
    return result


def code_and_field(error: OutcomeError) -> tuple[ErrorCode, str | None]:
    return error.code, error.field


# --- the happy path -------------------------------------------------------------------


def test_resolves_contract_inventory_and_product() -> None:
    result = resolved(usage(), snapshot())
    assert result.product == PRODUCT
    assert result.contract == contract()
    assert result.inventory == inventory()


@pytest.mark.parametrize("billable", [True, False])
def test_resolution_carries_the_inventory_billable_flag(billable: bool) -> None:
    result = resolved(usage(), snapshot(inventories=[inventory(billable=billable)]))
    assert result.inventory.billable is billable


# --- operating site --------------------------------------------------------------------


def test_unknown_operating_site() -> None:
    error = refusal(usage(operatingSite="FR-PAR"), snapshot())
    assert code_and_field(error) == (ErrorCode.UNKNOWN_OPERATING_SITE, "operatingSite")


def test_operating_site_match_is_exact() -> None:
    error = refusal(usage(operatingSite="gb-lon"), snapshot())
    assert error.code == ErrorCode.UNKNOWN_OPERATING_SITE


@pytest.mark.parametrize("site", ["GB-LON", "DE-BER"])
def test_known_operating_site_resolves(site: str) -> None:
    assert resolved(usage(operatingSite=site), snapshot()).inventory.id == 11


def test_no_operating_site_needs_no_predefined_sites() -> None:
    assert resolved(usage(), snapshot(sites=())).inventory.id == 11


# --- step 1: product ---------------------------------------------------------------------


def test_unknown_product_when_no_item_has_the_reference() -> None:
    error = refusal(usage(productIdent="data.uk"), snapshot())
    assert code_and_field(error) == (ErrorCode.UNKNOWN_PRODUCT, "productIdent")


@pytest.mark.parametrize("product_type", ["CREDITS", "FLAT_FEE", None])
def test_unknown_product_when_not_usage_based(product_type: str | None) -> None:
    product = ProductItem(id=1, reference="voice.uk", type=product_type, status="ACTIVE")
    error = refusal(usage(), snapshot(products=[product]))
    assert code_and_field(error) == (ErrorCode.UNKNOWN_PRODUCT, "productIdent")


def test_unknown_product_when_archived() -> None:
    product = ProductItem(id=1, reference="voice.uk", type="USAGE_BASED", status="ARCHIVED")
    error = refusal(usage(), snapshot(products=[product]))
    assert code_and_field(error) == (ErrorCode.UNKNOWN_PRODUCT, "productIdent")


def test_product_reference_match_is_exact() -> None:
    assert refusal(usage(productIdent="VOICE.UK"), snapshot()).code == ErrorCode.UNKNOWN_PRODUCT


# --- step 2: contract given ------------------------------------------------------------------


def test_unknown_contract() -> None:
    error = refusal(usage(contractId=999), snapshot())
    assert code_and_field(error) == (ErrorCode.UNKNOWN_CONTRACT, "contractId")


@pytest.mark.parametrize(
    ("start", "end", "day"),
    [
        pytest.param(date(2026, 11, 23), None, DAY, id="day-before-start"),
        pytest.param(date(2026, 1, 1), date(2026, 11, 21), DAY, id="day-after-end"),
        pytest.param(date(2027, 1, 1), date(2027, 12, 31), DAY, id="period-in-future"),
    ],
)
def test_contract_not_active(start: date, end: date | None, day: date) -> None:
    snap = snapshot(contracts=[contract(start=start, end=end)])
    error = refusal(usage(), snap, day)
    assert code_and_field(error) == (ErrorCode.CONTRACT_NOT_ACTIVE, "contractId")


@pytest.mark.parametrize(
    ("start", "end"),
    [
        pytest.param(DAY, None, id="start-day-itself"),
        pytest.param(date(2026, 1, 1), DAY, id="end-day-itself"),
        pytest.param(DAY, DAY, id="one-day-contract"),
    ],
)
def test_contract_active_on_its_boundary_days(start: date, end: date | None) -> None:
    snap = snapshot(
        contracts=[contract(start=start, end=end)], inventories=[inventory(start=date(2000, 1, 1))]
    )
    assert resolved(usage(), snap).contract.id == 7


def test_contract_id_given_ignores_debtor_id() -> None:
    snap = snapshot(contracts=[contract(id=7, debtor_id=3), contract(id=8, debtor_id=4)])
    assert resolved(usage(contractId=7, debtorId=4), snap).contract.id == 7


def test_contract_id_given_does_not_fall_back_to_debtor() -> None:
    snap = snapshot(contracts=[contract(id=8, debtor_id=3)])
    error = refusal(usage(contractId=7, debtorId=3), snap)
    assert error.code == ErrorCode.UNKNOWN_CONTRACT


# --- step 2: by debtor ---------------------------------------------------------------------


def test_by_debtor_picks_the_contract_of_that_debtor() -> None:
    snap = snapshot(
        contracts=[
            contract(id=7, debtor_id=3, site_id=100),
            contract(id=8, debtor_id=4, site_id=200),
        ],
        inventories=[inventory(id=11, site_id=100), inventory(id=12, site_id=200)],
    )
    result = resolved(by_debtor(4), snap)
    assert (result.contract.id, result.inventory.id) == (8, 12)


def test_by_debtor_newest_contract_by_start_date() -> None:
    snap = snapshot(
        contracts=[
            contract(id=9, site_id=100, start=date(2025, 1, 1)),
            contract(id=7, site_id=200, start=date(2026, 6, 1)),
            contract(id=8, site_id=300, start=date(2026, 3, 1)),
        ],
        inventories=[inventory(id=10 + s, site_id=s * 100) for s in (1, 2, 3)],
    )
    result = resolved(by_debtor(), snap)
    assert (result.contract.id, result.inventory.id) == (7, 12)


def test_by_debtor_same_start_date_highest_id_wins() -> None:
    snap = snapshot(
        contracts=[contract(id=8, site_id=100), contract(id=9, site_id=200), contract(id=7)],
        inventories=[inventory(id=11, site_id=100), inventory(id=12, site_id=200)],
    )
    assert resolved(by_debtor(), snap).contract.id == 9


def test_by_debtor_newer_contract_without_inventory_is_skipped() -> None:
    snap = snapshot(
        contracts=[
            contract(id=7, site_id=100, start=date(2026, 1, 1)),
            contract(id=8, site_id=200, start=date(2026, 6, 1)),  # newer, no inventory
        ],
        inventories=[inventory(id=11, site_id=100)],
    )
    result = resolved(by_debtor(), snap)
    assert (result.contract.id, result.inventory.id) == (7, 11)


def test_by_debtor_newer_contract_with_inventory_for_another_product_is_skipped() -> None:
    snap = snapshot(
        contracts=[
            contract(id=7, site_id=100, start=date(2026, 1, 1)),
            contract(id=8, site_id=200, start=date(2026, 6, 1)),
        ],
        inventories=[
            inventory(id=11, site_id=100),
            inventory(id=12, site_id=200, product_id=OTHER_PRODUCT.id),
        ],
    )
    assert resolved(by_debtor(), snap).contract.id == 7


def test_by_debtor_newer_contract_whose_inventory_is_not_active_is_skipped() -> None:
    snap = snapshot(
        contracts=[
            contract(id=7, site_id=100, start=date(2026, 1, 1)),
            contract(id=8, site_id=200, start=date(2026, 6, 1)),
        ],
        inventories=[
            inventory(id=11, site_id=100),
            inventory(id=12, site_id=200, start=date(2026, 12, 1)),
        ],
    )
    assert resolved(by_debtor(), snap).contract.id == 7


@pytest.mark.parametrize(
    ("start", "end"),
    [
        pytest.param(date(2026, 11, 23), None, id="starts-after-day"),
        pytest.param(date(2026, 6, 1), date(2026, 11, 21), id="ended-before-day"),
    ],
)
def test_by_debtor_newer_contract_not_active_is_skipped(start: date, end: date | None) -> None:
    snap = snapshot(
        contracts=[contract(id=7, site_id=100), contract(id=8, site_id=200, start=start, end=end)],
        inventories=[inventory(id=11, site_id=100), inventory(id=12, site_id=200)],
    )
    assert resolved(by_debtor(), snap).contract.id == 7


@pytest.mark.parametrize(
    ("start", "end"),
    [
        pytest.param(DAY, None, id="start-day-itself"),
        pytest.param(date(2026, 6, 1), DAY, id="end-day-itself"),
    ],
)
def test_by_debtor_contract_active_on_boundary_days(start: date, end: date | None) -> None:
    snap = snapshot(contracts=[contract(start=start, end=end)])
    assert resolved(by_debtor(), snap).contract.id == 7


def test_no_matching_contract_when_debtor_has_none() -> None:
    error = refusal(by_debtor(4), snapshot())
    assert code_and_field(error) == (ErrorCode.NO_MATCHING_CONTRACT, "debtorId")


def test_no_matching_contract_when_no_contract_is_active() -> None:
    snap = snapshot(
        contracts=[contract(end=date(2026, 11, 21)), contract(id=8, start=date(2027, 1, 1))]
    )
    error = refusal(by_debtor(), snap)
    assert code_and_field(error) == (ErrorCode.NO_MATCHING_CONTRACT, "debtorId")


def test_no_matching_contract_when_active_contracts_have_no_inventory() -> None:
    """By debtor, a missing inventory is NO_MATCHING_CONTRACT, not NO_INVENTORY."""
    error = refusal(by_debtor(), snapshot(inventories=[]))
    assert code_and_field(error) == (ErrorCode.NO_MATCHING_CONTRACT, "debtorId")


# --- step 3: inventory record ----------------------------------------------------------------


def test_no_inventory_at_all() -> None:
    error = refusal(usage(), snapshot(inventories=[]))
    assert code_and_field(error) == (ErrorCode.NO_INVENTORY, "productIdent")


def test_no_inventory_on_the_contract_site() -> None:
    error = refusal(usage(), snapshot(inventories=[inventory(site_id=200)]))
    assert error.code == ErrorCode.NO_INVENTORY


def test_no_inventory_for_the_product() -> None:
    error = refusal(usage(), snapshot(inventories=[inventory(product_id=OTHER_PRODUCT.id)]))
    assert error.code == ErrorCode.NO_INVENTORY


@pytest.mark.parametrize(
    ("start", "end"),
    [
        pytest.param(date(2026, 11, 23), None, id="starts-day-after"),
        pytest.param(date(2026, 1, 1), date(2026, 11, 21), id="ended-day-before"),
    ],
)
def test_no_inventory_active_on_the_day(start: date, end: date | None) -> None:
    error = refusal(usage(), snapshot(inventories=[inventory(start=start, end=end)]))
    assert error.code == ErrorCode.NO_INVENTORY


@pytest.mark.parametrize(
    ("start", "end"),
    [
        pytest.param(DAY, None, id="start-day-itself"),
        pytest.param(date(2026, 1, 1), DAY, id="end-day-itself"),
        pytest.param(DAY, DAY, id="one-day"),
    ],
)
def test_inventory_active_on_its_boundary_days(start: date, end: date | None) -> None:
    assert (
        resolved(usage(), snapshot(inventories=[inventory(start=start, end=end)])).inventory.id
        == 11
    )


def test_several_inventories_latest_start_date_wins() -> None:
    inventories = [
        inventory(id=13, start=date(2025, 1, 1)),
        inventory(id=11, start=date(2026, 6, 1)),
        inventory(id=12, start=date(2026, 3, 1)),
    ]
    assert resolved(usage(), snapshot(inventories=inventories)).inventory.id == 11


def test_several_inventories_same_start_date_highest_id_wins() -> None:
    inventories = [inventory(id=12), inventory(id=14), inventory(id=13)]
    assert resolved(usage(), snapshot(inventories=inventories)).inventory.id == 14


def test_several_inventories_only_active_ones_count() -> None:
    inventories = [
        inventory(id=11, start=date(2026, 1, 1)),
        inventory(id=12, start=date(2026, 6, 1), end=date(2026, 11, 21)),  # ended
        inventory(id=13, start=date(2026, 11, 23)),  # not started
    ]
    assert resolved(usage(), snapshot(inventories=inventories)).inventory.id == 11


# --- the usage day ---------------------------------------------------------------------------


def validated(start: str, end: str) -> ValidEvent:
    obj = {
        "externalReference": "ref-1",
        "contractId": 7,
        "productIdent": "voice.uk",
        "startDate": start,
        "endDate": end,
    }
    result = validate_record(json.dumps(obj).encode(), 65536)
    assert isinstance(result, ValidEvent), result
    return result


@pytest.mark.parametrize(
    ("start", "day"),
    [
        pytest.param("2026-11-22T23:30:00-02:00", date(2026, 11, 23), id="west-of-utc-next-day"),
        pytest.param(
            "2026-11-23T00:30:00+02:00", date(2026, 11, 22), id="east-of-utc-previous-day"
        ),
        pytest.param("2026-11-22T23:59:59.999999Z", date(2026, 11, 22), id="last-microsecond"),
        pytest.param("2026-11-23T00:00:00Z", date(2026, 11, 23), id="midnight"),
        pytest.param("2026-11-22T23:30:00", date(2026, 11, 22), id="no-offset-is-utc"),
    ],
)
def test_usage_day_is_the_utc_date_of_start_date(start: str, day: date) -> None:
    assert validated(start, "2026-11-24T00:00:00Z").usage_date == day


def test_usage_placed_on_its_utc_day_for_contract_activity() -> None:
    """23:30 at -02:00 on the 22nd is the 23rd: a contract starting the 23rd applies."""
    valid = validated("2026-11-22T23:30:00-02:00", "2026-11-23T02:00:00Z")
    starts_23rd = snapshot(contracts=[contract(start=date(2026, 11, 23))])
    ends_22nd = snapshot(contracts=[contract(end=date(2026, 11, 22))])
    assert resolved(valid.event, starts_23rd, valid.usage_date).contract.id == 7
    error = refusal(valid.event, ends_22nd, valid.usage_date)
    assert error.code == ErrorCode.CONTRACT_NOT_ACTIVE


# --- ReferenceKeys -------------------------------------------------------------------------


def test_reference_keys_for_events() -> None:
    events = [
        (usage(contractId=7, debtorId=3, operatingSite="GB-LON"), date(2026, 11, 22)),
        (by_debtor(4, productIdent="sms.uk"), date(2026, 11, 20)),
        (usage(contractId=8, productIdent="voice.uk", operatingSite="DE-BER"), date(2026, 11, 25)),
        (by_debtor(5), date(2026, 11, 21)),
    ]
    keys = ReferenceKeys.for_events(events)
    # Products go with what addresses them: inventories are fetched for these pairs only.
    assert keys.contract_products == {(7, "voice.uk"), (8, "voice.uk")}
    assert keys.debtor_products == {(4, "sms.uk"), (5, "voice.uk")}
    assert keys.product_references == {"voice.uk", "sms.uk"}
    assert keys.contract_ids == {7, 8}
    # debtorId of an event with a contractId is ignored (§3): debtor 3 is not fetched.
    assert keys.debtor_ids == {4, 5}
    assert keys.operating_sites == {"GB-LON", "DE-BER"}
    assert (keys.first_day, keys.last_day) == (date(2026, 11, 20), date(2026, 11, 25))


def test_reference_keys_for_a_single_event() -> None:
    keys = ReferenceKeys.for_events([(usage(), DAY)])
    assert keys.product_references == {"voice.uk"}
    assert keys.contract_ids == {7}
    assert keys.debtor_ids == frozenset()
    assert keys.operating_sites == frozenset()
    assert keys.first_day == keys.last_day == DAY


def test_reference_keys_for_no_events() -> None:
    keys = ReferenceKeys.for_events([])
    assert keys.product_references == keys.contract_ids == keys.debtor_ids == frozenset()
    assert keys.operating_sites == frozenset()
