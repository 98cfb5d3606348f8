"""The benchmark's workload: reference data and a seeded stream of usage events.

Reference data (the same for every measurement of a run, from `--seed`): 2000 debtors,
each with its own site and 1-4 contracts (about 4500 contracts, some ended); 300
usage-based products (plus a few flat-fee and archived ones) with a skewed popularity;
each site has inventory records for 3-8 products (about 11000 records, some with an
older, ended predecessor), each with one product reference.

The event stream, per 100 events on average: 90 valid events (80% naming a contract,
20% a debtor), 5 exact re-deliveries of a recent valid event (same key and bytes: the
outcome is `duplicate`), and 5 refused ones of mixed kinds (malformed JSON, not an
object, schema violations, too large, unknown product/contract/site, contract not
active, no inventory, no matching contract, externalReference conflict). Each event
knows the outcome it must get, so every run checks the worker's answers too.

The stream is deterministic for a seed and a prefix, and a shorter stream is a prefix
of a longer one: the first 100k events of a 1M backlog are the 100k backlog.
"""

from __future__ import annotations

import json
import random
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any, Final

from usage_ingest.domain.reference import (
    ContractIn,
    InventoryIn,
    ProductItemIn,
    ProductItemStatus,
    ProductItemType,
    ProductReferenceIn,
    ReferenceFile,
)

CREATED: Final = "created"
DUPLICATE: Final = "duplicate"
REJECTED: Final = "rejected"

VALID_SHARE: Final = 0.90
REDELIVERY_SHARE: Final = 0.05
# The refused 5%: kind -> (relative weight, expected error code).
INVALID_KINDS: Final[dict[str, tuple[int, str]]] = {
    "malformed_json": (10, "MALFORMED_MESSAGE"),
    "not_an_object": (3, "MALFORMED_MESSAGE"),
    "bad_quantity": (12, "SCHEMA_VIOLATION"),
    "missing_product": (10, "SCHEMA_VIOLATION"),
    "end_before_start": (8, "SCHEMA_VIOLATION"),
    "too_large": (1, "MESSAGE_TOO_LARGE"),
    "unknown_product": (10, "UNKNOWN_PRODUCT"),
    "unknown_contract": (10, "UNKNOWN_CONTRACT"),
    "contract_not_active": (8, "CONTRACT_NOT_ACTIVE"),
    "no_inventory": (10, "NO_INVENTORY"),
    "no_matching_contract": (6, "NO_MATCHING_CONTRACT"),
    "unknown_operating_site": (6, "UNKNOWN_OPERATING_SITE"),
    "conflict": (6, "EXTERNAL_REFERENCE_CONFLICT"),
}
MAX_MESSAGE_BYTES: Final = 65536
USAGE_BASED: Final = ProductItemType.USAGE_BASED
FLAT_FEE: Final = ProductItemType.FLAT_FEE
ARCHIVED: Final = ProductItemStatus.ARCHIVED  # the worker's default max_message_bytes

_OPERATING_SITES: Final = tuple(
    f"{country}-{city}"
    for country, city in (
        ("GB", "LON"),
        ("GB", "MAN"),
        ("DE", "BER"),
        ("DE", "FRA"),
        ("FR", "PAR"),
        ("NL", "AMS"),
        ("ES", "MAD"),
        ("IT", "MIL"),
        ("SE", "STO"),
        ("PL", "WAW"),
    )
)
_COUNTRIES: Final = ("GB", "DE", "FR", "NL", "ES", "IT", "SE", "PL", "GBR", "DEU", "FRA", "USA")
_CITIES: Final = ("London", "Berlin", "Paris", "Amsterdam", "Madrid", "Milan", "Stockholm")
_UNITS: Final = ("minute", "second", "megabyte", "call", "sms", "request")
_EVENT_DAYS: Final = (date(2026, 1, 5), date(2026, 11, 20))
_CURRENT_INVENTORY_START: Final = date(2025, 6, 1)
_RECENT_POOL: Final = 10_000


@dataclass(frozen=True, slots=True)
class ContractSpec:
    id: int
    debtor_id: int
    site_id: int
    start: date
    end: date | None


