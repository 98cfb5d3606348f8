"""Resolution of a usage's contract or debtor to an inventory record (SPEC.md §4).

Pure: works on a `ReferenceSnapshot` the store fetched for the batch. Decides
UNKNOWN_OPERATING_SITE, UNKNOWN_PRODUCT, UNKNOWN_CONTRACT, CONTRACT_NOT_ACTIVE,
NO_MATCHING_CONTRACT and NO_INVENTORY.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from typing import NamedTuple

from usage_ingest.domain.events import UsageEvent
from usage_ingest.domain.messages import OutcomeError
from usage_ingest.errors import ErrorCode

USAGE_BASED = "USAGE_BASED"
ACTIVE = "ACTIVE"


# NamedTuples: a batch's reference data is hundreds of these, built anew for every batch.
class ProductItem(NamedTuple):
    id: int
    reference: str
    type: str | None
    status: str


class Contract(NamedTuple):
    id: int
    debtor_id: int
    site_id: int
    start_date: date
    end_date: date | None

    def active_on(self, day: date) -> bool:
        return _active(self.start_date, self.end_date, day)


class Inventory(NamedTuple):
    id: int
    site_id: int
    usage_product_id: int
    start_date: date
    end_date: date | None
    billable: bool

    def active_on(self, day: date) -> bool:
        return _active(self.start_date, self.end_date, day)


def _active(start: date, end: date | None, day: date) -> bool:
    """Active on `day`: started on or before it, and not ended before it (§4)."""
    return start <= day and (end is None or day <= end)


@dataclass(frozen=True, slots=True)
class ReferenceKeys:
    """What a batch needs from the reference data: the store fetches just that.

    Products are named in pairs with what addresses the usage (its contract, or else its
    debtor), so that only the inventory records of those pairs are fetched, not those
    of every product of the batch on every site it touches.
    """

    contract_products: frozenset[tuple[int, str]]
    debtor_products: frozenset[tuple[int, str]]
    operating_sites: frozenset[str]
    first_day: date
    last_day: date

    @property
    def product_references(self) -> frozenset[str]:
        return frozenset(p for _, p in self.contract_products) | frozenset(
            p for _, p in self.debtor_products
        )

    @property
    def contract_ids(self) -> frozenset[int]:
        return frozenset(c for c, _ in self.contract_products)

    @property
    def debtor_ids(self) -> frozenset[int]:
        return frozenset(d for d, _ in self.debtor_products)

    @classmethod
    def for_events(cls, events: Iterable[tuple[UsageEvent, date]]) -> ReferenceKeys:
        by_contract: set[tuple[int, str]] = set()
        by_debtor: set[tuple[int, str]] = set()
        sites: set[str] = set()
        days: set[date] = set()
        for event, day in events:
            days.add(day)
            if event.contract_id is not None:
                by_contract.add((event.contract_id, event.product_ident))
            elif event.debtor_id is not None:  # the debtor counts only without a contract (§3)
                by_debtor.add((event.debtor_id, event.product_ident))
            if event.operating_site is not None:
                sites.add(event.operating_site)
        return cls(
            frozenset(by_contract),
            frozenset(by_debtor),
            frozenset(sites),
            min(days, default=date.min),
            max(days, default=date.min),
        )


@dataclass(slots=True)
class ReferenceSnapshot:
    """The reference data relevant to one batch, indexed for resolution."""

    operating_sites: frozenset[str] = frozenset()
    products_by_reference: dict[str, ProductItem] = field(default_factory=dict)
    contracts_by_id: dict[int, Contract] = field(default_factory=dict)
    contracts_by_debtor: dict[int, list[Contract]] = field(default_factory=dict)
    inventories_by_site_product: dict[tuple[int, int], list[Inventory]] = field(
        default_factory=dict
    )

    @classmethod
    def build(
        cls,
        operating_sites: Iterable[str],
        products: Iterable[ProductItem],
        contracts: Iterable[Contract],
        inventories: Iterable[Inventory],
    ) -> ReferenceSnapshot:
        snapshot = cls(operating_sites=frozenset(operating_sites))
        for product in products:
            snapshot.products_by_reference[product.reference] = product
        for contract in contracts:
            snapshot.contracts_by_id[contract.id] = contract
            snapshot.contracts_by_debtor.setdefault(contract.debtor_id, []).append(contract)
        for inventory in inventories:
            key = (inventory.site_id, inventory.usage_product_id)
            snapshot.inventories_by_site_product.setdefault(key, []).append(inventory)
        return snapshot


class Resolution(NamedTuple):  # one per valid record: a tuple is cheaper to make
    """Where a usage belongs: what the stored row carries (§4 step 4)."""

    product: ProductItem
    contract: Contract
    inventory: Inventory


def _refusal(code: ErrorCode, field: str, message: str) -> OutcomeError:
    return OutcomeError(code=code, field=field, message=message)


def _newest(candidates: list[Inventory]) -> Inventory | None:
    """Latest start_date, then highest id (§4)."""
    if len(candidates) == 1:  # the common case
        return candidates[0]
    return max(candidates, key=lambda c: (c.start_date, c.id), default=None)


def find_inventory(
    snapshot: ReferenceSnapshot, contract: Contract, product: ProductItem, day: date
) -> Inventory | None:
    """§4 step 3: the contract site's inventory record for the product, active on `day`."""
    records = snapshot.inventories_by_site_product.get((contract.site_id, product.id), ())
    return _newest([r for r in records if r.active_on(day)])


