"""API keys of the HTTP API: their form, their permissions, and how one is checked.

A key is `uik_<key id>_<secret>`: 12 hex characters that name the key (shown by
`usage-ingest api-key list`, not secret) and 256 random bits. Only the key's
SHA-256 is stored; a plain hash fits because the key is a high-entropy random
token, not a password. A presented key is looked up by its key id and its hash
compared in constant time. Keys are shown once, when created, and never logged.

Pure: no I/O (the store keeps the records).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from enum import StrEnum


class Permission(StrEnum):
    """What a key may do (SPEC-API.md); each endpoint needs one."""

    USAGE_CREATE = "USAGE.CREATE"
    USAGE_READ = "USAGE.READ"
    USAGE_PRODUCT_INVENTORY_CREATE = "USAGE_PRODUCT_INVENTORY.CREATE"
    USAGE_PRODUCT_INVENTORY_READ = "USAGE_PRODUCT_INVENTORY.READ"
    USAGE_PRODUCT_INVENTORY_UPDATE = "USAGE_PRODUCT_INVENTORY.UPDATE"
    PRODUCT_ITEM_CREATE = "PRODUCT_ITEM.CREATE"
    CONTRACT_WRITE = "CONTRACT.WRITE"
    # The operations console's replay of dead letters (browsing it needs USAGE.READ).
    DEAD_LETTER_REPLAY = "DEAD_LETTER.REPLAY"


KEY_PREFIX = "uik"
_KEY_ID_HEX_CHARS = 12
_SECRET_BYTES = 32
KEY_ID_PATTERN = re.compile(rf"^[0-9a-f]{{{_KEY_ID_HEX_CHARS}}}$")
_KEY = re.compile(rf"^{KEY_PREFIX}_([0-9a-f]{{{_KEY_ID_HEX_CHARS}}})_[A-Za-z0-9_-]{{43}}$")
# Compared against when a presented key names no stored key, so that an unknown
# key costs the same hash and comparison as a wrong one.
_NO_KEY_HASH = "0" * 64


@dataclass(frozen=True, slots=True)
class NewKey:
    key_id: str
    key: str  # shown once, never stored
    key_hash: str


def generate() -> NewKey:
    key_id = secrets.token_hex(_KEY_ID_HEX_CHARS // 2)
    key = f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(_SECRET_BYTES)}"
    return NewKey(key_id, key, hash_key(key))


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def key_id_of(key: str) -> str | None:
    """The key id of a well-formed key, or None."""
    match = _KEY.match(key)
    return match.group(1) if match else None


def matches(key: str, stored_hash: str | None) -> bool:
    """Whether `key` hashes to `stored_hash`, compared in constant time."""
    expected = stored_hash if stored_hash is not None else _NO_KEY_HASH
    return hmac.compare_digest(hash_key(key), expected) and stored_hash is not None