@dataclass(frozen=True, slots=True)
class ReferenceModel:
    """The generated reference data, and the indexes the event stream draws from."""

    operating_sites: tuple[str, ...]
    products: tuple[str, ...]  # usage-based and active; popularity falls with the index
    unusable_products: tuple[str, ...]  # flat-fee or archived: UNKNOWN_PRODUCT
    active_contracts: tuple[ContractSpec, ...]
    ended_contracts: tuple[ContractSpec, ...]
    site_products: dict[int, tuple[str, ...]]  # products with an active inventory record
    reference_file: ReferenceFile

    @property
    def debtor_sites(self) -> dict[int, int]:
        return {c.debtor_id: c.site_id for c in self.active_contracts}

    def summary(self) -> dict[str, int]:
        data = self.reference_file
        return {
            "debtors": len(self.debtor_sites),
            "contracts": len(data.contracts),
            "activeContracts": len(self.active_contracts),
            "productItems": len(data.product_items),
            "usageBasedProducts": len(self.products),
            "inventoryRecords": len(data.usage_product_inventories),
            "operatingSites": len(data.operating_sites),
        }


def build_reference(seed: int, *, debtors: int = 2000, products: int = 300) -> ReferenceModel:
    """Reference data of the shape described in the module docstring, from `seed`."""
    rng = random.Random(f"{seed}/reference")  # noqa: S311 - a reproducible workload, not secrets
    product_refs = tuple(f"prod.{i:03d}" for i in range(1, products + 1))
    weights = [1 / (i + 1) ** 0.8 for i in range(products)]
    items = [
        ProductItemIn(id=i + 1, reference=ref, name=f"Product {i + 1}", type=USAGE_BASED)
        for i, ref in enumerate(product_refs)
    ]
    unusable = []
    for i in range(5):
        flat, archived = f"flat.{i}", f"archived.{i}"
        items.append(ProductItemIn(id=products + 1 + 2 * i, reference=flat, type=FLAT_FEE))
        items.append(
            ProductItemIn(
                id=products + 2 + 2 * i, reference=archived, type=USAGE_BASED, status=ARCHIVED
            )
        )
        unusable += [flat, archived]

    contracts: list[ContractIn] = []
    active: list[ContractSpec] = []
    ended: list[ContractSpec] = []
    inventories: list[InventoryIn] = []
    site_products: dict[int, tuple[str, ...]] = {}
    for debtor in range(1, debtors + 1):
        site = 100_000 + debtor
        for n in range(rng.choice((1, 1, 2, 2, 2, 3, 3, 4))):
            start = date(2024, 1, 1) + timedelta(days=rng.randrange(365))
            # The first contract of a debtor is always open; a later one ended in 2025
            # about a third of the time (resolution by debtor must skip it).
            end = date(2025, 6, 30) if n and _chance(rng, 0.35) else None
            spec = ContractSpec(len(contracts) + 1, debtor, site, start, end)
            contracts.append(
                ContractIn(
                    id=spec.id, debtor_id=debtor, site_id=site, start_date=start, end_date=end
                )
            )
            (active if end is None else ended).append(spec)
        chosen: set[int] = set()
        wanted = rng.randint(3, 8)
        while len(chosen) < wanted:
            chosen.add(rng.choices(range(products), weights)[0])
        site_products[site] = tuple(product_refs[i] for i in sorted(chosen))
        for index in sorted(chosen):
            if _chance(rng, 0.2):  # an older record of the same site and product, ended
                inventories.append(
                    _inventory(len(inventories) + 1, site, index + 1, date(2024, 1, 1), True)
                )
            inventories.append(
                _inventory(
                    len(inventories) + 1,
                    site,
                    index + 1,
                    _CURRENT_INVENTORY_START,
                    _chance(rng, 0.95),
                    open_ended=True,
                )
            )
    reference_file = ReferenceFile(
        operating_sites=list(_OPERATING_SITES),
        product_items=items,
        contracts=contracts,
        usage_product_inventories=inventories,
    )
    return ReferenceModel(
        operating_sites=_OPERATING_SITES,
        products=product_refs,
        unusable_products=tuple(unusable),
        active_contracts=tuple(active),
        ended_contracts=tuple(ended),
        site_products=site_products,
        reference_file=reference_file,
    )


def _inventory(
    inventory_id: int,
    site: int,
    product_id: int,
    start: date,
    billable: bool,
    *,
    open_ended: bool = False,
) -> InventoryIn:
    return InventoryIn(
        id=inventory_id,
        site_id=site,
        usage_product_id=product_id,
        start_date=start,
        end_date=None if open_ended else date(2025, 5, 31),
        billable=billable,
        product_references=[
            ProductReferenceIn(product_reference=f"4420{inventory_id:08d}", primary=True)
        ],
    )


