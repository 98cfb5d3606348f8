"""The fast path of `validation`: a record decoded by msgspec straight into the validated
event, in C, reading each quantity exactly from its text, with the rules of SPEC.md §3
that msgspec's types cannot say (dates, countries, decimal digits) applied after.

It takes the common record and gives up, returning None, on anything unusual: a `\\u`
escape, a repeated key, a broken rule. `validation`'s exact path then decides and
explains. The rules across fields are `validation`'s, applied to what this returns.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Annotated

import msgspec
import orjson

from usage_ingest.events import (
    Location,
    Text255,
    Text1000,
    UnitQuantity,
    UsageEvent,
    UsageProperty,
)
from usage_ingest.models import (
    ID_MAX,
    ID_MIN,
    IDENT_PATTERN,
    country_code,
    parse_date_time,
    parse_quantity,
)

# `$` would also match before a final newline in Python's `re`, which msgspec uses.
_Ident = Annotated[str, msgspec.Meta(pattern=IDENT_PATTERN.removesuffix("$") + r"\Z")]
_Id = Annotated[int, msgspec.Meta(ge=ID_MIN, le=ID_MAX)]


class _UnitQuantityIn(msgspec.Struct, frozen=True, gc=False):
    unit: _Ident
    quantity: msgspec.Raw  # its JSON text: a number and a numeric string obey other rules


class _EventIn(msgspec.Struct, frozen=True, gc=False, rename="camel"):
    """A record as the fast path decodes it: dates and quantities still as written."""

    external_reference: _Ident
    product_ident: _Ident
    start_date: str
    end_date: str
    contract_id: _Id | None = None
    debtor_id: _Id | None = None
    description: Text1000 | None = None
    operating_site: Text255 | None = None
    tax_location: Location | None = None
    performance_location: Location | None = None
    service_country: str | None = None
    unit_quantities: list[_UnitQuantityIn] | None = None
    properties: tuple[UsageProperty, ...] | None = None


_FAST_DECODER = msgspec.json.Decoder(_EventIn)


def _repeats_a_key(value: bytes) -> bool:
    """Whether an object of the record repeats a key (or this cannot tell), without a
    Python hook per object: decoded last-wins and written again, the record loses at
    least the ':' of each repeated key, and no string changes its count of ':'."""
    try:
        again = orjson.dumps(orjson.loads(value))
    except (orjson.JSONDecodeError, orjson.JSONEncodeError):
        return True
    return again.count(b":") != value.count(b":")


def _event_of(incoming: _EventIn) -> UsageEvent:
    """The rules msgspec's types cannot say; ValueError where one is broken."""
    quantities = incoming.unit_quantities
    return UsageEvent(
        external_reference=incoming.external_reference,
        product_ident=incoming.product_ident,
        start_date=parse_date_time(incoming.start_date),
        end_date=parse_date_time(incoming.end_date),
        contract_id=incoming.contract_id,
        debtor_id=incoming.debtor_id,
        description=incoming.description,
        operating_site=incoming.operating_site,
        tax_location=_with_country_code(incoming.tax_location),
        performance_location=_with_country_code(incoming.performance_location),
        service_country=None
        if incoming.service_country is None
        else country_code(incoming.service_country),
        unit_quantities=None
        if quantities is None
        else tuple([UnitQuantity(q.unit, _quantity(q.quantity)) for q in quantities]),
        properties=incoming.properties,
    )


def _with_country_code(location: Location | None) -> Location | None:
    if location is None or location.country is None:
        return location
    code = country_code(location.country)
    return location if code == location.country else msgspec.structs.replace(location, country=code)


# A quantity already in normal form and within the digit limits: 18 digits at most
# before the point, 12 after, no trailing fractional zero. Decimal reads it as it is.
_PLAIN_QUANTITY = re.compile(rb'"?[0-9]{1,18}(\.[0-9]{0,11}[1-9])?"?')


def _quantity(raw: msgspec.Raw) -> Decimal:
    text = bytes(raw)
    if _PLAIN_QUANTITY.fullmatch(text):  # msgspec checked any quotes pair up
        return Decimal(text.strip(b'"').decode())
    if text.startswith(b'"'):  # a numeric string; an escape in it is the exact path's
        if b"\\" in text:
            raise ValueError("an escaped numeric string")
        return parse_quantity(text[1:-1].decode())
    try:
        number = Decimal(text.decode())  # a JSON number (or null, true...: refused)
    except InvalidOperation:
        raise ValueError("not a number Decimal can hold") from None
    return parse_quantity(number)


def decode_common_event(value: bytes) -> tuple[UsageEvent, str] | None:
    """The event and the record's text, or None where the exact path must decide."""
    # Only a \\u escape can spell NUL, a lone surrogate or a ':' inside a string: without
    # one, every string msgspec decodes is storable and `_repeats_a_key` is exact.
    if b"\\u" in value:
        return None
    try:
        incoming = _FAST_DECODER.decode(value)
        text = value.decode("utf-8")
        event = _event_of(incoming)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError, ValueError):
        return None
    if _repeats_a_key(value):
        return None
    return event, text
