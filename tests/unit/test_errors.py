"""The error codes and their `retryable` flag are a public contract (SPEC.md §5)."""

from __future__ import annotations

import pytest

from usage_ingest.errors import ErrorCode, WarningCode

# SPEC.md §5, "Error codes", written out: code -> retryable.
SPEC_TABLE: dict[str, bool] = {
    "MALFORMED_MESSAGE": False,
    "MESSAGE_TOO_LARGE": False,
    "SCHEMA_VIOLATION": False,
    "UNKNOWN_OPERATING_SITE": True,
    "UNKNOWN_PRODUCT": True,
    "UNKNOWN_CONTRACT": True,
    "CONTRACT_NOT_ACTIVE": True,
    "NO_MATCHING_CONTRACT": True,
    "NO_INVENTORY": True,
    "EXTERNAL_REFERENCE_CONFLICT": False,
}


def test_the_codes_are_exactly_those_of_the_spec() -> None:
    assert sorted(code.value for code in ErrorCode) == sorted(SPEC_TABLE)


@pytest.mark.parametrize(("code", "retryable"), SPEC_TABLE.items())
def test_retryable_flag_matches_the_spec(code: str, retryable: bool) -> None:
    assert ErrorCode(code).retryable is retryable


@pytest.mark.parametrize("code", SPEC_TABLE)
def test_code_value_is_its_name(code: str) -> None:
    """Published as the string itself, e.g. in JSON and dead-letter headers."""
    assert ErrorCode[code].value == code
    assert str(ErrorCode[code]) == code


def test_deprecated_field_warning_code() -> None:
    assert WarningCode.DEPRECATED_FIELD.value == "DEPRECATED_FIELD"
