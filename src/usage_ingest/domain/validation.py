"""From raw record bytes to a validated event, or the reasons it was refused.

Pure: no I/O. Decides MALFORMED_MESSAGE, MESSAGE_TOO_LARGE and SCHEMA_VIOLATION
(SPEC.md §3, §5) and computes the canonical payload hash (§6).

Two paths decide, with the same rules:

* the fast path (`decoding`) decodes the record with msgspec straight into typed structs, in C,
  reading each quantity exactly from its text, then applies the rules a type cannot
  say (dates, countries, decimal digits, the rules across fields). It takes the
  common record, one that passes every rule, and gives up on anything unusual: a
  `\\u` escape, a repeated key, any broken rule;
* the exact path is the pydantic model in `models` (the published JSON Schema). It
  decides every record the fast path gave up on and explains a refusal with one
  error per offending field.

Whatever the fast path accepts, the exact path accepts as the same event with the
same hash: a property test holds the two equal over valid and hostile records. Why
msgspec, measured: README, "Performance".
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import date
from decimal import Decimal, InvalidOperation
from operator import attrgetter
from typing import Any, NamedTuple

import msgspec
from pydantic import ValidationError

from usage_ingest.domain import messages as models
from usage_ingest.domain.decoding import decode_common_event
from usage_ingest.domain.events import (
    Location,
    UnitQuantity,
    UsageEvent,
    UsageProperty,
)
from usage_ingest.domain.messages import (
    OutcomeError,
    OutcomeWarning,
    OutOfRangeNumber,
    format_decimal,
)
from usage_ingest.errors import ErrorCode, WarningCode
from usage_ingest.times import format_utc_micros

# Longest externalReference echoed back when the record is otherwise unreadable.
_MAX_ECHOED_REFERENCE = 1000
# Integers longer than this are parsed as Decimal: Python refuses to turn
# very long digit strings into int, and ids longer than int64 fail validation anyway.
_MAX_INT_DIGITS = 20


# NamedTuples rather than frozen dataclasses: one is made per record (see kafka.InputRecord).
class ValidEvent(NamedTuple):
    """An event that passed every rule that needs no reference data."""

    event: UsageEvent
    raw: str
    payload_hash: str
    usage_date: date
    warnings: tuple[OutcomeWarning, ...]
    canonical: CanonicalEvent  # what the hash is taken of (§6)


class InvalidEvent(NamedTuple):
    """A refused record; `external_reference` is None when it could not be read."""

    external_reference: str | None
    errors: tuple[OutcomeError, ...]


class _Unparseable(ValueError):
    """Valid JSON syntax that cannot be read unambiguously."""


def _reject_constant(name: str) -> Any:
    raise _Unparseable(f"{name} is not valid JSON")


def _parse_int(text: str) -> int | Decimal:
    return int(text) if len(text) <= _MAX_INT_DIGITS else Decimal(text)


def _parse_float(text: str) -> Decimal | OutOfRangeNumber:
    """A JSON number with a fraction or an exponent, exactly. An exponent beyond what
    Decimal can hold (`1e1000000000000000000`) is valid JSON: it is kept as its text,
    which no field accepts and an unknown field ignores."""
    try:
        return Decimal(text)
    except InvalidOperation:
        return OutOfRangeNumber(text)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Unparseable(f"duplicate key {key!r}: its value is ambiguous")
            seen.add(key)
    return obj


_DECODER = json.JSONDecoder(
    parse_float=_parse_float,
    parse_int=_parse_int,
    parse_constant=_reject_constant,
    object_pairs_hook=_unique_keys,
)


# Only the repeated-key rule: for JSON bodies that are not usage events (the API's own).
_KEYS_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys)


def repeated_key_problem(value: bytes) -> str | None:
    """The message a usage event gets for a repeated key, when an object of `value`
    repeats one; None otherwise (also for text that is not JSON: its parser says why)."""
    try:
        _KEYS_DECODER.decode(value.decode("utf-8"))
    except _Unparseable as exc:
        return f"the value is not JSON: {exc}"
    except (ValueError, RecursionError):
        return None
    return None


def _malformed(message: str, reference: str | None = None) -> InvalidEvent:
    return InvalidEvent(
        reference, (OutcomeError(code=ErrorCode.MALFORMED_MESSAGE, message=message),)
    )


def parse_json_object(
    value: bytes | None,
) -> tuple[dict[str, Any] | None, str, InvalidEvent | None]:
    """Decode UTF-8 JSON into an object, or say why it is malformed."""
    if not value:
        return None, "", _malformed("the value is empty")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, "", _malformed(f"the value is not UTF-8 (byte {exc.start})")
    try:
        obj = _DECODER.decode(text)
    except (ValueError, RecursionError) as exc:
        return None, text, _malformed(f"the value is not JSON: {_short(exc)}")
    if not isinstance(obj, dict):
        return None, text, _malformed(f"the value is JSON {type(obj).__name__}, not an object")
    return obj, text, None


def readable_reference(obj: dict[str, Any] | None) -> str | None:
    """The externalReference as far as it can be read, for keys and outcomes."""
    reference = obj.get("externalReference") if obj else None
    if isinstance(reference, str) and reference and len(reference) <= _MAX_ECHOED_REFERENCE:
        try:
            reference.encode("utf-8")
        except UnicodeEncodeError:
            return None
        return reference if "\x00" not in reference else None
    return None


def validate_record(value: bytes | None, max_message_bytes: int) -> ValidEvent | InvalidEvent:
    """Apply every rule of SPEC.md §3 that needs no reference data."""
    if value is not None and len(value) > max_message_bytes:
        return InvalidEvent(
            None,
            (
                OutcomeError(
                    code=ErrorCode.MESSAGE_TOO_LARGE,
                    message=f"the value is {len(value)} bytes; "
                    f"at most {max_message_bytes} are accepted",
                ),
            ),
        )
    if value and _nested_too_deeply(value):
        return _malformed(f"the value is nested more than {MAX_NESTING} levels deep")
    fast = _fast_path(value) if value else None
    return fast or _exact_path(value)


# Deeper JSON is refused before any decoder sees it. A recursive decoder's own limit
# depends on how deep its caller's stack already is, so the same record could pass in
# one place (the API) and fail in another (the worker): this limit is the same everywhere.
MAX_NESTING = 128
_STRING_BYTES = re.compile(rb'"(?:[^"\\]|\\.)*"')
_BRACKETS = re.compile(rb"[\[\]{}]")


def _nested_too_deeply(value: bytes) -> bool:
    if value.count(b"[") + value.count(b"{") <= MAX_NESTING:
        return False  # fewer brackets than the limit: nothing can be that deep
    depth = 0
    for bracket in _BRACKETS.findall(_STRING_BYTES.sub(b"", value)):
        depth += 1 if bracket in b"[{" else -1
        if depth > MAX_NESTING:
            return True
    return False


# --- the fast path --------------------------------------------------------------------


def _fast_path(value: bytes) -> ValidEvent | None:
    """The valid event, or None where the exact path must decide."""
    common = decode_common_event(value)
    if common is None or _cross_field_errors(common.event):
        return None
    return _valid(common.event, common.text, common.utc_dates)


# --- the exact path -------------------------------------------------------------------


def _exact_path(value: bytes | None) -> ValidEvent | InvalidEvent:
    obj, text, malformed = parse_json_object(value)
    if malformed is not None:
        return malformed
    assert obj is not None
    reference = readable_reference(obj)
    try:
        model = models.UsageEvent.model_validate(obj)
    except ValidationError as exc:
        return InvalidEvent(reference, tuple(_schema_errors(exc)))
    event = _event_from_model(model)
    cross_field = _cross_field_errors(event)
    if cross_field:
        return InvalidEvent(reference, tuple(cross_field))
    return _valid(event, text)


def _event_from_model(model: models.UsageEvent) -> UsageEvent:
    quantities, properties = model.unit_quantities, model.properties
    return UsageEvent(
        external_reference=model.external_reference,
        product_ident=model.product_ident,
        start_date=model.start_date,
        end_date=model.end_date,
        contract_id=model.contract_id,
        debtor_id=model.debtor_id,
        description=model.description,
        operating_site=model.operating_site,
        tax_location=_location_from_model(model.tax_location),
        performance_location=_location_from_model(model.performance_location),
        service_country=model.service_country,
        unit_quantities=None
        if quantities is None
        else tuple(UnitQuantity(q.unit, q.quantity) for q in quantities),
        properties=None
        if properties is None
        else tuple(UsageProperty(p.name, p.value) for p in properties),
    )


def _location_from_model(location: models.Location | None) -> Location | None:
    if location is None:
        return None
    return Location(
        city=location.city,
        country=location.country,
        postal_code=location.postal_code,
        region=location.region,
    )


# --- what both paths share -------------------------------------------------------------


def _valid(event: UsageEvent, text: str, utc_dates: tuple[str, str] | None = None) -> ValidEvent:
    """`utc_dates`: startDate and endDate as `format_utc_micros` writes them, where known."""
    event = apply_defaults(event)
    canonical = canonical_event(event, utc_dates)
    return ValidEvent(
        event=event,
        raw=text,
        payload_hash=payload_hash(canonical),
        usage_date=event.start_date.date(),
        warnings=_warnings(event),
        canonical=canonical,
    )


def _schema_errors(exc: ValidationError) -> list[OutcomeError]:
    errors = []
    for error in exc.errors(include_url=False, include_input=False):
        field = ".".join(str(part) for part in error["loc"]) or None
        message = error["msg"].removeprefix("Value error, ")
        errors.append(OutcomeError(code=ErrorCode.SCHEMA_VIOLATION, field=field, message=message))
    return errors


def _violation(field: str, message: str) -> OutcomeError:
    return OutcomeError(code=ErrorCode.SCHEMA_VIOLATION, field=field, message=message)


def _cross_field_errors(event: UsageEvent) -> list[OutcomeError]:
    """The rules of §3 that relate one field to another."""
    errors = []
    if event.end_date < event.start_date:
        errors.append(_violation("endDate", "must not be before startDate"))
    if event.contract_id is None and event.debtor_id is None:
        errors.append(_violation("debtorId", "is required when contractId is absent"))
    quantities, properties = event.unit_quantities, event.properties
    if quantities and len(quantities) > 1:
        errors += _repeats("unitQuantities", "unit", [q.unit for q in quantities])
    if properties and len(properties) > 1:
        errors += _repeats("properties", "name", [p.name for p in properties])
    return errors


def _repeats(field: str, member: str, values: list[str]) -> list[OutcomeError]:
    if len(set(values)) == len(values):  # the common case
        return []
    errors, seen = [], set()
    for index, value in enumerate(values):
        if value in seen:
            errors.append(_violation(f"{field}.{index}.{member}", f"{member} {value!r} repeats"))
        seen.add(value)
    return errors


def apply_defaults(event: UsageEvent) -> UsageEvent:
    """The deprecated serviceCountry fills in whichever location is absent (§3)."""
    if event.service_country is None:
        return event
    fallback = Location(country=event.service_country)
    return msgspec.structs.replace(
        event,
        tax_location=event.tax_location or fallback,
        performance_location=event.performance_location or fallback,
    )


def _warnings(event: UsageEvent) -> tuple[OutcomeWarning, ...]:
    if event.service_country is None:
        return ()
    return (
        OutcomeWarning(
            code=WarningCode.DEPRECATED_FIELD,
            field="serviceCountry",
            message="serviceCountry is deprecated: send taxLocation and performanceLocation",
        ),
    )


class CanonicalQuantity(msgspec.Struct, frozen=True, gc=False):
    quantity: str  # plain positional notation (`format_decimal`), never an exponent
    unit: str


class CanonicalEvent(msgspec.Struct, frozen=True, gc=False, rename="camel"):
    """The validated event in normal form (§6): UTC dates, plain decimals, defaults
    applied, unknown fields dropped, list items in a fixed order, every field present.

    Its compact JSON is the canonical text the hash is taken of. msgspec writes members
    in the order declared, so they are declared in the sorted order of their JSON names
    (as `Location`'s and `UsageProperty`'s are), and the text needs no sorting pass.

    Two fields say nothing beyond the rest once defaults are applied, so they are
    left out of the identity: debtorId when contractId is given (it is ignored, §3),
    and the deprecated serviceCountry (its only effect is the locations it filled in).
    """

    contract_id: int | None
    debtor_id: int | None
    description: str | None
    end_date: str
    external_reference: str
    operating_site: str | None
    performance_location: Location | None
    product_ident: str
    properties: tuple[UsageProperty, ...] | None
    service_country: None
    start_date: str
    tax_location: Location | None
    unit_quantities: tuple[CanonicalQuantity, ...] | None


def canonical_event(event: UsageEvent, utc_dates: tuple[str, str] | None = None) -> CanonicalEvent:
    """`utc_dates`: startDate and endDate as `format_utc_micros` writes them, where known."""
    quantities, properties = event.unit_quantities, event.properties
    start, end = utc_dates or (
        format_utc_micros(event.start_date),
        format_utc_micros(event.end_date),
    )
    return CanonicalEvent(
        event.contract_id,
        event.debtor_id if event.contract_id is None else None,
        event.description,
        end,
        event.external_reference,
        event.operating_site,
        event.performance_location,
        event.product_ident,
        None if properties is None else _sorted_by_name(properties),
        None,
        start,
        event.tax_location,
        None if quantities is None else _sorted_by_unit(quantities),
    )


def _sorted_by_unit(quantities: tuple[UnitQuantity, ...]) -> tuple[CanonicalQuantity, ...]:
    if len(quantities) > 1:
        quantities = tuple(sorted(quantities, key=attrgetter("unit")))
    return tuple([CanonicalQuantity(format_decimal(q.quantity), q.unit) for q in quantities])


def _sorted_by_name(properties: tuple[UsageProperty, ...]) -> tuple[UsageProperty, ...]:
    if len(properties) > 1:
        return tuple(sorted(properties, key=attrgetter("name")))
    return properties


def canonical_payload(event: UsageEvent) -> dict[str, Any]:
    """The canonical event as plain JSON values (lists, dicts, strings). The canonical
    text is `json.dumps` of this with sorted keys and no spaces: a test holds that."""
    payload: dict[str, Any] = json.loads(canonical_text(event))
    return payload


# Writes exactly what `json.dumps(payload, sort_keys=True, separators=(",", ":"),
# ensure_ascii=False)` writes for the canonical payload (same escapes, no spaces).
_JSON = msgspec.json.Encoder()


def canonical_text(event: UsageEvent) -> bytes:
    return _JSON.encode(canonical_event(event))


def payload_hash(canonical: CanonicalEvent) -> str:
    """sha256 over the canonical text. Stored with every usage: it must never change
    for the same usage, or a re-delivery after an upgrade would look like a conflict."""
    return hashlib.sha256(_JSON.encode(canonical)).hexdigest()


def json_text(value: msgspec.Struct | tuple[msgspec.Struct, ...] | None) -> str | None:
    """A location or list of properties as the text of its jsonb column."""
    return None if value is None else _JSON.encode(value).decode()


def unit_quantities_json(event: UsageEvent) -> str | None:
    """The jsonb value of `usages.unit_quantities`: quantities as exact JSON numbers."""
    if event.unit_quantities is None:
        return None
    # A unit is an identifier ([a-zA-Z0-9_.~-]): nothing in it needs escaping.
    items = (
        f'{{"unit":"{item.unit}","quantity":{format_decimal(item.quantity)}}}'
        for item in event.unit_quantities
    )
    return "[" + ",".join(items) + "]"


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return text[:200]
