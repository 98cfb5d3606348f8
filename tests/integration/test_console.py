"""The operations console's access, against a real Postgres: signing in with a good,
unknown or revoked key, or one without USAGE.READ; a session that expires or whose key
is revoked; signing out; CSRF and origin checks on every POST; DEAD_LETTER.REPLAY for the
replay pages; the key never in a response; and the headers every page carries."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import asyncpg
import httpx
import pytest
import structlog
from starlette.types import Receive, Scope, Send

from tests.support.api import add_key, unique
from tests.support.cli import cli_env, run_cli
from tests.support.database import create_database
from tests.support.settings import make_settings
from usage_ingest.api import keys as api_keys
from usage_ingest.api.app import create_app
from usage_ingest.api.console import access
from usage_ingest.api.keys import Permission
from usage_ingest.api.publisher import OnDemandProducer
from usage_ingest.api.server import uvicorn_config
from usage_ingest.settings import Settings
from usage_ingest.store.store import Store

pytestmark = pytest.mark.integration

HOST = "console.test"
ORIGIN = {"Origin": f"http://{HOST}"}
CSRF = re.compile(r'name="csrf" value="([0-9a-f]{64})"')


@dataclass
class Console:
    """The app over a real store, and every response a client of it received."""

    settings: Settings
    store: Store
    app: object
    seen: list[httpx.Response] = field(default_factory=list)

    def client(self, scheme: str = "http") -> httpx.AsyncClient:
        async def keep(response: httpx.Response) -> None:
            await response.aread()
            self.seen.append(response)

        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app),  # type: ignore[arg-type]
            base_url=f"{scheme}://{HOST}",
            event_hooks={"response": [keep]},
        )

    async def key(self, *permissions: Permission) -> str:
        return await add_key(self.store, *permissions, name=unique("operator "))

    def assert_never_shown(self, key: str) -> None:
        """The key in no body and no header of any response (Set-Cookie included)."""
        assert self.seen
        for response in self.seen:
            assert key not in response.text
            assert all(key not in value for value in response.headers.values())


@pytest.fixture(scope="module")
async def console(kafka_bootstrap: str, postgres_admin_url: str) -> AsyncIterator[Console]:
    settings = make_settings(kafka_bootstrap, await create_database(postgres_admin_url))
    assert settings.database_url is not None
    store = await Store.open(settings.database_url.get_secret_value())
    yield Console(settings, store, create_app(settings, store, OnDemandProducer(settings)))
    await store.close()


async def sign_in_csrf(client: httpx.AsyncClient) -> str:
    form = await client.get("/console/sign-in")
    assert form.status_code == 200
    match = CSRF.search(form.text)
    assert match is not None, form.text
    return match.group(1)


async def sign_in(
    client: httpx.AsyncClient, key: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    csrf = await sign_in_csrf(client)
    return await client.post(
        "/console/sign-in", data={"csrf": csrf, "key": key}, headers=headers or ORIGIN
    )


def page_csrf(page: httpx.Response) -> str:
    match = CSRF.search(page.text)
    assert match is not None, page.text
    return match.group(1)


def session_cookie_header(response: httpx.Response) -> str:
    cookies = [
        c
        for c in response.headers.get_list("set-cookie")
        if c.startswith(access.SESSION_COOKIE + "=")
    ]
    assert len(cookies) == 1, response.headers
    return cookies[0]


async def test_a_reader_key_signs_in_and_the_cookie_holds_only_a_session(
    console: Console,
) -> None:
    key = await console.key(Permission.USAGE_READ)
    key_id = str(api_keys.key_id_of(key))
    async with console.client() as client:
        signed_in = await sign_in(client, key)
        assert signed_in.status_code == 303
        assert signed_in.headers["location"] == "/console"
        cookie = session_cookie_header(signed_in)
        attributes = {part.strip().lower() for part in cookie.split(";")[1:]}
        assert {"httponly", "samesite=strict", "path=/console"} <= attributes
        assert "secure" not in attributes  # plain http here
        token = cookie.split(";")[0].split("=", 1)[1]
        assert await console.store.find_console_session(access.token_hash(token)) is not None
        for path in ("/console", "/console/refusals", "/console/lookup?reference=x"):
            page = await client.get(path)
            assert page.status_code == 200, path
            assert key_id in page.text
            assert "Sign out" in page.text
    console.assert_never_shown(key)


async def test_the_cookie_is_secure_over_https(console: Console) -> None:
    key = await console.key(Permission.USAGE_READ)
    async with console.client("https") as client:
        signed_in = await sign_in(client, key, {"Origin": f"https://{HOST}"})
        assert signed_in.status_code == 303
        assert "secure" in session_cookie_header(signed_in).lower().split("; ")


def behind_a_tls_proxy(console: Console, proxy: str, trusted: str) -> httpx.AsyncClient:
    """A browser on https://HOST, through a proxy at address `proxy` that terminates TLS
    and speaks plain http to the API (uvicorn sees scheme http and the proxy's address),
    served as `usage-ingest api` serves it with `api_forwarded_allow_ips` `trusted`."""
    settings = console.settings.model_copy(update={"api_forwarded_allow_ips": trusted})
    config = uvicorn_config(settings, console.app)  # type: ignore[arg-type]
    config.load()

    async def plain_http_from_the_proxy(scope: Scope, receive: Receive, send: Send) -> None:
        await config.loaded_app({**scope, "scheme": "http"}, receive, send)

    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=plain_http_from_the_proxy, client=(proxy, 40000)),
        base_url=f"https://{HOST}",
        headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"},
    )


async def test_behind_a_trusted_tls_proxy_the_cookie_is_secure(console: Console) -> None:
    key = await console.key(Permission.USAGE_READ)
    async with behind_a_tls_proxy(console, "10.1.2.3", "10.1.0.0/16,127.0.0.1") as client:
        signed_in = await sign_in(client, key, {"Origin": f"https://{HOST}"})
        assert signed_in.status_code == 303, signed_in.text
        assert "secure" in session_cookie_header(signed_in).lower().split("; ")
        assert (await client.get("/console")).status_code == 200


async def test_behind_an_untrusted_proxy_an_https_page_cannot_sign_in(console: Console) -> None:
    key = await console.key(Permission.USAGE_READ)
    async with behind_a_tls_proxy(console, "10.9.0.1", "10.1.0.0/16") as client:
        with structlog.testing.capture_logs() as logs:
            refused = await sign_in(client, key, {"Origin": f"https://{HOST}"})
    assert refused.status_code == 403
    assert not any(
        c.startswith(access.SESSION_COOKIE + "=") for c in refused.headers.get_list("set-cookie")
    )
    cross = [e for e in logs if e["event"] == "console_cross_origin_refused"]
    assert cross[0]["scheme"] == "http"
    assert cross[0]["origin"] == f"https://{HOST}"


@pytest.mark.parametrize("which", ["unknown", "revoked", "malformed"])
async def test_an_unknown_or_revoked_key_does_not_sign_in(console: Console, which: str) -> None:
    if which == "unknown":
        key = api_keys.generate().key
    elif which == "malformed":
        key = "not-a-key"
    else:
        key = await console.key(Permission.USAGE_READ)
        assert await console.store.revoke_api_key(str(api_keys.key_id_of(key)))
    async with console.client() as client:
        refused = await sign_in(client, key)
        assert refused.status_code == 401
        assert "unknown or revoked" in refused.text
        cookies = refused.headers.get_list("set-cookie")
        assert not any(c.startswith(access.SESSION_COOKIE + "=") for c in cookies)
        assert (await client.get("/console")).status_code == 303
    console.assert_never_shown(key)


async def test_a_key_without_usage_read_does_not_sign_in(console: Console) -> None:
    key = await console.key(Permission.USAGE_CREATE, Permission.DEAD_LETTER_REPLAY)
    async with console.client() as client:
        refused = await sign_in(client, key)
        assert refused.status_code == 403
        assert "lacks the permission USAGE.READ" in refused.text
        assert (await client.get("/console")).status_code == 303


async def test_without_a_session_every_view_sends_to_sign_in(console: Console) -> None:
    async with console.client() as client:
        for path in ("/console", "/console/refusals", "/console/replay", "/console/lookup"):
            answer = await client.get(path)
            assert answer.status_code == 303, path
            assert answer.headers["location"] == "/console/sign-in"
        fragment = await client.get("/console", headers={"HX-Request": "true"})
        assert fragment.headers["HX-Redirect"] == "/console/sign-in"


async def test_revoking_the_key_ends_its_session_at_once(console: Console) -> None:
    key = await console.key(Permission.USAGE_READ)
    async with console.client() as client:
        token = session_cookie_header(await sign_in(client, key)).split(";")[0].split("=", 1)[1]
        assert (await client.get("/console/refusals")).status_code == 200
        assert await console.store.revoke_api_key(str(api_keys.key_id_of(key)))
        ended = await client.get("/console/refusals")
        assert ended.status_code == 303
        assert ended.headers["location"] == "/console/sign-in?ended=revoked"
        assert await console.store.find_console_session(access.token_hash(token)) is None
        notice = await client.get(ended.headers["location"])
        assert "its API key was revoked" in notice.text


async def test_an_expired_session_sends_to_sign_in(console: Console) -> None:
    key = await console.key(Permission.USAGE_READ)
    async with console.client() as client:
        token = session_cookie_header(await sign_in(client, key)).split(";")[0].split("=", 1)[1]
        assert console.settings.database_url is not None
        conn = await asyncpg.connect(console.settings.database_url.get_secret_value())
        try:
            expired = await conn.execute(
                "UPDATE console_sessions SET expires_at = now() - interval '1 second' "
                "WHERE token_hash = $1",
                access.token_hash(token),
            )
        finally:
            await conn.close()
        assert expired == "UPDATE 1"
        ended = await client.get("/console")
        assert ended.status_code == 303
        assert ended.headers["location"] == "/console/sign-in?ended=expired"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Origin": "http://evil.test"},
        {"Origin": "null"},
        {"Referer": "http://evil.test/console"},
        {"Origin": f"https://{HOST}.evil.test"},
    ],
    ids=["no-origin", "foreign-origin", "null-origin", "foreign-referer", "lookalike"],
)
async def test_sign_in_from_another_site_is_refused(
    console: Console, headers: dict[str, str]
) -> None:
    key = await console.key(Permission.USAGE_READ)
    async with console.client() as client:
        csrf = await sign_in_csrf(client)
        refused = await client.post(
            "/console/sign-in", data={"csrf": csrf, "key": key}, headers=headers
        )
        assert refused.status_code == 403
        assert (await client.get("/console")).status_code == 303


async def test_sign_in_without_the_forms_token_is_refused(console: Console) -> None:
    key = await console.key(Permission.USAGE_READ)
    async with console.client() as client:
        await sign_in_csrf(client)
        for data in ({"key": key}, {"key": key, "csrf": "0" * 64}):
            refused = await client.post("/console/sign-in", data=data, headers=ORIGIN)
            assert refused.status_code == 403
    async with console.client() as fresh:  # a token, but no sign-in cookie to match it
        csrf = await sign_in_csrf(console.client())
        refused = await fresh.post(
            "/console/sign-in", data={"key": key, "csrf": csrf}, headers=ORIGIN
        )
        assert refused.status_code == 403
    console.assert_never_shown(key)


async def test_a_same_origin_referer_stands_in_for_origin(console: Console) -> None:
    key = await console.key(Permission.USAGE_READ)
    async with console.client() as client:
        signed_in = await sign_in(client, key, {"Referer": f"http://{HOST}/console/sign-in"})
        assert signed_in.status_code == 303


async def test_signing_out_needs_the_token_and_ends_the_session(console: Console) -> None:
    key = await console.key(Permission.USAGE_READ)
    async with console.client() as client:
        await sign_in(client, key)
        page = await client.get("/console/lookup")
        csrf = page_csrf(page)
        assert (await client.post("/console/sign-out", data={}, headers=ORIGIN)).status_code == 403
        foreign = {"Origin": "http://evil.test"}
        assert (
            await client.post("/console/sign-out", data={"csrf": csrf}, headers=foreign)
        ).status_code == 403
        assert (await client.get("/console/lookup")).status_code == 200  # still signed in
        out = await client.post(
            "/console/sign-out", data={}, headers={**ORIGIN, "X-CSRF-Token": csrf}
        )
        assert out.status_code == 303
        assert out.headers["location"] == "/console/sign-in?ended=signed-out"
        assert (await client.get("/console/lookup")).status_code == 303


async def test_replay_pages_need_dead_letter_replay(console: Console) -> None:
    key = await console.key(Permission.USAGE_READ)
    async with console.client() as client:
        await sign_in(client, key)
        form = await client.get("/console/replay")
        assert form.status_code == 403
        assert "lacks the permission DEAD_LETTER.REPLAY" in form.text
        csrf = page_csrf(form)
        posts = [
            ("/console/replay", {"csrf": csrf, "max_replays": "5"}),
            ("/console/replay/runs/x/confirm", {"csrf": csrf}),
        ]
        for path, data in posts:
            refused = await client.post(path, data=data, headers=ORIGIN)
            assert refused.status_code == 403, path
            assert "DEAD_LETTER.REPLAY" in refused.text
        assert (await client.get("/console/replay/runs/x")).status_code == 403


async def test_a_replay_key_opens_the_replay_page(console: Console) -> None:
    key = await console.key(Permission.USAGE_READ, Permission.DEAD_LETTER_REPLAY)
    async with console.client() as client:
        await sign_in(client, key)
        form = await client.get("/console/replay")
        assert form.status_code == 200, form.text
        assert 'action="/console/replay"' in form.text
        no_run = await client.get("/console/replay/runs/no-such-run")
        assert no_run.status_code == 404
        csrf = page_csrf(form)
        bad = await client.post(
            "/console/replay",
            data={"csrf": csrf, "since": "yesterday", "max_replays": "x"},
            headers=ORIGIN,
        )
        assert bad.status_code == 400
        assert "since: &#39;yesterday&#39; is not a date-time" in bad.text
        assert "max replays" in bad.text
        assert (
            await client.post("/console/replay", data={"max_replays": "5"}, headers=ORIGIN)
        ).status_code == 403


async def test_a_key_made_with_dead_letter_replay_on_the_command_line_signs_in(
    console: Console,
) -> None:
    created = await run_cli(
        cli_env(console.settings),
        "api-key", "create", "--name", "operator",
        "--permission", "USAGE.READ", "--permission", "DEAD_LETTER.REPLAY",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    record = await console.store.find_api_key(str(api_keys.key_id_of(key)))
    assert record is not None
    assert set(record.permissions) == {"USAGE.READ", "DEAD_LETTER.REPLAY"}
    async with console.client() as client:
        assert (await sign_in(client, key)).status_code == 303
        assert (await client.get("/console/replay")).status_code == 200


async def test_every_page_forbids_framing_inline_script_and_caching(console: Console) -> None:
    key = await console.key(Permission.USAGE_READ)
    async with console.client() as client:
        await sign_in(client, key)
        for path in ("/console/sign-in", "/console", "/console/refusals", "/console/refusals/0"):
            page = await client.get(path)
            assert page.headers["content-security-policy"].startswith("default-src 'self'")
            assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
            assert page.headers["x-content-type-options"] == "nosniff"
            assert page.headers["cache-control"] == "no-store"
            assert "<script>" not in page.text
            assert " style=" not in page.text
        script = await client.get("/console/static/htmx.min.js")
        assert script.status_code == 200
        assert script.headers["content-type"].startswith("text/javascript")
        assert script.headers["x-content-type-options"] == "nosniff"
        assert (await client.get("/console/static/../app.py")).status_code == 404


async def test_each_console_request_is_logged_with_the_key_id_never_the_key(
    console: Console,
) -> None:
    key = await console.key(Permission.USAGE_READ)
    key_id = str(api_keys.key_id_of(key))
    async with console.client() as client:
        with structlog.testing.capture_logs() as logs:
            await sign_in(client, key)
            await client.get("/console/refusals")
    requests = [(e["route"], e["api_key_id"]) for e in logs if e["event"] == "api_request"]
    assert requests == [
        ("/console/sign-in", None),
        ("/console/sign-in", key_id),
        ("/console/refusals", key_id),
    ]
    assert key not in repr(logs)
