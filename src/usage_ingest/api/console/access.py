"""The console's access tokens, pure: session tokens and their stored hash, the CSRF
token derived from a session (or pre-session) token, the cookies that carry them, and
the same-origin check of a state-changing request.

A session token is 256 random bits, kept only in an HttpOnly cookie; the database keeps
its SHA-256 (`store.console_sessions`). The CSRF token is an HMAC of that token: a page
can carry it (a hidden field, an htmx header) without carrying the session, another site
cannot read it, and any API process can check it with no shared secret of its own.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from starlette.responses import Response

SESSION_COOKIE: Final = "usage_ingest_console"
# Before signing in: the double-submit token of the sign-in form.
SIGN_IN_COOKIE: Final = "usage_ingest_console_sign_in"
COOKIE_PATH: Final = "/console"
CSRF_FIELD: Final = "csrf"
CSRF_HEADER: Final = "X-CSRF-Token"
SESSION_TTL_S: Final = 8 * 3600
SIGN_IN_TTL_S: Final = 3600
_TOKEN_BYTES = 32
_CSRF_PURPOSE = b"usage-ingest console csrf v1"


def new_token() -> str:
    return secrets.token_urlsafe(_TOKEN_BYTES)


def token_hash(token: str) -> str:
    """What the store keeps of a session token."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def csrf_token(token: str) -> str:
    """The CSRF token of a session (or sign-in) token."""
    key = token.encode("utf-8", "surrogateescape")
    return hmac.new(key, _CSRF_PURPOSE, hashlib.sha256).hexdigest()


def csrf_matches(token: str | None, presented: str | None) -> bool:
    """Whether `presented` is the CSRF token of `token`, compared in constant time."""
    if not token or not presented:
        return False
    return hmac.compare_digest(csrf_token(token), presented)


@dataclass(frozen=True, slots=True)
class Cookie:
    """A cookie as `Response.set_cookie` takes it: HttpOnly, SameSite=Strict, under
    /console only; Secure when the request came over https."""

    key: str
    value: str
    max_age: int
    secure: bool

    def set_on(self, response: Response) -> None:
        response.set_cookie(
            key=self.key,
            value=self.value,
            max_age=self.max_age,
            path=COOKIE_PATH,
            secure=self.secure,
            httponly=True,
            samesite="strict",
        )


def session_cookie(token: str, *, secure: bool) -> Cookie:
    return Cookie(SESSION_COOKIE, token, SESSION_TTL_S, secure)


def sign_in_cookie(token: str, *, secure: bool) -> Cookie:
    return Cookie(SIGN_IN_COOKIE, token, SIGN_IN_TTL_S, secure)


def presented_origin(headers: Mapping[str, str]) -> str:
    """The request's `Origin`, or without one its `Referer` (empty without either)."""
    return (headers.get("origin") or headers.get("referer") or "").strip()


def same_origin(headers: Mapping[str, str], scheme: str) -> bool:
    """Whether a state-changing request comes from a page of this host: its `Origin`
    (or, without one, its `Referer`) names the scheme and the host the request was sent
    to. A request with neither is refused: every browser sends `Origin` with a POST.

    `scheme` is the request's own, as the server sees it: behind a proxy that terminates
    TLS, https only when the proxy is trusted (`api_forwarded_allow_ips`)."""
    host = headers.get("host", "").strip().lower()
    origin = presented_origin(headers)
    if not host or not origin or origin == "null":
        return False
    parts = urlsplit(origin)
    return parts.scheme == scheme.lower() and parts.netloc.lower() == host