def resolve(event: UsageEvent, day: date, snapshot: ReferenceSnapshot) -> Resolution | OutcomeError:
    """Resolve one validated event placed on calendar day `day` (UTC date of startDate)."""
    if event.operating_site is not None and event.operating_site not in snapshot.operating_sites:
        return _refusal(
            ErrorCode.UNKNOWN_OPERATING_SITE,
            "operatingSite",
            f"operating site {event.operating_site!r} is not one of the predefined sites",
        )
    product = snapshot.products_by_reference.get(event.product_ident)
    if product is None or product.type != USAGE_BASED or product.status != ACTIVE:
        return _refusal(ErrorCode.UNKNOWN_PRODUCT, "productIdent", _product_problem(event, product))
    if event.contract_id is not None:
        return _resolve_by_contract(event.contract_id, product, day, snapshot)
    assert event.debtor_id is not None  # validation guarantees one of the two
    return _resolve_by_debtor(event.debtor_id, product, day, snapshot)


def _product_problem(event: UsageEvent, product: ProductItem | None) -> str:
    if product is None:
        return f"no product item has reference {event.product_ident!r}"
    if product.type != USAGE_BASED:
        return f"product item {event.product_ident!r} is {product.type}, not {USAGE_BASED}"
    return f"product item {event.product_ident!r} is {product.status}"


def _resolve_by_contract(
    contract_id: int, product: ProductItem, day: date, snapshot: ReferenceSnapshot
) -> Resolution | OutcomeError:
    contract = snapshot.contracts_by_id.get(contract_id)
    if contract is None:
        return _refusal(
            ErrorCode.UNKNOWN_CONTRACT, "contractId", f"contract {contract_id} does not exist"
        )
    if not contract.active_on(day):
        return _refusal(
            ErrorCode.CONTRACT_NOT_ACTIVE,
            "contractId",
            f"contract {contract_id} is not active on {day.isoformat()}",
        )
    inventory = find_inventory(snapshot, contract, product, day)
    if inventory is None:
        return _refusal(
            ErrorCode.NO_INVENTORY,
            "productIdent",
            f"site {contract.site_id} of contract {contract_id} has no inventory record "
            f"for {product.reference!r} active on {day.isoformat()}",
        )
    return Resolution(product, contract, inventory)


def _resolve_by_debtor(
    debtor_id: int, product: ProductItem, day: date, snapshot: ReferenceSnapshot
) -> Resolution | OutcomeError:
    """§4 step 2 by debtor: the newest active contract that has a matching inventory."""
    matches = []
    for contract in snapshot.contracts_by_debtor.get(debtor_id, ()):
        if contract.active_on(day):
            inventory = find_inventory(snapshot, contract, product, day)
            if inventory is not None:
                matches.append(Resolution(product, contract, inventory))
    if not matches:
        return _refusal(
            ErrorCode.NO_MATCHING_CONTRACT,
            "debtorId",
            f"debtor {debtor_id} has no contract active on {day.isoformat()} "
            f"with an inventory record for {product.reference!r}",
        )
    return max(matches, key=lambda m: (m.contract.start_date, m.contract.id))