@dataclass(frozen=True, slots=True)
class BenchEvent:
    """One input record and the outcome the worker must give it."""

    key: bytes | None
    value: bytes
    kind: str
    expected: str  # created, duplicate or rejected
    code: str | None = None  # the expected error code of a refused event


@dataclass(slots=True)
class Tally:
    """What a stream produced: counts by kind and by expected outcome."""

    events: int = 0
    value_bytes: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    by_outcome: Counter[str] = field(default_factory=Counter)
    by_code: Counter[str] = field(default_factory=Counter)

    def add(self, event: BenchEvent) -> None:
        self.events += 1
        self.value_bytes += len(event.value)
        self.by_kind[event.kind] += 1
        self.by_outcome[event.expected] += 1
        if event.code:
            self.by_code[event.code] += 1

    def as_json(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "meanValueBytes": round(self.value_bytes / max(self.events, 1), 1),
            "expectedOutcomes": dict(sorted(self.by_outcome.items())),
            "byKind": dict(sorted(self.by_kind.items())),
            "expectedCodes": dict(sorted(self.by_code.items())),
        }


@dataclass(slots=True)
class _Recent:
    key: bytes
    value: bytes
    body: dict[str, Any]


class EventStream:
    """A deterministic stream of `BenchEvent`s for `model`, `seed` and `prefix` (the
    externalReference prefix, so streams of one run never share a reference)."""

    def __init__(self, model: ReferenceModel, seed: int, prefix: str) -> None:
        self._model = model
        self._rng = random.Random(f"{seed}/events/{prefix}")  # noqa: S311 - reproducible workload
        self._prefix = prefix
        self._sequence = 0
        self._recent: deque[_Recent] = deque(maxlen=_RECENT_POOL)
        self._product_weights = [1 / (i + 1) ** 0.8 for i in range(len(model.products))]
        kinds = list(INVALID_KINDS)
        self._invalid_kinds = kinds
        self._invalid_weights = [INVALID_KINDS[k][0] for k in kinds]
        self._debtors = sorted(model.debtor_sites.items())

    def __iter__(self) -> Iterator[BenchEvent]:
        while True:
            yield self.next_event()

    def take(self, count: int) -> Iterator[BenchEvent]:
        for _ in range(count):
            yield self.next_event()

    def next_event(self) -> BenchEvent:
        draw = self._rng.random()
        if draw < VALID_SHARE or not self._recent:
            return self._valid()
        if draw < VALID_SHARE + REDELIVERY_SHARE:
            recent = self._recent[self._rng.randrange(len(self._recent))]
            return BenchEvent(recent.key, recent.value, "redelivery", DUPLICATE)
        kind = self._rng.choices(self._invalid_kinds, self._invalid_weights)[0]
        return self._invalid(kind)

    # --- valid events ---------------------------------------------------------------

    def _reference(self) -> str:
        self._sequence += 1
        return f"{self._prefix}-{self._sequence:09d}"

    def _valid(self) -> BenchEvent:
        body = self._body()
        key, value = _encode(body)
        self._recent.append(_Recent(key, value, body))
        return BenchEvent(key, value, "valid", CREATED)

    def _body(
        self, *, contract: ContractSpec | None = None, product: str | None = None
    ) -> dict[str, Any]:
        rng = self._rng
        by_debtor = contract is None and _chance(rng, 0.2)
        if contract is None:
            contract = rng.choice(self._model.active_contracts)
        if product is None:
            product = rng.choice(self._model.site_products[contract.site_id])
        day = _EVENT_DAYS[0] + timedelta(days=rng.randrange((_EVENT_DAYS[1] - _EVENT_DAYS[0]).days))
        start = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(
            seconds=rng.randrange(86_000)
        )
        end = start + timedelta(seconds=rng.randrange(1, 3600))
        body: dict[str, Any] = {"externalReference": self._reference()}
        if by_debtor:
            body["debtorId"] = contract.debtor_id
        else:
            body["contractId"] = contract.id
        body["productIdent"] = product
        body["description"] = f"Call to +44 20 7946 {rng.randrange(10_000):04d}"
        body["startDate"] = _instant(start, rng)
        body["endDate"] = _instant(end, rng)
        if _chance(rng, 0.5):
            body["operatingSite"] = rng.choice(self._model.operating_sites)
        body["taxLocation"] = {
            "country": rng.choice(_COUNTRIES),
            "city": rng.choice(_CITIES),
            "postalCode": f"{rng.randrange(10_000, 99_999)}",
        }
        body["performanceLocation"] = {"country": rng.choice(_COUNTRIES)}
        if _chance(rng, 0.01):
            body["serviceCountry"] = "GB"  # deprecated: a warning on the outcome
        units = rng.sample(_UNITS, rng.choice((1, 1, 1, 2)))
        body["unitQuantities"] = [{"unit": unit, "quantity": self._quantity()} for unit in units]
        body["properties"] = [
            {"name": "callingNumber", "value": f"44{rng.randrange(10**9, 10**10)}"},
            {"name": "network", "value": rng.choice(("4G", "5G", "LTE-M"))},
        ]
        return body

    def _quantity(self) -> str | int | float:
        rng = self._rng
        match rng.randrange(3):
            case 0:
                return f"{rng.randrange(1, 100_000) / 100:.2f}"
            case 1:
                return rng.randrange(1, 10_000)
            case _:
                return rng.randrange(1, 1_000_000) / 1000

    # --- refused events ------------------------------------------------------------------

    def _invalid(self, kind: str) -> BenchEvent:
        rng = self._rng
        code = INVALID_KINDS[kind][1]
        body = self._body()
        if kind == "malformed_json":
            key, value = _encode(body)
            return BenchEvent(key, value[: rng.randrange(1, len(value) - 1)], kind, REJECTED, code)
        if kind == "not_an_object":
            return BenchEvent(b"no-reference", b'["not", "an", "object"]', kind, REJECTED, code)
        body = self._broken_body(kind, body)
        key, value = _encode(body)
        return BenchEvent(key, value, kind, REJECTED, code)

    def _broken_body(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        """The valid body changed into one refused for `kind` (one branch per kind)."""
        rng, model = self._rng, self._model
        if kind == "bad_quantity":
            body["unitQuantities"][0]["quantity"] = rng.choice(("-1", "abc", "1e400", "NaN"))
        elif kind == "missing_product":
            del body["productIdent"]
        elif kind == "end_before_start":
            body["startDate"], body["endDate"] = body["endDate"], body["startDate"]
        elif kind == "too_large":
            body["attachment"] = "x" * (MAX_MESSAGE_BYTES + 100)
        elif kind == "unknown_product":
            body["productIdent"] = rng.choice((*model.unusable_products, "prod.none"))
        elif kind == "unknown_contract":
            body.pop("debtorId", None)
            body["contractId"] = 90_000_000 + rng.randrange(1_000_000)
        elif kind == "contract_not_active":
            contract = rng.choice(model.ended_contracts)
            body = self._body(contract=contract)
        elif kind in ("no_inventory", "no_matching_contract"):
            contract = rng.choice(model.active_contracts)
            have = set(model.site_products[contract.site_id])
            product = rng.choice([p for p in model.products[:40] if p not in have])
            body = self._body(contract=contract, product=product)
            if kind == "no_matching_contract":
                del body["contractId"]
                body["debtorId"] = contract.debtor_id
        elif kind == "unknown_operating_site":
            body["operatingSite"] = "XX-NOWHERE"
        elif kind == "conflict":
            recent = self._recent[rng.randrange(len(self._recent))]
            body = json.loads(recent.value)
            body["unitQuantities"][0]["quantity"] = "424242.5"  # never drawn by _quantity
        return body


def _chance(rng: random.Random, probability: float) -> bool:
    return rng.random() < probability


def _instant(moment: datetime, rng: random.Random) -> str:
    """RFC 3339, mostly in UTC, sometimes with an offset (the same instant)."""
    if _chance(rng, 0.8):
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    return moment.astimezone(_PLUS_ONE).isoformat()


_PLUS_ONE: Final = timezone(timedelta(hours=1))


def _encode(body: dict[str, Any]) -> tuple[bytes, bytes]:
    reference = body.get("externalReference")
    key = reference.encode() if isinstance(reference, str) else b""
    return key, json.dumps(body, separators=(",", ":")).encode()
