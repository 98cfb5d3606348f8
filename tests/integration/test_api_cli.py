"""`usage-ingest api` and `usage-ingest api-key create|list|revoke` as a user runs them:
real console scripts, a real Postgres, the API served on a real socket."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import uuid
from collections.abc import Callable

import asyncpg
import httpx
import pytest

from tests.support.cli import ApiProcess, cli_env, run_cli
from tests.support.database import create_database
from tests.support.settings import create_topics, make_settings
from usage_ingest.dev.embedded import free_port

pytestmark = pytest.mark.integration

KEY = re.compile(r"^uik_([0-9a-f]{12})_[A-Za-z0-9_-]{43}$")
INVENTORIES = "/usage-product-inventories?page=1&pageSize=5"


@pytest.fixture
async def env(kafka_bootstrap: str, postgres_admin_url: str) -> dict[str, str]:
    settings = make_settings(kafka_bootstrap, await create_database(postgres_admin_url))
    await create_topics(settings)
    return cli_env(settings)


def one_line(text: str) -> str:
    assert text.endswith("\n"), text
    assert text.count("\n") == 1, text
    assert "Traceback" not in text
    return text


async def test_keys_made_on_the_command_line_open_exactly_their_permissions(
    env: dict[str, str], api_process: Callable[[dict[str, str]], ApiProcess]
) -> None:
    created = await run_cli(
        env,
        "api-key",
        "create",
        "--name",
        "billing reader",
        "--permission",
        "USAGE_PRODUCT_INVENTORY.READ",
        "--permission",
        "USAGE.READ",
    )
    assert created.returncode == 0, created.stderr
    key = one_line(created.stdout).strip()
    match = KEY.match(key)
    assert match is not None, key
    key_id = match.group(1)
    assert key not in created.stderr
    assert key_id in created.stderr

    listed = await run_cli(env, "api-key", "list")
    assert listed.returncode == 0
    [header, row] = listed.stdout.splitlines()
    assert header.split() == ["KEY", "ID", "NAME", "PERMISSIONS", "CREATED", "REVOKED"]
    assert row.startswith(key_id)
    assert "billing reader" in row
    assert "USAGE.READ,USAGE_PRODUCT_INVENTORY.READ" in row
    assert row.endswith("-")  # not revoked
    assert key.split("_", 2)[2] not in listed.stdout

    server = await api_process(env).start()
    async with httpx.AsyncClient(base_url=server.base_url, headers={"X-API-KEY": key}) as client:
        response = await client.get(INVENTORIES)
        assert (response.status_code, response.headers["X-Total-Count"]) == (200, "0")
        response = await client.post("/v1/product-items", json={"reference": "x"})
        assert response.status_code == 403
        assert (await client.get("/openapi.json")).json()["paths"]

        revoked = await run_cli(env, "api-key", "revoke", key_id)
        assert revoked.returncode == 0, revoked.stderr
        assert one_line(revoked.stdout) == f"revoked API key {key_id} (billing reader)\n"
        assert (await client.get(INVENTORIES)).status_code == 401

    assert await server.stop(signal.SIGTERM) == 0
    logged = server.stderr.decode()
    assert '"event": "api_started"' in logged
    assert '"event": "api_stopped"' in logged
    assert key not in logged
    listed = await run_cli(env, "api-key", "list")
    assert not listed.stdout.splitlines()[1].endswith("-")


async def test_the_api_stops_cleanly_on_sigint(
    env: dict[str, str], api_process: Callable[[dict[str, str]], ApiProcess]
) -> None:
    server = await api_process({**env, "USAGE_INGEST_API_HOST": "127.0.0.1"}).start()
    assert await server.stop(signal.SIGINT) == 0
    assert b"Traceback" not in server.stderr


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["create", "--name", "x", "--permission", "USAGE.DELETE"], "USAGE.DELETE"),
        (["create", "--permission", "USAGE.READ"], "--name"),
        (["create", "--name", "x"], "--permission"),
        (["create", "--name", "", "--permission", "USAGE.READ"], "--name"),
        (["revoke", "not-a-key-id"], "not-a-key-id"),
    ],
)
async def test_api_key_usage_errors(env: dict[str, str], args: list[str], fragment: str) -> None:
    result = await run_cli(env, "api-key", *args)
    assert result.returncode == 2
    assert fragment in result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr


async def test_revoking_an_unknown_key_fails_with_one_line(env: dict[str, str]) -> None:
    result = await run_cli(env, "api-key", "revoke", "0123456789ab")
    assert result.returncode == 1
    assert one_line(result.stderr) == "usage-ingest: no API key 0123456789ab\n"


async def test_api_on_a_taken_port_fails_with_one_line(env: dict[str, str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = await run_cli(env, "api", "--port", str(port))
    assert result.returncode == 2  # ExitCode.USAGE: the same call would fail again
    assert f"cannot listen on 127.0.0.1:{port}" in one_line(result.stderr)


async def test_api_on_a_database_without_migrations_fails_with_one_line(
    env: dict[str, str], postgres_admin_url: str
) -> None:
    name = f"t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(postgres_admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    bare = postgres_admin_url.rpartition("/")[0] + "/" + name
    result = await run_cli(
        {**env, "USAGE_INGEST_DATABASE_URL": bare}, "api", "--port", str(free_port())
    )
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert "0001_initial" in line
    assert "usage-ingest migrate" in line


async def test_api_key_create_prints_nothing_but_the_key(env: dict[str, str]) -> None:
    results = await asyncio.gather(
        *(
            run_cli(env, "api-key", "create", "--name", f"k{i}", "--permission", "USAGE.CREATE")
            for i in range(3)
        )
    )
    keys = [one_line(r.stdout).strip() for r in results]
    assert all(KEY.match(k) for k in keys)
    assert len(set(keys)) == 3
