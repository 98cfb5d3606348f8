"""SPEC.md §3 and the record-level error codes of §5, through `validate_record`.

Every rule is exercised on both sides of its boundary: the last value that
passes and the first that is refused.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.strategies import hypothesis_settings, numbers_anywhere
from usage_ingest.domain.events import Location
from usage_ingest.domain.validation import (
    MAX_NESTING,
    InvalidEvent,
    ValidEvent,
    canonical_payload,
    validate_record,
)
from usage_ingest.errors import ErrorCode, WarningCode
from usage_ingest.times import format_utc_micros, parse_date_time, parse_date_time_with_text

MAX_BYTES = 65536
ABSENT = object()  # marks a field to remove from the base event

BASE: dict[str, Any] = {
    "externalReference": "ref-1",
    "contractId": 7,
    "productIdent": "voice.uk",
    "startDate": "2026-11-22T10:00:00Z",
    "endDate": "2026-11-22T10:05:00Z",
}


def event(**changes: Any) -> dict[str, Any]:
    """The base event with fields replaced; a value of ABSENT removes the field."""
    result = dict(BASE)
    for name, value in changes.items():
        if value is ABSENT:
            result.pop(name, None)
        else:
            result[name] = value
    return result


def encode(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def accepted(obj: dict[str, Any]) -> ValidEvent:
    result = validate_record(encode(obj), MAX_BYTES)
    assert isinstance(result, ValidEvent), result
    return result


def refused(value: dict[str, Any] | bytes | None, max_bytes: int = MAX_BYTES) -> InvalidEvent:
    raw = value if value is None or isinstance(value, bytes) else encode(value)
    result = validate_record(raw, max_bytes)
    assert isinstance(result, InvalidEvent), result
    return result


def violations(obj: dict[str, Any]) -> list[str | None]:
    """The fields named by the SCHEMA_VIOLATION errors of a refused event."""
    result = refused(obj)
    assert {e.code for e in result.errors} == {ErrorCode.SCHEMA_VIOLATION}, result.errors
    return [e.field for e in result.errors]


def assert_malformed(result: InvalidEvent) -> None:
    assert [e.code for e in result.errors] == [ErrorCode.MALFORMED_MESSAGE]
    assert result.errors[0].field is None
    assert result.errors[0].message


# --- the base event ---------------------------------------------------------


def test_base_event_is_accepted_without_warnings() -> None:
    result = accepted(event())
    assert result.event.external_reference == "ref-1"
    assert result.event.contract_id == 7
    assert result.event.product_ident == "voice.uk"
    assert result.warnings == ()


def test_valid_event_keeps_the_raw_text_as_received() -> None:
    raw = b'{"externalReference": "ref-1", "contractId": 7, "productIdent": "voice.uk",\n'
    raw += b' "startDate": "2026-11-22T10:00:00Z", "endDate": "2026-11-22T10:05:00Z"}'
    result = validate_record(raw, MAX_BYTES)
    assert isinstance(result, ValidEvent)
    assert result.raw == raw.decode()


# --- MALFORMED_MESSAGE -------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(b"", id="empty"),
        pytest.param(None, id="tombstone"),
        pytest.param(b"\xff\xfe{}", id="not-utf8"),
        pytest.param(b'{"externalReference": "caf\xe9"}', id="latin1"),
        pytest.param(b"\xed\xa0\x80", id="utf8-encoded-surrogate"),
        pytest.param(b"{", id="truncated"),
        pytest.param(b"hello", id="text"),
        pytest.param(b'{"a": 1} trailing', id="trailing-garbage"),
        pytest.param(b"{'a': 1}", id="single-quotes"),
        pytest.param(b'{"a": 1,}', id="trailing-comma"),
        pytest.param(b"[]", id="array"),
        pytest.param(b'"text"', id="string"),
        pytest.param(b"42", id="number"),
        pytest.param(b"null", id="null"),
        pytest.param(b"true", id="bool"),
    ],
)
def test_malformed_message(value: bytes | None) -> None:
    result = refused(value)
    assert_malformed(result)
    assert result.external_reference is None


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_malformed(constant: str) -> None:
    text = json.dumps(event(unitQuantities=[{"unit": "minute", "quantity": 0}]))
    raw = text.replace('"quantity": 0', f'"quantity": {constant}').encode()
    assert constant.encode() in raw
    assert_malformed(refused(raw))


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(
            b'{"externalReference": "a", "externalReference": "b"}', id="top-level-reference"
        ),
        pytest.param(b'{"externalReference": "a", "contractId": 1, "contractId": 2}', id="top"),
        pytest.param(
            b'{"externalReference": "a", "taxLocation": {"city": "x", "city": "y"}}', id="nested"
        ),
    ],
)
def test_duplicate_keys_are_malformed(raw: bytes) -> None:
    result = refused(raw)
    assert_malformed(result)
    assert result.external_reference is None


@pytest.mark.parametrize("kind", ["arrays", "objects"])
def test_too_deep_nesting_is_malformed(kind: str) -> None:
    depth = 10_000
    if kind == "arrays":
        nested = b"[" * depth + b"]" * depth
    else:
        nested = b'{"a":' * depth + b"1" + b"}" * depth
    raw = b'{"externalReference": "ref-1", "x": ' + nested + b"}"
    assert len(raw) <= MAX_BYTES
    result = refused(raw)
    assert_malformed(result)
    assert result.external_reference is None


def nested_in_an_unknown_field(levels: int) -> bytes:
    """The base event with an unknown field nested so that the record is `levels` deep."""
    skeleton = encode(event(extension="PLACEHOLDER"))
    inner = b"[" * (levels - 1) + b"]" * (levels - 1)
    return skeleton.replace(b'"PLACEHOLDER"', inner)


def test_nesting_up_to_the_limit_is_accepted_and_one_more_level_is_malformed() -> None:
    assert isinstance(
        validate_record(nested_in_an_unknown_field(MAX_NESTING), MAX_BYTES), ValidEvent
    )
    result = refused(nested_in_an_unknown_field(MAX_NESTING + 1))
    assert_malformed(result)
    assert result.errors[0].message == f"the value is nested more than {MAX_NESTING} levels deep"


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    accepted(event(description="[" * 500 + "{" * 400))


@pytest.mark.parametrize("levels", [MAX_NESTING, MAX_NESTING + 1, 900, 5000])
def test_the_verdict_on_deep_nesting_does_not_depend_on_the_callers_stack(levels: int) -> None:
    """A recursive decoder's limit depends on how deep the stack already is: the same
    record must get the same verdict from the API, the worker, or anywhere else."""
    raw = nested_in_an_unknown_field(levels)
    shallow = validate_record(raw, MAX_BYTES)

    def from_deep_in_the_stack(depth: int) -> ValidEvent | InvalidEvent:
        return from_deep_in_the_stack(depth - 1) if depth else validate_record(raw, MAX_BYTES)

    assert from_deep_in_the_stack(sys.getrecursionlimit() - 300) == shallow


def test_moderate_nesting_in_an_unknown_field_is_accepted() -> None:
    nested: Any = 1
    for _ in range(50):
        nested = {"a": [nested]}
    accepted(event(extension=nested))


# --- MESSAGE_TOO_LARGE ---------------------------------------------------------


def padded(size: int) -> bytes:
    """A valid event of exactly `size` bytes (padding in an unknown field)."""
    skeleton = encode(event(padding=""))
    raw = encode(event(padding="x" * (size - len(skeleton))))
    assert len(raw) == size
    return raw


@pytest.mark.parametrize("max_bytes", [200, 1000, MAX_BYTES])
def test_exactly_max_bytes_is_accepted(max_bytes: int) -> None:
    assert isinstance(validate_record(padded(max_bytes), max_bytes), ValidEvent)


@pytest.mark.parametrize("max_bytes", [200, 1000, MAX_BYTES])
def test_one_byte_over_max_is_too_large(max_bytes: int) -> None:
    result = refused(padded(max_bytes + 1), max_bytes)
    assert [e.code for e in result.errors] == [ErrorCode.MESSAGE_TOO_LARGE]
    assert str(max_bytes) in result.errors[0].message


def test_size_is_counted_in_bytes_not_characters() -> None:
    raw = encode(event(description="é" * 100)).replace(b"\\u00e9", "é".encode())
    assert len(raw) > len(raw.decode())
    assert isinstance(validate_record(raw, len(raw)), ValidEvent)
    result = refused(raw, len(raw.decode()))
    assert [e.code for e in result.errors] == [ErrorCode.MESSAGE_TOO_LARGE]


def test_size_is_checked_before_parsing() -> None:
    result = refused(b"x" * 101, 100)
    assert [e.code for e in result.errors] == [ErrorCode.MESSAGE_TOO_LARGE]


# --- SCHEMA_VIOLATION: one error per offending field ---------------------------


def test_one_error_per_offending_field_with_dotted_paths() -> None:
    fields = violations(
        event(
            externalReference="has space",
            productIdent="",
            description=5,
            unitQuantities=[{"unit": "ok", "quantity": 1}, {"unit": "also-ok", "quantity": -1}],
            properties=[{"name": "n", "value": 1}],
        )
    )
    assert sorted(fields, key=str) == sorted(
        [
            "externalReference",
            "productIdent",
            "description",
            "unitQuantities.1.quantity",
            "properties.0.value",
        ]
    )


@pytest.mark.parametrize("name", ["externalReference", "productIdent", "startDate", "endDate"])
def test_required_field_missing(name: str) -> None:
    assert violations(event(**{name: ABSENT})) == [name]


@pytest.mark.parametrize("name", ["externalReference", "productIdent", "startDate", "endDate"])
def test_required_field_null(name: str) -> None:
    assert violations(event(**{name: None})) == [name]


# --- externalReference and productIdent -------------------------------------------

VALID_IDENTS = ["a", "A-z_0.9~", "x" * 100, "0", "voice.uk", "ABC-123_x.y~z"]
INVALID_IDENTS = [
    pytest.param("", id="empty"),
    pytest.param("x" * 101, id="101-chars"),
    pytest.param("has space", id="space"),
    pytest.param("a/b", id="slash"),
    pytest.param("ä", id="non-ascii"),
    pytest.param("abc\n", id="trailing-newline"),
    pytest.param("a:b", id="colon"),
    pytest.param(5, id="number"),
    pytest.param(["a"], id="array"),
]


@pytest.mark.parametrize("name", ["externalReference", "productIdent"])
@pytest.mark.parametrize("value", VALID_IDENTS)
def test_ident_accepted(name: str, value: str) -> None:
    result = accepted(event(**{name: value}))
    assert canonical_payload(result.event)[name] == value


@pytest.mark.parametrize("name", ["externalReference", "productIdent"])
@pytest.mark.parametrize("value", INVALID_IDENTS)
def test_ident_refused(name: str, value: Any) -> None:
    assert violations(event(**{name: value})) == [name]


# --- contractId and debtorId ---------------------------------------------------------

# Ids are positive (README, "Ids"): 1 to the int64 maximum.
ID_BOUNDS = [1, 2, 2**63 - 1]
INVALID_IDS = [
    pytest.param(2**63, id="int64-max+1"),
    pytest.param(0, id="zero"),
    pytest.param(-1, id="negative"),
    pytest.param(-(2**63), id="int64-min"),
    pytest.param(10**30, id="30-digits"),
    pytest.param("7", id="numeric-string"),
    pytest.param(7.0, id="float-integral"),
    pytest.param(7.5, id="float"),
    pytest.param(True, id="true"),
    pytest.param(False, id="false"),
    pytest.param([7], id="array"),
    pytest.param({"id": 7}, id="object"),
]


@pytest.mark.parametrize("value", ID_BOUNDS)
def test_contract_id_accepted(value: int) -> None:
    assert accepted(event(contractId=value)).event.contract_id == value


@pytest.mark.parametrize("value", ID_BOUNDS)
def test_debtor_id_accepted(value: int) -> None:
    result = accepted(event(contractId=ABSENT, debtorId=value))
    assert result.event.debtor_id == value
    assert result.event.contract_id is None


@pytest.mark.parametrize("value", INVALID_IDS)
def test_contract_id_refused(value: Any) -> None:
    assert violations(event(contractId=value)) == ["contractId"]


@pytest.mark.parametrize("value", INVALID_IDS)
def test_debtor_id_refused(value: Any) -> None:
    assert violations(event(contractId=ABSENT, debtorId=value)) == ["debtorId"]


def test_float_ids_written_with_exponent_are_refused() -> None:
    raw = encode(event()).replace(b'"contractId": 7', b'"contractId": 7e0')
    assert b"7e0" in raw
    result = refused(raw)
    assert [e.field for e in result.errors] == ["contractId"]


@pytest.mark.parametrize(
    ("contract_id", "debtor_id"),
    [(ABSENT, ABSENT), (None, None), (ABSENT, None), (None, ABSENT)],
    ids=["both-absent", "both-null", "contract-absent-debtor-null", "contract-null-debtor-absent"],
)
def test_debtor_id_required_when_contract_id_absent(contract_id: Any, debtor_id: Any) -> None:
    assert violations(event(contractId=contract_id, debtorId=debtor_id)) == ["debtorId"]


@pytest.mark.parametrize("debtor_id", [ABSENT, None, 3, 999])
def test_contract_id_given_makes_debtor_id_optional(debtor_id: Any) -> None:
    assert accepted(event(contractId=7, debtorId=debtor_id)).event.contract_id == 7


# --- description ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [None, "", "x" * 1000, "é" * 1000, "😀" * 1000],
    ids=["null", "empty", "1000", "é", "emoji"],
)
def test_description_accepted(value: str | None) -> None:
    assert accepted(event(description=value)).event.description == value


@pytest.mark.parametrize(
    "value", ["x" * 1001, "é" * 1001, 5, ["x"]], ids=["1001", "1001-é", "number", "array"]
)
def test_description_refused(value: Any) -> None:
    assert violations(event(description=value)) == ["description"]


# --- startDate and endDate -----------------------------------------------------------


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "instant"),
    [
        pytest.param("2026-11-22T10:00:00Z", utc(2026, 11, 22, 10), id="Z"),
        pytest.param("2026-11-22T10:00:00+00:00", utc(2026, 11, 22, 10), id="+00:00"),
        pytest.param("2026-11-22T12:00:00+02:00", utc(2026, 11, 22, 10), id="positive-offset"),
        pytest.param("2026-11-22T05:30:00-04:30", utc(2026, 11, 22, 10), id="negative-offset"),
        pytest.param("2026-11-22T23:30:00-02:00", utc(2026, 11, 23, 1, 30), id="next-utc-day"),
        pytest.param("2026-11-22T10:00:00", utc(2026, 11, 22, 10), id="no-offset-is-utc"),
        pytest.param("2026-11-22T10:00:00.5Z", utc(2026, 11, 22, 10, 0, 0, 500000), id="fraction"),
        pytest.param(
            "2026-11-22T10:00:00.123456Z", utc(2026, 11, 22, 10, 0, 0, 123456), id="micros"
        ),
        pytest.param(
            "2026-11-22T10:00:00.123+01:00",
            utc(2026, 11, 22, 9, 0, 0, 123000),
            id="fraction+offset",
        ),
        pytest.param("2026-11-22T10:00:00+23:59", utc(2026, 11, 21, 10, 1), id="largest-offset"),
        pytest.param("2026-11-22T10:00:00-23:59", utc(2026, 11, 23, 9, 59), id="smallest-offset"),
        # ISO 8601 allows an offset of hours alone.
        pytest.param("2026-11-22T11:00:00+01", utc(2026, 11, 22, 10), id="hours-only-offset"),
        pytest.param("2026-11-22 10:00:00Z", utc(2026, 11, 22, 10), id="space-separator"),
        # RFC 3339 §5.6: "T" and "Z" may alternatively be lower case.
        pytest.param("2026-11-22t10:00:00z", utc(2026, 11, 22, 10), id="lowercase-t-and-z"),
        pytest.param("2026-11-22T10:00:00z", utc(2026, 11, 22, 10), id="lowercase-z"),
    ],
)
def test_date_time_accepted(text: str, instant: datetime) -> None:
    result = accepted(event(startDate=text, endDate="2099-01-01T00:00:00Z"))
    assert result.event.start_date == instant
    assert result.event.start_date.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("2026-11-22", id="date-only"),
        pytest.param("10:00:00", id="time-only"),
        pytest.param("garbage", id="garbage"),
        pytest.param("", id="empty"),
        pytest.param("2026-13-01T00:00:00Z", id="month-13"),
        pytest.param("2026-02-30T10:00:00Z", id="february-30"),
        pytest.param("2026-11-22T25:00:00Z", id="hour-25"),
        pytest.param("2026-11-22T10:00:00+25:00", id="offset-25h"),
        # fromisoformat alone would read these as +11:00 and +11:39: another instant.
        pytest.param("2026-05-01T10:00:00+10:60", id="offset-60-minutes"),
        pytest.param("2026-05-01T10:00:00+10:99", id="offset-99-minutes"),
        pytest.param("2026-05-01T10:00:00-0960", id="basic-offset-60-minutes"),
        pytest.param("2026-05-01T10:00:00+24:00", id="offset-24h"),
        pytest.param("2026-05-01T10:00:00+24", id="hours-only-offset-24"),
        pytest.param("22/11/2026 10:00", id="local-format"),
        pytest.param("0001-01-01T00:00:00+01:00", id="before-year-1-in-utc"),
        pytest.param(1764000000, id="epoch-number"),
        pytest.param(["2026-11-22T10:00:00Z"], id="array"),
    ],
)
@pytest.mark.parametrize("name", ["startDate", "endDate"])
def test_date_time_refused(name: str, value: Any) -> None:
    fields = violations(event(**{name: value}))
    assert fields == [name]


def test_end_date_equal_to_start_date_is_accepted() -> None:
    result = accepted(event(startDate="2026-11-22T10:00:00Z", endDate="2026-11-22T10:00:00Z"))
    assert result.event.end_date == result.event.start_date


def test_end_date_equal_to_start_date_in_another_offset_is_accepted() -> None:
    accepted(event(startDate="2026-11-22T10:00:00Z", endDate="2026-11-22T12:00:00+02:00"))


@pytest.mark.parametrize(
    ("start", "end"),
    [
        pytest.param("2026-11-22T10:00:00Z", "2026-11-22T09:59:59Z", id="one-second"),
        pytest.param("2026-11-22T10:00:00.000001Z", "2026-11-22T10:00:00Z", id="one-microsecond"),
        # Later on the wall clock, earlier as an instant: offsets are honoured.
        pytest.param("2026-11-22T10:00:00Z", "2026-11-22T11:30:00+02:00", id="offset"),
    ],
)
def test_end_date_before_start_date_is_refused(start: str, end: str) -> None:
    assert violations(event(startDate=start, endDate=end)) == ["endDate"]


# --- operatingSite ---------------------------------------------------------------


@pytest.mark.parametrize("value", [None, "", "GB-LON", "x" * 255], ids=["null", "0", "code", "255"])
def test_operating_site_accepted(value: str | None) -> None:
    assert accepted(event(operatingSite=value)).event.operating_site == value


@pytest.mark.parametrize("value", ["x" * 256, 5, ["GB-LON"]], ids=["256", "number", "array"])
def test_operating_site_refused(value: Any) -> None:
    assert violations(event(operatingSite=value)) == ["operatingSite"]


# --- taxLocation and performanceLocation ------------------------------------------

LOCATIONS = ["taxLocation", "performanceLocation"]


@pytest.mark.parametrize("location", LOCATIONS)
@pytest.mark.parametrize("member", ["region", "city", "postalCode"])
def test_location_member_of_255_characters_is_accepted(location: str, member: str) -> None:
    result = accepted(event(**{location: {member: "x" * 255}}))
    assert canonical_payload(result.event)[location][member] == "x" * 255


@pytest.mark.parametrize("location", LOCATIONS)
@pytest.mark.parametrize("member", ["region", "city", "postalCode"])
def test_location_member_of_256_characters_is_refused(location: str, member: str) -> None:
    assert violations(event(**{location: {member: "x" * 256}})) == [f"{location}.{member}"]


@pytest.mark.parametrize("location", LOCATIONS)
@pytest.mark.parametrize("country", ["GB", "GBR", "DE", "DEU", "US", "USA", "FR"])
def test_location_country_alpha2_or_alpha3_is_accepted(location: str, country: str) -> None:
    result = accepted(event(**{location: {"country": country}}))
    assert canonical_payload(result.event)[location]["country"] == country


@pytest.mark.parametrize("location", LOCATIONS)
@pytest.mark.parametrize(
    "country",
    ["XX", "ZZZ", "UK", "EU", "G", "GBRR", "", "12", 44, ["GB"]],
)
def test_location_country_invalid_is_refused(location: str, country: Any) -> None:
    assert violations(event(**{location: {"country": country}})) == [f"{location}.country"]


@pytest.mark.parametrize("location", LOCATIONS)
def test_location_with_every_member_is_accepted(location: str) -> None:
    value = {"country": "GB", "region": "England", "city": "London", "postalCode": "SW1A 1AA"}
    result = accepted(event(**{location: value}))
    expected = Location(country="GB", region="England", city="London", postal_code="SW1A 1AA")
    if location == "taxLocation":
        assert result.event.tax_location == expected
    else:
        assert result.event.performance_location == expected


@pytest.mark.parametrize("location", LOCATIONS)
@pytest.mark.parametrize("value", ["GB", 1, ["GB"]], ids=["string", "number", "array"])
def test_location_that_is_not_an_object_is_refused(location: str, value: Any) -> None:
    assert violations(event(**{location: value})) == [location]


# --- serviceCountry (deprecated) -------------------------------------------------------


def deprecation_warnings(result: ValidEvent) -> list[tuple[WarningCode, str | None]]:
    return [(w.code, w.field) for w in result.warnings]


@pytest.mark.parametrize("country", ["GB", "GBR"])
@pytest.mark.parametrize("missing", [ABSENT, None], ids=["absent", "null"])
def test_service_country_defaults_both_missing_locations(country: str, missing: Any) -> None:
    result = accepted(
        event(serviceCountry=country, taxLocation=missing, performanceLocation=missing)
    )
    assert result.event.tax_location == Location(country=country)
    assert result.event.performance_location == Location(country=country)


def test_service_country_defaults_only_the_absent_location() -> None:
    tax = {"country": "DE", "city": "Berlin"}
    result = accepted(event(serviceCountry="GB", taxLocation=tax))
    assert result.event.tax_location == Location(country="DE", city="Berlin")
    assert result.event.performance_location == Location(country="GB")


def test_service_country_does_not_replace_present_locations() -> None:
    result = accepted(
        event(
            serviceCountry="GB",
            taxLocation={"country": "DE"},
            performanceLocation={"city": "Paris"},
        )
    )
    assert result.event.tax_location == Location(country="DE")
    assert result.event.performance_location == Location(city="Paris")


@pytest.mark.parametrize(
    "locations",
    [{}, {"taxLocation": {"country": "DE"}, "performanceLocation": {"country": "FR"}}],
    ids=["locations-absent", "locations-present"],
)
def test_service_country_gives_deprecated_field_warning(locations: dict[str, Any]) -> None:
    result = accepted(event(serviceCountry="GB", **locations))
    assert deprecation_warnings(result) == [(WarningCode.DEPRECATED_FIELD, "serviceCountry")]
    assert result.warnings[0].message


@pytest.mark.parametrize("value", [ABSENT, None], ids=["absent", "null"])
def test_without_service_country_no_warning_and_no_default(value: Any) -> None:
    result = accepted(event(serviceCountry=value))
    assert result.warnings == ()
    assert result.event.tax_location is None
    assert result.event.performance_location is None


@pytest.mark.parametrize("value", ["XX", "UK", "", 44], ids=["XX", "UK", "empty", "number"])
def test_service_country_invalid_is_refused(value: Any) -> None:
    assert violations(event(serviceCountry=value)) == ["serviceCountry"]


# --- unitQuantities ------------------------------------------------------------------


def quantities(*items: tuple[str, Any]) -> list[dict[str, Any]]:
    return [{"unit": unit, "quantity": quantity} for unit, quantity in items]


@pytest.mark.parametrize("value", [None, []], ids=["null", "empty"])
def test_unit_quantities_may_be_null_or_empty(value: Any) -> None:
    assert accepted(event(unitQuantities=value)).event.unit_quantities == (
        None if value is None else tuple(value)
    )


@pytest.mark.parametrize("unit", VALID_IDENTS)
def test_unit_accepted(unit: str) -> None:
    result = accepted(event(unitQuantities=quantities((unit, 1))))
    assert result.event.unit_quantities is not None
    assert result.event.unit_quantities[0].unit == unit


@pytest.mark.parametrize("unit", INVALID_IDENTS)
def test_unit_refused(unit: Any) -> None:
    items = quantities(("minute", 1), (unit, 1))
    assert violations(event(unitQuantities=items)) == ["unitQuantities.1.unit"]


@pytest.mark.parametrize(
    ("json_text", "expected"),
    [
        pytest.param("0", "0", id="zero"),
        pytest.param("1", "1", id="int"),
        pytest.param("1.5", "1.5", id="number"),
        pytest.param("1.50", "1.5", id="trailing-zero"),
        pytest.param("1.5E0", "1.5", id="exponent"),
        pytest.param("15e-1", "1.5", id="negative-exponent"),
        pytest.param("1e3", "1000", id="positive-exponent"),
        pytest.param("0.1", "0.1", id="not-a-binary-float"),
        pytest.param('"0"', "0", id="string-zero"),
        pytest.param('"1.5"', "1.5", id="string"),
        pytest.param('"1.50"', "1.5", id="string-trailing-zero"),
        pytest.param('"+2"', "2", id="string-plus"),
        pytest.param('"2.5e2"', "250", id="string-exponent"),
        pytest.param('"-0"', "0", id="negative-zero"),
        pytest.param('"123456789012345678"', "123456789012345678", id="18-digits-before"),
        pytest.param('"0.000000000001"', "0.000000000001", id="12-digits-after"),
        pytest.param(
            '"999999999999999999.999999999999"', "999999999999999999.999999999999", id="18+12"
        ),
        pytest.param(
            "999999999999999999.999999999999", "999999999999999999.999999999999", id="18+12-number"
        ),
        # Trailing zeros carry no digits of value: normalised away before the count.
        pytest.param('"1.0000000000000"', "1", id="13-zeros-after"),
    ],
)
def test_quantity_accepted(json_text: str, expected: str) -> None:
    items = json.dumps(quantities(("minute", "PLACEHOLDER")))
    raw = encode(event(unitQuantities=[])).replace(
        b'"unitQuantities": []',
        b'"unitQuantities": ' + items.replace('"PLACEHOLDER"', json_text).encode(),
    )
    result = validate_record(raw, MAX_BYTES)
    assert isinstance(result, ValidEvent), result
    assert result.event.unit_quantities is not None
    quantity = result.event.unit_quantities[0].quantity
    assert isinstance(quantity, Decimal)
    assert quantity == Decimal(expected)
    assert format(quantity, "f") == expected


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(-1, id="negative"),
        pytest.param("-0.5", id="negative-string"),
        pytest.param(-0.000001, id="tiny-negative"),
        pytest.param("1234567890123456789", id="19-digits-before"),
        pytest.param(1234567890123456789, id="19-digits-before-number"),
        pytest.param("1000000000000000000", id="10^18"),
        pytest.param("0.0000000000001", id="13-digits-after"),
        pytest.param("1.1234567890123", id="13-digits-after-nonzero"),
        pytest.param("1e18", id="exponent-19-digits"),
        pytest.param("1e-13", id="exponent-13-after"),
        pytest.param("1e400", id="huge-exponent"),
        pytest.param("NaN", id="nan-string"),
        pytest.param("Infinity", id="infinity-string"),
        pytest.param("inf", id="inf-string"),
        pytest.param("abc", id="letters"),
        pytest.param("", id="empty-string"),
        pytest.param(" 1", id="leading-space"),
        pytest.param("1 ", id="trailing-space"),
        pytest.param("1_000", id="underscore"),
        pytest.param("0x10", id="hex"),
        pytest.param("1,5", id="comma"),
        pytest.param(True, id="bool"),
        pytest.param(None, id="null"),
        pytest.param([1], id="array"),
        pytest.param({"value": 1}, id="object"),
    ],
)
def test_quantity_refused(value: Any) -> None:
    items = quantities(("minute", 1), ("sms", value))
    assert violations(event(unitQuantities=items)) == ["unitQuantities.1.quantity"]


def test_quantity_as_huge_json_number_is_refused() -> None:
    raw = encode(event(unitQuantities=quantities(("minute", 0)))).replace(
        b'"quantity": 0', b'"quantity": 1e400'
    )
    result = refused(raw)
    assert [e.field for e in result.errors] == ["unitQuantities.0.quantity"]


def test_an_impossible_offset_is_named_in_the_message() -> None:
    result = refused(event(startDate="2026-05-01T10:00:00+10:60"))
    assert [(e.field, e.message) for e in result.errors] == [
        ("startDate", "has an impossible UTC offset: hours 00-23, minutes 00-59")
    ]


# Numbers no Decimal can hold (exponents past about 10^18), and other extreme shapes.
EXTREME_NUMBERS = [
    pytest.param("0.4e006699999999999999999999999999999999999999", id="huge-exponent"),
    pytest.param("1e1000000000000000000", id="exponent-10^18"),
    pytest.param("-1e1000000000000000000", id="negative-exponent-10^18"),
    pytest.param("1e-1000000000000000000", id="tiny-exponent"),
    pytest.param("9" * 10_000, id="10000-digits"),
    pytest.param("0." + "0" * 9_999 + "1", id="10000-fraction-digits"),
    pytest.param("1" + "0" * 5_000 + "e-4980", id="5000-digits-exponent"),  # 10^20
]


def raw_with(field_path: tuple[str | int, ...], number: str) -> bytes:
    """The base event (with a location, a quantity and a property) with a number
    literal at `field_path`."""
    obj = event(
        taxLocation={"country": "GB"},
        unitQuantities=quantities(("minute", 1)),
        properties=[{"name": "line", "value": "1"}],
    )
    target: Any = obj
    for step in field_path[:-1]:
        target = target[step]
    target[field_path[-1]] = "PLACEHOLDER"
    return encode(obj).replace(b'"PLACEHOLDER"', number.encode())


@pytest.mark.parametrize("number", EXTREME_NUMBERS)
def test_extreme_numbers_as_the_whole_value_are_malformed(number: str) -> None:
    assert_malformed(refused(number.encode()))
    assert_malformed(refused(f"[{number}]".encode()))


@pytest.mark.parametrize("number", EXTREME_NUMBERS)
def test_extreme_numbers_in_an_unknown_field_are_ignored(number: str) -> None:
    raw = raw_with(("extension",), number)
    result = validate_record(raw, MAX_BYTES)
    assert isinstance(result, ValidEvent), result
    assert result.raw == raw.decode()
    assert result.payload_hash == accepted(json.loads(raw_with(("extension",), "1"))).payload_hash


@pytest.mark.parametrize("number", EXTREME_NUMBERS)
@pytest.mark.parametrize(
    "field_path",
    [
        ("externalReference",),
        ("contractId",),
        ("debtorId",),
        ("productIdent",),
        ("description",),
        ("startDate",),
        ("endDate",),
        ("operatingSite",),
        ("taxLocation",),
        ("taxLocation", "country"),
        ("serviceCountry",),
        ("unitQuantities",),
        ("unitQuantities", 0, "unit"),
        ("unitQuantities", 0, "quantity"),
        ("properties",),
        ("properties", 0, "name"),
        ("properties", 0, "value"),
    ],
)
def test_extreme_numbers_in_any_field_are_a_violation_of_that_field(
    field_path: tuple[str | int, ...], number: str
) -> None:
    result = refused(raw_with(field_path, number))
    assert [(e.code, e.field) for e in result.errors] == [
        (ErrorCode.SCHEMA_VIOLATION, ".".join(map(str, field_path)))
    ], result.errors


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        pytest.param("-0", "0", id="negative-zero"),
        pytest.param("-0.0", "0", id="negative-zero-fraction"),
        pytest.param("-0e5", "0", id="negative-zero-exponent"),
        pytest.param("7e0", "7", id="integer-with-exponent"),
        pytest.param("7E+2", "700", id="integer-with-positive-exponent"),
        pytest.param("70e-1", "7", id="integer-with-negative-exponent"),
    ],
)
def test_zero_and_exponent_shapes_of_quantities(number: str, expected: str) -> None:
    result = validate_record(raw_with(("unitQuantities", 0, "quantity"), number), MAX_BYTES)
    assert isinstance(result, ValidEvent), result
    assert result.event.unit_quantities is not None
    assert format(result.event.unit_quantities[0].quantity, "f") == expected


@pytest.mark.parametrize("number", ["-0", "7e0", "7E+2", "7.0"])
def test_ids_written_as_floats_or_negative_zero(number: str) -> None:
    # -0 is the integer 0, which is no id; the others are not integers.
    assert [e.field for e in refused(raw_with(("contractId",), number)).errors] == ["contractId"]


@hypothesis_settings(1500)
@given(numbers_anywhere())
def test_validation_is_total_for_numbers_of_every_shape_anywhere(raw: bytes) -> None:
    """No byte string can make validation raise: here numbers of every shape the JSON
    grammar allows, in every field, nested or not, in an unknown field, or alone."""
    result = validate_record(raw, MAX_BYTES)
    if isinstance(result, InvalidEvent):
        assert result.errors
        assert {e.code for e in result.errors} <= {
            ErrorCode.MALFORMED_MESSAGE,
            ErrorCode.SCHEMA_VIOLATION,
        }


@pytest.mark.parametrize("missing", ["unit", "quantity"])
def test_unit_quantity_member_required(missing: str) -> None:
    item = {"unit": "minute", "quantity": 1}
    del item[missing]
    assert violations(event(unitQuantities=[item])) == [f"unitQuantities.0.{missing}"]


@pytest.mark.parametrize("value", [{"unit": "minute"}, "minute", 5], ids=["object", "str", "int"])
def test_unit_quantities_not_an_array_is_refused(value: Any) -> None:
    assert violations(event(unitQuantities=value)) == ["unitQuantities"]


def test_units_must_be_unique() -> None:
    items = quantities(("minute", 1), ("sms", 2), ("minute", 3))
    assert violations(event(unitQuantities=items)) == ["unitQuantities.2.unit"]


def test_distinct_units_are_accepted() -> None:
    items = quantities(("minute", 1), ("sms", 2), ("mb", "3.25"))
    result = accepted(event(unitQuantities=items))
    assert result.event.unit_quantities is not None
    assert [(q.unit, q.quantity) for q in result.event.unit_quantities] == [
        ("minute", Decimal(1)),
        ("sms", Decimal(2)),
        ("mb", Decimal("3.25")),
    ]


# --- properties ------------------------------------------------------------------------


def props(*items: tuple[Any, Any]) -> list[dict[str, Any]]:
    return [{"name": name, "value": value} for name, value in items]


@pytest.mark.parametrize("value", [None, []], ids=["null", "empty"])
def test_properties_may_be_null_or_empty(value: Any) -> None:
    assert accepted(event(properties=value)).event.properties == (
        None if value is None else tuple(value)
    )


@pytest.mark.parametrize("name", ["n", "x" * 100, "with space", "ü"], ids=["1", "100", "sp", "ü"])
def test_property_name_accepted(name: str) -> None:
    result = accepted(event(properties=props((name, "v"))))
    assert result.event.properties is not None
    assert result.event.properties[0].name == name


@pytest.mark.parametrize("name", ["", "x" * 101, 5, None], ids=["0", "101", "number", "null"])
def test_property_name_refused(name: Any) -> None:
    items = props(("first", "v"), (name, "v"))
    assert violations(event(properties=items)) == ["properties.1.name"]


@pytest.mark.parametrize("value", ["", "x" * 1000, "ü" * 1000], ids=["0", "1000", "1000-ü"])
def test_property_value_accepted(value: str) -> None:
    result = accepted(event(properties=props(("n", value))))
    assert result.event.properties is not None
    assert result.event.properties[0].value == value


@pytest.mark.parametrize("value", ["x" * 1001, 5, None, ["v"]], ids=["1001", "num", "null", "arr"])
def test_property_value_refused(value: Any) -> None:
    items = props(("first", "v"), ("second", value))
    assert violations(event(properties=items)) == ["properties.1.value"]


def test_property_names_must_be_unique() -> None:
    items = props(("a", "1"), ("b", "2"), ("a", "3"))
    assert violations(event(properties=items)) == ["properties.2.name"]


def test_properties_not_an_array_is_refused() -> None:
    assert violations(event(properties={"name": "a", "value": "b"})) == ["properties"]


# --- unknown fields ---------------------------------------------------------------------


def test_unknown_top_level_fields_are_ignored_but_kept_in_raw() -> None:
    obj = event(futureField={"nested": [1, 2.5, None]}, anotherOne="x", invalidLooking=-1)
    result = accepted(obj)
    dumped = canonical_payload(result.event)
    assert "futureField" not in dumped
    assert "anotherOne" not in dumped
    assert json.loads(result.raw)["futureField"] == {"nested": [1, 2.5, None]}


# --- text Postgres cannot store -----------------------------------------------------------

TEXT_FIELDS = [
    pytest.param(lambda s: {"description": s}, "description", id="description"),
    pytest.param(lambda s: {"operatingSite": s}, "operatingSite", id="operatingSite"),
    pytest.param(lambda s: {"taxLocation": {"city": s}}, "taxLocation.city", id="tax.city"),
    pytest.param(
        lambda s: {"performanceLocation": {"region": s}},
        "performanceLocation.region",
        id="performance.region",
    ),
    pytest.param(
        lambda s: {"properties": [{"name": s, "value": "v"}]}, "properties.0.name", id="prop.name"
    ),
    pytest.param(
        lambda s: {"properties": [{"name": "n", "value": s}]}, "properties.0.value", id="prop.value"
    ),
]


@pytest.mark.parametrize(("place", "field"), TEXT_FIELDS)
@pytest.mark.parametrize(
    "text", ["a\u0000b", "a\ud800b", "\udfff"], ids=["nul", "lone-high-surrogate", "lone-low"]
)
def test_nul_and_lone_surrogates_are_refused(place: Any, field: str, text: str) -> None:
    raw = encode(event(**place(text)))  # json.dumps escapes both as \uXXXX
    assert b"\\u" in raw
    result = refused(raw)
    assert [(e.code, e.field) for e in result.errors] == [(ErrorCode.SCHEMA_VIOLATION, field)]


@pytest.mark.parametrize(("place", "field"), TEXT_FIELDS)
def test_surrogate_pair_is_accepted(place: Any, field: str) -> None:
    raw = encode(event(**place("a\U0001f600b")))
    assert b"\\ud83d\\ude00" in raw
    assert isinstance(validate_record(raw, MAX_BYTES), ValidEvent)


# --- the externalReference echoed in InvalidEvent ----------------------------------------


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        pytest.param(event(productIdent=""), "ref-1", id="other-field-invalid"),
        pytest.param(event(endDate="2000-01-01T00:00:00Z"), "ref-1", id="cross-field"),
        pytest.param(event(contractId=ABSENT), "ref-1", id="debtor-missing"),
        pytest.param(event(externalReference="has space"), "has space", id="pattern-but-string"),
        pytest.param(event(externalReference="x" * 101), "x" * 101, id="too-long-but-string"),
        pytest.param(event(externalReference=5), None, id="number"),
        pytest.param(event(externalReference=None), None, id="null"),
        pytest.param(event(externalReference=""), None, id="empty"),
        pytest.param(event(externalReference=ABSENT), None, id="absent"),
        pytest.param(event(externalReference="a\u0000b"), None, id="nul"),
        pytest.param(event(externalReference="a\ud800b"), None, id="lone-surrogate"),
    ],
)
def test_readable_external_reference_is_echoed(obj: dict[str, Any], expected: str | None) -> None:
    assert refused(obj).external_reference == expected


def test_usage_date_is_the_utc_date_of_start_date() -> None:
    result = accepted(event(startDate="2026-11-22T23:30:00-02:00", endDate="2026-11-23T02:00:00Z"))
    assert result.usage_date == date(2026, 11, 23)


@pytest.mark.parametrize(
    ("instant", "text"),
    [
        (datetime(2026, 11, 22, 10, 0, tzinfo=UTC), "2026-11-22T10:00:00.000000Z"),
        (
            datetime(2026, 11, 22, 11, 0, 0, 5, tzinfo=timezone(timedelta(hours=1))),
            "2026-11-22T10:00:00.000005Z",
        ),
        # Four-digit years before 1000 too, as RFC 3339 requires.
        (datetime(998, 12, 31, 22, 0, tzinfo=UTC), "0998-12-31T22:00:00.000000Z"),
    ],
)
def test_instants_are_written_in_one_rfc3339_form(instant: datetime, text: str) -> None:
    assert format_utc_micros(instant) == text


@hypothesis_settings(400)
@given(instant=st.datetimes(timezones=st.timezones()))
def test_format_utc_writes_what_isoformat_would(instant: datetime) -> None:
    as_utc = instant.astimezone(UTC)
    assert format_utc_micros(instant) == as_utc.isoformat(timespec="microseconds")[:-6] + "Z"


def _spellings() -> st.SearchStrategy[str]:
    """Date-times as producers write them: any fraction length, Z, offsets, none."""
    fraction = st.sampled_from(["", ".5", ".123", ".123456", ".1234567", ",25"])
    zone = st.sampled_from(["Z", "z", "", "+01:00", "-05:30", "+23:59", "+01", "+0100", "+24:00"])
    return st.builds(
        lambda moment, frac, tz: moment.strftime("%Y-%m-%dT%H:%M:%S") + frac + tz,
        # Naive on purpose: the offset is written after, as text.
        st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),  # noqa: DTZ001
        fraction,
        zone,
    )


@hypothesis_settings(600)
@given(text=_spellings())
def test_parse_instant_is_parse_date_time_and_format_utc(text: str) -> None:
    try:
        expected = parse_date_time(text)
    except ValueError:
        with pytest.raises(ValueError, match=r"date-time|offset"):
            parse_date_time_with_text(text)
        return
    assert parse_date_time_with_text(text) == (expected, format_utc_micros(expected))
