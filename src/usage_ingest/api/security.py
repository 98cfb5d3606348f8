"""API-key authentication and permission checks (the keys themselves: `keys`).

An operation names the permission it needs in its OpenAPI `x-required-permission`
(`needs`) and declares the two ways a key is sent (`SECURED`); `GuardedRoute` calls
`authorize` before the body is read.
"""

from collections.abc import Iterable
from typing import Any

from fastapi import Request, Security
from fastapi.security import APIKeyHeader, HTTPBearer

from usage_ingest.api import keys as api_keys
from usage_ingest.api.deps import get_store
from usage_ingest.api.errors import ApiError, ApiErrorCode
from usage_ingest.api.keys import Permission
from usage_ingest.errors import UsageIngestError
from usage_ingest.store.api_keys import ApiKeyRecord
from usage_ingest.store.store import Store

# Where the key id of an authorized request is kept, for the request log.
KEY_ID_SCOPE = "usage_ingest.api_key_id"
PERMISSION_EXTENSION = "x-required-permission"

_API_KEY_HEADER = APIKeyHeader(
    name="X-API-KEY", auto_error=False, scheme_name="ApiKey", description="An API key."
)
_BEARER = HTTPBearer(
    auto_error=False, scheme_name="Bearer", description="An API key as a bearer token."
)
_WWW_AUTHENTICATE = {"WWW-Authenticate": 'Bearer realm="usage-ingest"'}

SECURED = [Security(_API_KEY_HEADER), Security(_BEARER)]


def needs(permission: Permission) -> dict[str, Any]:
    return {PERMISSION_EXTENSION: permission.value}


def _presented_key(request: Request) -> str | None:
    """X-API-KEY or a bearer token; None when neither holds anything. Both holding
    different keys is refused: which one speaks for the client would be a guess."""
    header = request.headers.get("x-api-key", "").strip()
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    bearer = credentials.strip() if scheme.lower() == "bearer" else ""
    if header and bearer and header != bearer:
        raise ApiError.one(
            401,
            ApiErrorCode.UNAUTHORIZED,
            "X-API-KEY and Authorization: Bearer carry different keys: send one",
            headers=_WWW_AUTHENTICATE,
        )
    return header or bearer or None


async def issue_key(store: Store, name: str, permissions: Iterable[str]) -> api_keys.NewKey:
    """Create a key named `name` with `permissions` and store its hash; the key itself
    is in the result only, to be shown once."""
    for _ in range(5):  # a taken key id (12 hex digits) is drawn again
        new = api_keys.generate()
        if await store.create_api_key(new.key_id, name, new.key_hash, sorted(set(permissions))):
            return new
    raise UsageIngestError("could not draw an unused key id")


async def known_key(store: Store, key: str) -> ApiKeyRecord | None:
    """The record of `key` when it names a stored key, matches its hash (compared in
    constant time, also for an unknown key id) and is not revoked; else None."""
    key_id = api_keys.key_id_of(key)
    record = await store.find_api_key(key_id) if key_id else None
    valid = api_keys.matches(key, record.key_hash if record else None)
    if record is None or not valid or record.revoked_at is not None:
        return None
    return record


async def authorize(request: Request, permission: Permission) -> None:
    store = get_store(request)
    key = _presented_key(request)
    if key is None:
        raise ApiError.one(
            401,
            ApiErrorCode.UNAUTHORIZED,
            "an API key is required: send it as X-API-KEY or Authorization: Bearer",
            headers=_WWW_AUTHENTICATE,
        )
    record = await known_key(store, key)
    if record is None:
        raise ApiError.one(
            401,
            ApiErrorCode.UNAUTHORIZED,
            "the API key is unknown or revoked",
            headers=_WWW_AUTHENTICATE,
        )
    request.scope[KEY_ID_SCOPE] = record.key_id
    if permission.value not in record.permissions:
        raise ApiError.one(
            403, ApiErrorCode.FORBIDDEN, f"the API key lacks the permission {permission.value}"
        )
