"""API keys: their form, their hash, and the constant-time check (no I/O)."""

from __future__ import annotations

import hashlib

import pytest

from usage_ingest.api import keys as api_keys
from usage_ingest.api.keys import Permission


def test_permissions_are_those_of_the_spec_and_the_consoles_replay() -> None:
    assert {p.value for p in Permission} == {
        "DEAD_LETTER.REPLAY",
        "USAGE.CREATE",
        "USAGE.READ",
        "USAGE_PRODUCT_INVENTORY.CREATE",
        "USAGE_PRODUCT_INVENTORY.READ",
        "USAGE_PRODUCT_INVENTORY.UPDATE",
        "PRODUCT_ITEM.CREATE",
        "CONTRACT.WRITE",
    }


def test_a_new_key_names_its_id_and_is_stored_as_its_sha256() -> None:
    new = api_keys.generate()
    assert new.key.startswith(f"uik_{new.key_id}_")
    assert api_keys.key_id_of(new.key) == new.key_id
    assert new.key_hash == hashlib.sha256(new.key.encode()).hexdigest()
    assert new.key.split("_", 2)[2] not in new.key_hash
    assert api_keys.matches(new.key, new.key_hash)


def test_keys_are_random() -> None:
    keys = {api_keys.generate().key for _ in range(100)}
    assert len(keys) == 100


def test_a_wrong_or_unknown_key_does_not_match() -> None:
    new, other = api_keys.generate(), api_keys.generate()
    assert not api_keys.matches(other.key, new.key_hash)
    assert not api_keys.matches(new.key[:-1] + "x", new.key_hash)
    assert not api_keys.matches(new.key, None)
    # No stored hash: the comparison is made all the same, and fails.
    assert not api_keys.matches("0" * 64, None)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "uik_",
        "uik_0123456789ab",
        "uik_0123456789AB_" + "a" * 43,
        "uik_0123456789ab_" + "a" * 42,
        "uik_0123456789ab_" + "a" * 44,
        "xyz_0123456789ab_" + "a" * 43,
        " uik_0123456789ab_" + "a" * 43,
        "uik_0123456789ab_" + "a" * 42 + "\n",
        "uik_0123456789ab_" + "a" * 42 + "é",
    ],
)
def test_malformed_keys_have_no_key_id(text: str) -> None:
    assert api_keys.key_id_of(text) is None
