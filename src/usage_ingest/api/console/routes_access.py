"""Signing in to the console with an API key, and signing out.

The key is checked as the API checks it (`api.keys`, the stored hash, not revoked) and
must hold USAGE.READ. It is read from the form's body only: never from a URL, never put
in a cookie, a page or a log line. What the browser gets is a session token.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from usage_ingest.api.console import access
from usage_ingest.api.console.pages import ConsoleRoute, render, see_other
from usage_ingest.api.console.session import (
    UserDep,
    check_csrf,
    check_origin,
    posted_form,
    read_form,
)
from usage_ingest.api.deps import get_store
from usage_ingest.api.keys import Permission
from usage_ingest.api.security import KEY_ID_SCOPE, known_key

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)

_ENDED = {
    "expired": "The session ended: sign in again.",
    "revoked": "The session ended: its API key was revoked.",
    "signed-out": "Signed out.",
}


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def _sign_in_page(
    request: Request, token: str, problem: str | None = None, status: int = 200
) -> Response:
    notice = _ENDED.get(request.query_params.get("ended", ""))
    context = {"user": None, "csrf": access.csrf_token(token), "problem": problem}
    response = render(request, "sign_in.html", {**context, "notice": notice}, status)
    access.sign_in_cookie(token, secure=_secure(request)).set_on(response)
    return response


@router.get("/console/sign-in")
async def sign_in_form(request: Request) -> Response:
    token = request.cookies.get(access.SIGN_IN_COOKIE) or access.new_token()
    return _sign_in_page(request, token)


@router.post("/console/sign-in")
async def sign_in(request: Request) -> Response:
    check_origin(request)
    form = await read_form(request)
    pre_session = request.cookies.get(access.SIGN_IN_COOKIE)
    check_csrf(request, pre_session, form)
    assert pre_session is not None  # checked by check_csrf
    key = form.get("key", [""])[0].strip()
    record = await known_key(get_store(request), key) if key else None
    if record is None:
        return _sign_in_page(request, pre_session, "The API key is unknown or revoked.", 401)
    request.scope[KEY_ID_SCOPE] = record.key_id
    if Permission.USAGE_READ.value not in record.permissions:
        problem = f"The API key {record.key_id} lacks the permission USAGE.READ."
        return _sign_in_page(request, pre_session, problem, 403)
    token = access.new_token()
    await get_store(request).create_console_session(
        access.token_hash(token), record.key_id, access.SESSION_TTL_S
    )
    response = see_other(request, "/console")
    access.session_cookie(token, secure=_secure(request)).set_on(response)
    response.delete_cookie(access.SIGN_IN_COOKIE, path=access.COOKIE_PATH)
    return response


@router.post("/console/sign-out")
async def sign_out(request: Request, user: UserDep) -> Response:
    await posted_form(request, user)
    await get_store(request).delete_console_session(access.token_hash(user.session_token))
    response = see_other(request, f"{access.COOKIE_PATH}/sign-in?ended=signed-out")
    response.delete_cookie(access.SESSION_COOKIE, path=access.COOKIE_PATH)
    return response
