"""The console's tokens and cookies, and the same-origin check of its POSTs."""

from __future__ import annotations

import re

import pytest
from starlette.responses import Response

from usage_ingest.api.console import access


def test_a_session_token_is_random_and_only_its_hash_is_kept() -> None:
    tokens = {access.new_token() for _ in range(100)}
    assert len(tokens) == 100
    token = tokens.pop()
    assert len(token) >= 43  # 256 bits, URL-safe base64
    digest = access.token_hash(token)
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert token not in digest


def test_the_csrf_token_is_bound_to_its_session() -> None:
    one, other = access.new_token(), access.new_token()
    csrf = access.csrf_token(one)
    assert access.csrf_matches(one, csrf)
    assert not access.csrf_matches(other, csrf)
    assert csrf != access.token_hash(one)  # the page's token does not name the session
    assert access.csrf_token(one) == csrf  # any process derives the same, no state


@pytest.mark.parametrize(
    ("token", "presented"), [(None, "x"), ("", "x"), ("t", None), ("t", ""), ("t", "0" * 64)]
)
def test_a_missing_or_wrong_csrf_token_does_not_match(
    token: str | None, presented: str | None
) -> None:
    assert not access.csrf_matches(token, presented)


def set_cookie(cookie: access.Cookie) -> str:
    response = Response()
    cookie.set_on(response)
    (header,) = response.headers.getlist("set-cookie")
    return header


def test_the_session_cookie_is_http_only_strict_and_under_console() -> None:
    header = set_cookie(access.session_cookie("tok", secure=False))
    parts = [p.strip() for p in header.split(";")]
    assert parts[0] == f"{access.SESSION_COOKIE}=tok"
    assert {"HttpOnly", "Path=/console", "SameSite=strict", f"Max-Age={8 * 3600}"} <= set(parts)
    assert "Secure" not in parts


def test_over_https_the_cookies_are_secure() -> None:
    for cookie in (
        access.session_cookie("t", secure=True),
        access.sign_in_cookie("t", secure=True),
    ):
        assert "Secure" in [p.strip() for p in set_cookie(cookie).split(";")]


@pytest.mark.parametrize(
    ("headers", "scheme", "same"),
    [
        ({"host": "ops.example:8080", "origin": "http://ops.example:8080"}, "http", True),
        ({"host": "ops.example", "origin": "https://OPS.example"}, "https", True),
        ({"host": "ops.example", "referer": "https://ops.example/console/replay"}, "https", True),
        ({"host": "ops.example", "origin": "https://ops.example:8443"}, "https", False),
        ({"host": "ops.example", "origin": "https://evil.example"}, "https", False),
        ({"host": "ops.example", "origin": "https://ops.example.evil.example"}, "https", False),
        ({"host": "ops.example", "origin": "null"}, "https", False),
        ({"host": "ops.example", "origin": "javascript://ops.example"}, "https", False),
        ({"host": "ops.example", "referer": "https://evil.example/?ops.example"}, "https", False),
        ({"host": "ops.example"}, "https", False),
        ({"origin": "http://ops.example"}, "http", False),
        # The same host under another scheme is another origin: a page served over
        # plain http (or a proxy the API does not trust) is refused.
        ({"host": "ops.example", "origin": "http://ops.example"}, "https", False),
        ({"host": "ops.example", "origin": "https://ops.example"}, "http", False),
        ({"host": "ops.example", "referer": "http://ops.example/console"}, "https", False),
    ],
)
def test_only_a_page_of_this_origin_may_post(
    headers: dict[str, str], scheme: str, same: bool
) -> None:
    assert access.same_origin(headers, scheme) is same
