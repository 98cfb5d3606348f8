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
from typing import Annotated, NamedTuple

import msgspec
import orjson

from usage_ingest.domain.events import (
    Location,
    Text255,
    Text1000,
    UnitQuantity,
    UsageEvent,
    UsageProperty,
)
from usage_ingest.domain.messages import ID_MAX, ID_MIN, IDENT_PATTERN, country_code, parse_quantity
from usage_ingest.times import parse_date_time_with_text

# `$` would also match before a final newline in Python's `re`, which msgspec uses.
_Ident = Annotated[str, msgspec.Meta(pattern=IDENT_PATTERN.removesuffix("$") + r"\Z")]
_Id = Annotated[int, msgspec.Meta(ge=ID_MIN, le=ID_MAX)]


# The `In` structs leave out of their JSON the members a record did not give, so that
# decoded and written again they hold one ':' per key the record gave (`_repeats_a_key`).
class _LocationIn(Location, frozen=True, gc=False, omit_defaults=True):
    """Never kept: a `Location` writes every member, as the canonical text needs."""


class _UnitQuantityIn(msgspec.Struct, frozen=True, gc=False):
    unit: _Ident
    quantity: msgspec.Raw  # its JSON text: a number and a numeric string obey other rules


class _EventIn(msgspec.Struct, frozen=True, gc=False, rename="camel", omit_defaults=True):
    """A record as the fast path decodes it: dates and quantities still as written."""

    external_reference: _Ident
    product_ident: _Ident
    start_date: str
    end_date: str
    contract_id: _Id | None = None
    debtor_id: _Id | None = None
    description: Text1000 | None = None
    operating_site: Text255 | None = None
    tax_location: _LocationIn | None = None
    performance_location: _LocationIn | None = None
    service_country: str | None = None
    unit_quantities: list[_UnitQuantityIn] | None = None
    properties: tuple[UsageProperty, ...] | None = None


_FAST_DECODER = msgspec.json.Decoder(_EventIn)
_ENCODER = msgspec.json.Encoder()


class CommonEvent(NamedTuple):
    event: UsageEvent
    text: str  # the record as it was written
    utc_dates: tuple[str, str]  # startDate and endDate in canonical text (`format_utc_micros`)


def _repeats_a_key(value: bytes, incoming: _EventIn) -> bool:
    """Whether an object of the record repeats a key (or this cannot tell).

    Each key of a record is one ':' outside its strings, and a string holds as many as it
    decodes to (no `\\u` escape here). So the record has as many ':' as its decoded
    struct written again exactly when every key it gave is one the struct kept: when no
    key repeats, none is unknown and none is given null. The last two are rarer; the
    record decoded last-wins and written again tells them apart, at twice the cost."""
    if _ENCODER.encode(incoming).count(b":") == value.count(b":"):
        return False
    try:
        again = orjson.dumps(orjson.loads(value))
    except (orjson.JSONDecodeError, orjson.JSONEncodeError):
        return True
    return again.count(b":") != value.count(b":")


def _event_of(incoming: _EventIn, text: str) -> CommonEvent:
    """The rules msgspec's types cannot say; ValueError where one is broken."""
    start_date, start_text = parse_date_time_with_text(incoming.start_date)
    end_date, end_text = parse_date_time_with_text(incoming.end_date)
    quantities, country = incoming.unit_quantities, incoming.service_country
    event = UsageEvent(
        incoming.external_reference,
        incoming.product_ident,
        start_date,
        end_date,
        incoming.contract_id,
        incoming.debtor_id,
        incoming.description,
        incoming.operating_site,
        _location(incoming.tax_location),
        _location(incoming.performance_location),
        None if country is None else country_code(country),
        None
        if quantities is None
        else tuple([UnitQuantity(q.unit, _quantity(q.quantity)) for q in quantities]),
        incoming.properties,
    )
    return CommonEvent(event, text, (start_text, end_text))


def _location(location: _LocationIn | None) -> Location | None:
    if location is None:
        return None
    country = location.country
    return Location(
        location.city,
        None if country is None else country_code(country),
        location.postal_code,
        location.region,
    )


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


def decode_common_event(value: bytes) -> CommonEvent | None:
    """The event, the record's text and its dates in UTC, or None where the exact
    path must decide."""
    # Only a \\u escape can spell NUL, a lone surrogate or a ':' inside a string: without
    # one, every string msgspec decodes is storable and `_repeats_a_key` is exact.
    if b"\\u" in value:
        return None
    try:
        incoming = _FAST_DECODER.decode(value)
        common = _event_of(incoming, value.decode("utf-8"))
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError, ValueError):
        return None
    if _repeats_a_key(value, incoming):
        return None
    return common
