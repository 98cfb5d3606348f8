"""The canonical payload and its hash (SPEC.md §6).

Two events that mean the same usage hash the same, whatever their spelling;
any real change to the usage changes the hash.
"""

from __future__ import annotations

import json
import random
import string
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.strategies import offsets, valid_events
from usage_ingest.domain.messages import format_decimal
from usage_ingest.domain.validation import (
    ValidEvent,
    canonical_payload,
    canonical_text,
    validate_record,
)

MAX_BYTES = 65536
ABSENT = object()

BASE: dict[str, Any] = {
    "externalReference": "ref-1",
    "contractId": 7,
    "productIdent": "voice.uk",
    "description": "calls",
    "startDate": "2026-11-22T10:00:00Z",
    "endDate": "2026-11-22T10:05:00Z",
    "unitQuantities": [{"unit": "minute", "quantity": "1.5"}, {"unit": "sms", "quantity": 3}],
    "properties": [{"name": "a", "value": "1"}, {"name": "b", "value": "2"}],
}


def event(**changes: Any) -> dict[str, Any]:
    result = json.loads(json.dumps(BASE))
    for name, value in changes.items():
        if value is ABSENT:
            result.pop(name, None)
        else:
            result[name] = value
    return result


def valid(raw: bytes | dict[str, Any]) -> ValidEvent:
    value = raw if isinstance(raw, bytes) else json.dumps(raw).encode()
    result = validate_record(value, MAX_BYTES)
    assert isinstance(result, ValidEvent), result
    return result


def hash_of(raw: bytes | dict[str, Any]) -> str:
    return valid(raw).payload_hash


BASE_HASH = hash_of(BASE)


def test_hash_is_hex_sha256() -> None:
    assert len(BASE_HASH) == 64
    assert set(BASE_HASH) <= set(string.hexdigits.lower())


def test_hash_is_stable_across_calls() -> None:
    assert hash_of(event()) == hash_of(event()) == BASE_HASH


# --- semantically equal events: same hash -----------------------------------------


def test_key_order_does_not_matter() -> None:
    reordered = dict(reversed(list(event().items())))
    reordered["unitQuantities"] = [dict(reversed(list(q.items()))) for q in BASE["unitQuantities"]]
    assert list(reordered) != list(BASE)
    assert hash_of(reordered) == BASE_HASH


@pytest.mark.parametrize(
    "dump",
    [
        lambda o: json.dumps(o, indent=4),
        lambda o: json.dumps(o, separators=(",", ":")),
        lambda o: "\n\t " + json.dumps(o, separators=(" , ", " : ")) + " \r\n",
    ],
    ids=["indented", "compact", "odd-whitespace"],
)
def test_whitespace_does_not_matter(dump: Any) -> None:
    assert hash_of(dump(event()).encode()) == BASE_HASH


def test_escaped_and_literal_unicode_hash_the_same() -> None:
    obj = event(description="café ☕")
    escaped = json.dumps(obj).encode()
    literal = json.dumps(obj, ensure_ascii=False).encode()
    assert escaped != literal
    assert hash_of(escaped) == hash_of(literal)


@pytest.mark.parametrize(
    "spelling", ["1.5", "1.50", '"1.5"', '"1.50"', "1.5E0", "1.5e0", "15E-1", '"15e-1"', '"+1.5"']
)
def test_quantity_spelling_does_not_matter(spelling: str) -> None:
    raw = json.dumps(event()).replace('"quantity": "1.5"', f'"quantity": {spelling}')
    assert spelling in raw
    assert hash_of(raw.encode()) == BASE_HASH


@pytest.mark.parametrize("spelling", ["3", "3.0", '"3"', '"3.000"', "3E0", "0.3e1", '"300e-2"'])
def test_integer_quantity_spelling_does_not_matter(spelling: str) -> None:
    raw = json.dumps(event()).replace('"quantity": 3', f'"quantity": {spelling}')
    assert hash_of(raw.encode()) == BASE_HASH


