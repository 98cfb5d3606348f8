"""`validation`'s two paths agree: whatever the fast path accepts, the exact path accepts
as the same event, with the same raw text, warnings and hash; whatever it gives up on,
the exact path decides. And the fast path does take the common record."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.strategies import (
    hostile_records,
    hypothesis_settings,
    numbers_anywhere,
    valid_events,
)
from usage_ingest.domain import validation
from usage_ingest.domain.validation import InvalidEvent, ValidEvent

MAX_BYTES = 65536


def assert_paths_agree(raw: bytes) -> ValidEvent | None:
    fast = validation._fast_path(raw)
    exact = validation._exact_path(raw)
    if fast is None:
        return None
    assert isinstance(exact, ValidEvent), (raw[:300], exact)
    assert fast == exact, raw[:300]
    assert repr(fast.event) == repr(exact.event), "same values, spelled differently"
    return fast


@hypothesis_settings(600)
@given(obj=valid_events(), ascii_only=st.booleans(), indent=st.sampled_from([None, 1]))
def test_the_paths_agree_on_valid_events(
    obj: dict[str, Any], ascii_only: bool, indent: Any
) -> None:
    assert_paths_agree(json.dumps(obj, ensure_ascii=ascii_only, indent=indent).encode())


@hypothesis_settings(1500)
@given(hostile_records)
def test_the_paths_agree_on_hostile_records(raw: bytes) -> None:
    assert_paths_agree(raw)


@hypothesis_settings(600)
@given(numbers_anywhere())
def test_the_paths_agree_on_numbers_of_every_shape(raw: bytes) -> None:
    assert_paths_agree(raw)


COMMON: dict[str, Any] = {
    "externalReference": "call-2026-11-22-000123",
    "contractId": 7,
    "productIdent": "voice.uk",
    "description": "Call to +44 20 7946 5928",
    "startDate": "2026-11-22T10:00:00+01:00",
    "endDate": "2026-11-22T10:04:30Z",
    "operatingSite": "GB-LON",
    "taxLocation": {"country": "gb", "city": "London", "postalCode": "EC1A 1BB"},
    "performanceLocation": {"country": "GBR"},
    "unitQuantities": [{"unit": "minute", "quantity": "4.5"}, {"unit": "sms", "quantity": 2}],
    "properties": [{"name": "callingNumber", "value": "441234567890"}],
}


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({}, id="common"),
        pytest.param({"contractId": None, "debtorId": 3}, id="by-debtor"),
        pytest.param({"futureField": {"nested": [1, 2.5, None, "x:y"]}}, id="unknown-field"),
        pytest.param({"serviceCountry": "DE", "taxLocation": None}, id="service-country"),
        pytest.param({"unitQuantities": [], "properties": []}, id="empty-lists"),
        pytest.param({"description": "Anruf nach München"}, id="non-ascii"),
        pytest.param({"unitQuantities": [{"unit": "mb", "quantity": 1.25e3}]}, id="exponent"),
        pytest.param({"description": None, "operatingSite": None}, id="given-null"),
        pytest.param({"startDate": "2026-11-22T09:00:00.25Z"}, id="fraction"),
    ],
)
def test_the_fast_path_takes_the_common_record(changes: dict[str, Any]) -> None:
    raw = json.dumps({**COMMON, **changes}, ensure_ascii=False).encode()
    assert assert_paths_agree(raw) is not None


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b'{"externalReference": "a", "externalReference": "a"}', id="top"),
        pytest.param(
            json.dumps(COMMON).replace('"city": "London"', '"city": "London", "city": "x"'),
            id="nested",
        ),
        pytest.param(json.dumps(COMMON)[:-1] + ', "x": {"a": 1, "a": 1}}', id="unknown-field"),
        pytest.param(json.dumps(COMMON)[:-1] + ', "x": [{"a:b": 1, "a:b": 2}]}', id="colon-key"),
        # A key given null and one repeated: the decoded record is two keys short.
        pytest.param(
            json.dumps({**COMMON, "description": None})[:-1] + ', "productIdent": "data.uk"}',
            id="null-and-repeat",
        ),
        pytest.param(
            json.dumps(COMMON).replace('"unit": "sms"', '"unit": "sms", "unit": "mb"'),
            id="in-a-list",
        ),
    ],
)
def test_the_fast_path_leaves_repeated_keys_to_the_exact_path(raw: str | bytes) -> None:
    value = raw if isinstance(raw, bytes) else raw.encode()
    assert validation._fast_path(value) is None
    result = validation.validate_record(value, MAX_BYTES)
    assert isinstance(result, InvalidEvent)
    assert [e.code.value for e in result.errors] == ["MALFORMED_MESSAGE"]


@pytest.mark.parametrize(
    "escaped",
    [
        pytest.param("caf\\u00e9", id="escaped-letter"),
        pytest.param("a\\u003ab", id="escaped-colon"),
        pytest.param("nul\\u0000", id="nul"),
        pytest.param("\\ud800", id="lone-surrogate"),
    ],
)
def test_the_exact_path_decides_records_with_unicode_escapes(escaped: str) -> None:
    without = {name: value for name, value in COMMON.items() if name != "description"}
    raw = json.dumps(without)[:-1].encode() + f', "description": "{escaped}"}}'.encode()
    assert validation._fast_path(raw) is None
    result = validation.validate_record(raw, MAX_BYTES)
    if escaped in {"nul\\u0000", "\\ud800"}:
        assert isinstance(result, InvalidEvent)
        assert [e.field for e in result.errors] == ["description"]
    else:
        assert isinstance(result, ValidEvent)
        assert result.event.description == json.loads(f'"{escaped}"')
