"""The validated usage event (SPEC.md §3), as the rest of the service sees it.

Plain msgspec structs: building one checks nothing. `validation.validate_record` is
the only maker of a `UsageEvent`, so whoever holds one holds an event that passed
every rule of §3 that needs no reference data: dates are aware and in UTC, quantities
exact decimals, countries upper-case, defaults applied.

The length limits written on `Location` and `UsageProperty` are the rules of §3; they
apply when `validation`'s fast path decodes a record straight into these structs.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated

import msgspec

Text100NonEmpty = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
Text255 = Annotated[str, msgspec.Meta(max_length=255)]
Text1000 = Annotated[str, msgspec.Meta(max_length=1000)]


class Location(msgspec.Struct, frozen=True, gc=False, rename="camel"):
    """Where a usage is taxed or performed. The members are declared in sorted order:
    msgspec writes them in this order, which is the canonical text's (SPEC.md §6)."""

    city: Text255 | None = None
    country: str | None = None
    postal_code: Text255 | None = None
    region: Text255 | None = None


class UnitQuantity(msgspec.Struct, frozen=True, gc=False):
    unit: str
    quantity: Decimal


class UsageProperty(msgspec.Struct, frozen=True, gc=False):
    name: Text100NonEmpty
    value: Text1000


class UsageEvent(msgspec.Struct, frozen=True, gc=False):
    """A usage event that passed validation. Unknown fields of the record are not
    here: they are kept in the stored raw payload only."""

    external_reference: str
    product_ident: str
    start_date: datetime
    end_date: datetime
    contract_id: int | None = None
    debtor_id: int | None = None
    description: str | None = None
    operating_site: str | None = None
    tax_location: Location | None = None
    performance_location: Location | None = None
    service_country: str | None = None
    unit_quantities: tuple[UnitQuantity, ...] | None = None
    properties: tuple[UsageProperty, ...] | None = None