@pytest.mark.parametrize("zero", ["0", "0.0", '"0"', '"-0"', '"0.000"', "0E5", "-0.0"])
def test_zero_quantity_spelling_does_not_matter(zero: str) -> None:
    reference = hash_of(event(unitQuantities=[{"unit": "minute", "quantity": 0}]))
    raw = json.dumps(event(unitQuantities=[{"unit": "minute", "quantity": "Q"}]))
    assert hash_of(raw.replace('"Q"', zero).encode()) == reference


@pytest.mark.parametrize(
    ("start", "end"),
    [
        ("2026-11-22T12:00:00+02:00", "2026-11-22T12:05:00+02:00"),
        ("2026-11-22T05:00:00-05:00", "2026-11-22T10:05:00+00:00"),
        ("2026-11-22T10:00:00", "2026-11-22T10:05:00"),
        ("2026-11-22T10:00:00.000Z", "2026-11-22T10:05:00.000000Z"),
        ("2026-11-22T10:00:00+00:00", "2026-11-22T15:35:00+05:30"),
        ("2026-11-22 10:00:00Z", "2026-11-22T10:05Z"),
    ],
    ids=["+02:00", "-05:00", "no-offset", "fractions-of-zero", "+00:00/+05:30", "short-forms"],
)
def test_same_instant_in_another_form_does_not_matter(start: str, end: str) -> None:
    assert hash_of(event(startDate=start, endDate=end)) == BASE_HASH


def test_unknown_fields_do_not_matter() -> None:
    assert hash_of(event(futureField={"x": [1, 2]}, trace="abc", version=2)) == BASE_HASH


def test_unit_quantities_order_does_not_matter() -> None:
    swapped = list(reversed(BASE["unitQuantities"]))
    assert hash_of(event(unitQuantities=swapped)) == BASE_HASH


def test_properties_order_does_not_matter() -> None:
    swapped = list(reversed(BASE["properties"]))
    assert hash_of(event(properties=swapped)) == BASE_HASH


@pytest.mark.parametrize("debtor_id", [3, 4, None], ids=["3", "4", "null"])
def test_debtor_id_does_not_matter_when_contract_id_given(debtor_id: int | None) -> None:
    assert hash_of(event(debtorId=debtor_id)) == BASE_HASH


@pytest.mark.parametrize("name", ["description", "operatingSite", "taxLocation", "unitQuantities"])
def test_null_and_absent_are_the_same(name: str) -> None:
    """Defaults are applied: an absent optional field is its default, null."""
    assert hash_of(event(**{name: None})) == hash_of(event(**{name: ABSENT}))


def test_location_with_null_members_equals_location_without_them() -> None:
    explicit = {"country": "GB", "region": None, "city": None, "postalCode": None}
    assert hash_of(event(taxLocation=explicit)) == hash_of(event(taxLocation={"country": "GB"}))


def test_service_country_equals_the_explicit_locations_it_defaults_to() -> None:
    deprecated = event(serviceCountry="GB")
    explicit = event(taxLocation={"country": "GB"}, performanceLocation={"country": "GB"})
    assert hash_of(deprecated) == hash_of(explicit)


def test_service_country_with_one_location_equals_both_explicit() -> None:
    deprecated = event(serviceCountry="GB", taxLocation={"country": "DE", "city": "Berlin"})
    explicit = event(
        taxLocation={"country": "DE", "city": "Berlin"}, performanceLocation={"country": "GB"}
    )
    assert hash_of(deprecated) == hash_of(explicit)


# --- real changes: different hash --------------------------------------------------------

