"""Who is using the console: the session behind the request's cookie, read again with
its key on every request (a revoked key ends it at once), the permissions a view needs,
and the CSRF and same-origin checks of every state-changing request.

The key id goes where the API's request log finds it (`KEY_ID_SCOPE`), so each console
request is logged with it, as an API request is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import parse_qs

import structlog
from fastapi import Depends, Request

from usage_ingest.api.console import access
from usage_ingest.api.console.pages import ConsoleProblem, SignInRequired
from usage_ingest.api.deps import get_store
from usage_ingest.api.keys import Permission
from usage_ingest.api.security import KEY_ID_SCOPE

log = structlog.get_logger("usage_ingest.api.console")

FORM_MEDIA_TYPE = "application/x-www-form-urlencoded"
# Far more than any console form has (the replay form's references are one field).
MAX_FORM_FIELDS = 1000


@dataclass(frozen=True, slots=True)
class ConsoleUser:
    """The signed-in key, as every page shows it (its id and name, never the key)."""

    key_id: str
    key_name: str
    permissions: frozenset[str]
    session_token: str

    @property
    def csrf(self) -> str:
        return access.csrf_token(self.session_token)

    def can(self, permission: Permission) -> bool:
        return permission.value in self.permissions

    @property
    def can_replay(self) -> bool:
        return self.can(Permission.DEAD_LETTER_REPLAY)


def lacks(permission: Permission, user: ConsoleUser | None = None) -> ConsoleProblem:
    return ConsoleProblem(
        403,
        "Not allowed",
        f"the API key lacks the permission {permission.value}",
        user,
    )


async def current_user(request: Request) -> ConsoleUser:
    """The session's key, if the session lives, the key is not revoked and may read."""
    token = request.cookies.get(access.SESSION_COOKIE)
    if not token:
        raise SignInRequired()
    store = get_store(request)
    session = await store.find_console_session(access.token_hash(token))
    if session is None:
        raise SignInRequired("expired")
    request.scope[KEY_ID_SCOPE] = session.key_id
    if session.key_revoked:
        await store.delete_console_session(access.token_hash(token))
        raise SignInRequired("revoked")
    user = ConsoleUser(session.key_id, session.key_name, frozenset(session.permissions), token)
    request.state.user = user
    if not user.can(Permission.USAGE_READ):
        raise lacks(Permission.USAGE_READ, user)
    return user


UserDep = Annotated[ConsoleUser, Depends(current_user)]


async def read_form(request: Request) -> dict[str, list[str]]:
    """A form's fields (URL-encoded, as browsers and htmx send them); each field's values
    in order. An empty body is an empty form; other bodies are refused."""
    body = (await request.body()).decode("utf-8", "replace")
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if body and media_type != FORM_MEDIA_TYPE:
        raise ConsoleProblem(415, "Not a form", f"the body must be sent as {FORM_MEDIA_TYPE}")
    try:
        return parse_qs(body, keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
    except ValueError as exc:  # more fields than MAX_FORM_FIELDS
        raise ConsoleProblem(
            400, "Form too large", f"the form has more than {MAX_FORM_FIELDS} fields"
        ) from exc


def _presented_csrf(request: Request, form: Mapping[str, list[str]]) -> str | None:
    header = request.headers.get(access.CSRF_HEADER)
    field = form.get(access.CSRF_FIELD, [None])[0]
    return header or field


def check_origin(request: Request) -> None:
    if not access.same_origin(request.headers, request.url.scheme):
        # Most often a TLS proxy the API does not trust: https in the browser, http here.
        log.warning(
            "console_cross_origin_refused",
            path=request.url.path,
            scheme=request.url.scheme,
            origin=access.presented_origin(request.headers)[:200],
        )
        raise ConsoleProblem(
            403, "Refused", "the request does not come from a page of this console"
        )


def check_csrf(request: Request, token: str | None, form: Mapping[str, list[str]]) -> None:
    """A state-changing request: from this host, and carrying the token of `token`."""
    check_origin(request)
    if not access.csrf_matches(token, _presented_csrf(request, form)):
        log.warning("console_csrf_refused", path=request.url.path)
        raise ConsoleProblem(
            403, "Refused", "the form is stale or forged: reload the page and try again"
        )


async def posted_form(request: Request, user: ConsoleUser) -> dict[str, list[str]]:
    """The form of a signed-in POST, once its CSRF token and origin are checked."""
    check_origin(request)
    form = await read_form(request)
    check_csrf(request, user.session_token, form)
    return form
