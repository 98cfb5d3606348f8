"""Fixtures and helpers of the HTTP API tests (loaded with `pytest_plugins`).

The in-process client runs the real app (`create_app`) over a real Postgres and a
real producer on the real broker, through httpx's ASGI transport, in the test's
own event loop. `ApiProcess` runs the real `usage-ingest api` command instead.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from tests.integration.conftest import create_database, create_topics, make_settings
from usage_ingest.api import keys as api_keys
from usage_ingest.api.app import create_app
from usage_ingest.api.keys import Permission
from usage_ingest.kafka.producer import OutputProducer
from usage_ingest.settings import Settings
from usage_ingest.store.store import Store

USAGE_INGEST = Path(sys.executable).parent / "usage-ingest"
ALL_PERMISSIONS = tuple(Permission)
READ_PERMISSIONS = (Permission.USAGE_READ, Permission.USAGE_PRODUCT_INVENTORY_READ)
PATCH_JSON = {"Content-Type": "application/json-patch+json"}

_numbers = itertools.count(1)


def unique(prefix: str = "") -> str:
    """A value no other test of this run uses (product references, ids, names)."""
    return f"{prefix}{os.getpid() % 1000:03d}{next(_numbers):06d}"


def unique_int() -> int:
    return int(unique("9"))


async def add_key(store: Store, *permissions: Permission, name: str = "test") -> str:
    new = api_keys.generate()
    assert await store.create_api_key(
        new.key_id, name, new.key_hash, [p.value for p in permissions]
    )
    return new.key


@dataclass
class ApiWorld:
    """One database, one set of topics, one producer, one app, and keys for it."""

    settings: Settings
    store: Store
    client: httpx.AsyncClient
    registry: CollectorRegistry
    admin_key: str
    reader_key: str
    revoked_key: str

    def as_reader(self) -> dict[str, str]:
        return {"X-API-KEY": self.reader_key}

    async def product_item(self, **fields: Any) -> dict[str, Any]:
        body = {"reference": unique("product."), "type": "USAGE_BASED", **fields}
        response = await self.client.post("/v1/product-items", json=body)
        assert response.status_code == 201, response.text
        return dict(response.json())

    async def inventory(self, **fields: Any) -> dict[str, Any]:
        """Create an inventory record over HTTP (a new product item unless given)."""
        if "usageProductId" not in fields:
            fields["usageProductId"] = (await self.product_item())["id"]
        body = {
            "siteId": unique_int(),
            "startDate": "2026-01-01",
            "productReferences": [{"productReference": unique("44")}],
            **fields,
        }
        response = await self.client.post("/usage-product-inventories", json=body)
        assert response.status_code == 201, response.text
        return dict(response.json())


async def open_world(
    kafka_bootstrap: str, database_url: str, **overrides: Any
) -> tuple[ApiWorld, OutputProducer]:
    settings = make_settings(kafka_bootstrap, database_url, **overrides)
    await create_topics(settings)
    store = await Store.open(database_url, statement_budget_s=settings.api_statement_budget_s)
    producer = OutputProducer(settings)
    await producer.start()
    registry = CollectorRegistry()
    app = create_app(settings, store, producer, registry=registry)
    admin = await add_key(store, *ALL_PERMISSIONS, name="admin")
    reader = await add_key(store, *READ_PERMISSIONS, name="reader")
    revoked = await add_key(store, *ALL_PERMISSIONS, name="revoked")
    assert await store.revoke_api_key(str(api_keys.key_id_of(revoked))) is not None
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://api.test",
        headers={"X-API-KEY": admin},
        timeout=30,
    )
    world = ApiWorld(settings, store, client, registry, admin, reader, revoked)
    return world, producer


async def close_world(world: ApiWorld, producer: OutputProducer) -> None:
    await world.client.aclose()
    await producer.stop()
    await world.store.close()


@pytest.fixture(scope="module")
async def api(kafka_bootstrap: str, postgres_admin_url: str) -> AsyncIterator[ApiWorld]:
    """One world per test module: tests keep apart by using `unique` values."""
    world, producer = await open_world(kafka_bootstrap, await create_database(postgres_admin_url))
    yield world
    await close_world(world, producer)


# --- the real command ------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Completed:
    returncode: int
    stdout: str
    stderr: str


async def run_cli(env: dict[str, str], *args: str, timeout: float = 60) -> Completed:
    process = await asyncio.create_subprocess_exec(
        str(USAGE_INGEST),
        *args,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return Completed(process.returncode, stdout.decode(), stderr.decode())


def cli_env(settings: Settings) -> dict[str, str]:
    assert settings.database_url is not None
    return {
        "USAGE_INGEST_DATABASE_URL": settings.database_url.get_secret_value(),
        "USAGE_INGEST_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "USAGE_INGEST_TOPIC_EVENTS": settings.topic_events,
        "USAGE_INGEST_LOG_FORMAT": "json",
    }


class ApiProcess:
    """`usage-ingest api` as a child process, on a port of its own."""

    def __init__(self, env: dict[str, str], port: int | None = None) -> None:
        self.env = env
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.process: asyncio.subprocess.Process | None = None
        self.stderr = b""
        # A file, not a pipe: a pipe nobody reads fills up and blocks the server's logging.
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()

    async def start(self, timeout: float = 30) -> ApiProcess:
        self.process = await asyncio.create_subprocess_exec(
            str(USAGE_INGEST),
            "api",
            "--port",
            str(self.port),
            env={**os.environ, **self.env},
            stdout=asyncio.subprocess.DEVNULL,
            stderr=self._log,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with httpx.AsyncClient(base_url=self.base_url) as client:
            while True:
                if self.process.returncode is not None:
                    raise AssertionError(f"usage-ingest api exited: {await self.stop()}")
                try:
                    if (await client.get("/healthz")).status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
                if loop.time() > deadline:
                    raise AssertionError("usage-ingest api did not answer /healthz")
                await asyncio.sleep(0.1)

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(sig)
        returncode = await asyncio.wait_for(self.process.wait(), timeout)
        self._log.seek(0)
        self.stderr = self._log.read()
        self._log.close()
        return returncode


@pytest.fixture
async def api_process() -> AsyncIterator[Callable[[dict[str, str]], ApiProcess]]:
    """Start `usage-ingest api` processes; whatever is still running is stopped."""
    started: list[ApiProcess] = []

    def make(env: dict[str, str]) -> ApiProcess:
        process = ApiProcess(env)
        started.append(process)
        return process

    yield make
    for process in started:
        if process.process is not None and process.process.returncode is None:
            process.process.kill()
            await process.process.wait()