CHANGES = [
    pytest.param({"externalReference": "ref-2"}, id="externalReference"),
    pytest.param({"contractId": 8}, id="contractId"),
    pytest.param({"contractId": ABSENT, "debtorId": 3}, id="contract-to-debtor"),
    pytest.param({"productIdent": "voice.de"}, id="productIdent"),
    pytest.param({"description": "other calls"}, id="description"),
    pytest.param({"description": None}, id="description-removed"),
    pytest.param({"startDate": "2026-11-22T10:00:01Z"}, id="startDate-1s"),
    pytest.param({"startDate": "2026-11-22T10:00:00.000001Z"}, id="startDate-1us"),
    pytest.param({"endDate": "2026-11-22T10:06:00Z"}, id="endDate"),
    pytest.param({"startDate": "2026-11-22T10:00:00+01:00"}, id="same-wall-clock-other-offset"),
    pytest.param({"operatingSite": "GB-LON"}, id="operatingSite"),
    pytest.param({"taxLocation": {"country": "GB"}}, id="taxLocation"),
    pytest.param({"performanceLocation": {"city": "London"}}, id="performanceLocation"),
    pytest.param(
        {"unitQuantities": [{"unit": "minute", "quantity": "1.6"}, {"unit": "sms", "quantity": 3}]},
        id="quantity",
    ),
    pytest.param(
        {"unitQuantities": [{"unit": "minute", "quantity": "15"}, {"unit": "sms", "quantity": 3}]},
        id="quantity-x10",
    ),
    pytest.param(
        {"unitQuantities": [{"unit": "second", "quantity": "1.5"}, {"unit": "sms", "quantity": 3}]},
        id="unit",
    ),
    pytest.param({"unitQuantities": [{"unit": "minute", "quantity": "1.5"}]}, id="item-removed"),
    pytest.param({"unitQuantities": None}, id="quantities-removed"),
    pytest.param(
        {"properties": [{"name": "a", "value": "1"}, {"name": "b", "value": "3"}]},
        id="property-value",
    ),
    pytest.param(
        {"properties": [{"name": "a", "value": "1"}, {"name": "c", "value": "2"}]},
        id="property-name",
    ),
    pytest.param({"properties": None}, id="properties-removed"),
]


@pytest.mark.parametrize("change", CHANGES)
def test_a_real_change_changes_the_hash(change: dict[str, Any]) -> None:
    assert hash_of(event(**change)) != BASE_HASH


def test_debtor_id_matters_when_no_contract_id() -> None:
    assert hash_of(event(contractId=ABSENT, debtorId=3)) != hash_of(
        event(contractId=ABSENT, debtorId=4)
    )


def test_service_country_other_than_the_explicit_locations_changes_the_hash() -> None:
    assert hash_of(event(serviceCountry="GB")) != hash_of(event(serviceCountry="DE"))


# --- the canonical payload itself ---------------------------------------------------------


def test_canonical_payload_normal_form() -> None:
    raw = json.dumps(
        event(
            startDate="2026-11-22T12:00:00+02:00",
            debtorId=3,
            extra="dropped",
            unitQuantities=[
                {"unit": "sms", "quantity": "3.00"},
                {"unit": "minute", "quantity": 1.5},
            ],
        )
    )
    payload = canonical_payload(valid(raw.encode()).event)
    assert payload["startDate"] == "2026-11-22T10:00:00.000000Z"
    assert payload["unitQuantities"] == [
        {"unit": "minute", "quantity": "1.5"},
        {"unit": "sms", "quantity": "3"},
    ]
    assert payload["debtorId"] is None
    assert "extra" not in payload
    assert payload["contractId"] == 7


def test_canonical_quantities_are_exact_decimals_never_floats() -> None:
    raw = json.dumps(event(unitQuantities=[{"unit": "minute", "quantity": "Q"}]))
    raw = raw.replace('"Q"', "0.1000000000010")
    payload = canonical_payload(valid(raw.encode()).event)
    assert payload["unitQuantities"] == [{"unit": "minute", "quantity": "0.100000000001"}]
    quantity = valid(raw.encode()).event.unit_quantities[0].quantity  # type: ignore[index]
    assert quantity == Decimal("0.100000000001")


# --- property: re-serialising a valid event never changes its hash ---------------------


def shuffled(value: Any, rng: random.Random) -> Any:
    """The same JSON value with every object's keys and every list of items reordered
    where order carries no meaning (unitQuantities, properties)."""
    if isinstance(value, dict):
        items = list(value.items())
        rng.shuffle(items)
        result = {}
        for key, item in items:
            copy = shuffled(item, rng)
            if key in {"unitQuantities", "properties"} and isinstance(copy, list):
                rng.shuffle(copy)
            result[key] = copy
        return result
    if isinstance(value, list):
        return [shuffled(item, rng) for item in value]
    return value


def respelled(obj: dict[str, Any], offset: timezone) -> dict[str, Any]:
    """The same event spelled differently: instants in another offset, string
    quantities with trailing zeros."""
    result = dict(obj)
    for name in ("startDate", "endDate"):
        result[name] = datetime.fromisoformat(obj[name]).astimezone(offset).isoformat()
    result["unitQuantities"] = [
        {**item, "quantity": item["quantity"] + ("00" if "." in item["quantity"] else ".000")}
        if isinstance(item["quantity"], str)
        else item
        for item in obj["unitQuantities"]
    ]
    return result


@settings(database=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(obj=valid_events(), rng=st.randoms(use_true_random=False), indent=st.sampled_from([None, 2]))
def test_reserialising_with_shuffled_keys_keeps_the_hash(
    obj: dict[str, Any], rng: random.Random, indent: int | None
) -> None:
    original = valid(json.dumps(obj).encode())
    again = json.dumps(shuffled(obj, rng), indent=indent, ensure_ascii=rng.random() < 0.5)
    assert valid(again.encode()).payload_hash == original.payload_hash


@settings(database=None, max_examples=100)
@given(obj=valid_events(), offset=offsets)
def test_respelling_dates_and_quantities_keeps_the_hash(
    obj: dict[str, Any], offset: timezone
) -> None:
    original = valid(json.dumps(obj).encode())
    assert valid(json.dumps(respelled(obj, offset)).encode()).payload_hash == original.payload_hash


@settings(database=None, max_examples=300)
@given(obj=valid_events())
def test_canonical_text_is_byte_for_byte_what_json_dumps_writes(obj: dict[str, Any]) -> None:
    """The fast serialiser must write exactly the text of the reference definition: every
    stored hash was computed from it."""
    event = valid(json.dumps(obj).encode()).event
    expected = json.dumps(
        canonical_payload(event), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    assert canonical_text(event) == expected.encode("utf-8")


# --- stability: stored hashes must match re-deliveries after any upgrade -------------------

TRICKY_TEXT = 'café ☃ "q" \\ \n\t\x01\x7f\u2028 𝄞'


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (BASE, "f99a1fa1b198f516b29a2cdb2ac54c3e09c3134867ea4888fb046a53250e00f9"),
        (
            event(
                description=TRICKY_TEXT,
                serviceCountry="gb",
                startDate="2026-01-01T00:00:00+02:00",
                endDate="2026-11-22T10:05:00.123456Z",
                debtorId=4,
                contractId=ABSENT,
                operatingSite="GB-LON",
                properties=[{"name": TRICKY_TEXT, "value": "x"}],
            ),
            "d30aa9054193df518d08ae8d6f280506b0b5238b8f16f125a1d36b1df7a031cd",
        ),
    ],
)
def test_the_hash_of_a_known_event_never_changes(raw: dict[str, Any], expected: str) -> None:
    assert hash_of(raw) == expected


@settings(database=None, max_examples=500)
@given(
    st.decimals(allow_nan=False, allow_infinity=False, places=None).filter(
        lambda d: abs(d.adjusted()) < 40
    )
)
def test_format_decimal_writes_what_the_f_format_writes(value: Decimal) -> None:
    """Quantities are written in the canonical text by `format_decimal`, which takes a
    shortcut through str(): it must agree with format(value, "f") everywhere."""
    assert format_decimal(value) == format(value, "f")
