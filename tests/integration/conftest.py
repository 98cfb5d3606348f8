"""Fixtures of the integration tests: real servers (tests/conftest.py), and for each
test its own database, topics and consumer group, so tests never see each other's
data; workers in the test's event loop; the HTTP API in process and as a command.

Every test collected here is marked `integration`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import asyncpg
import pytest

from tests.support.api import ApiWorld, close_world, open_world
from tests.support.cli import ApiProcess
from tests.support.database import create_database
from tests.support.settings import create_topics, make_settings
from tests.support.worker import RunningWorker
from usage_ingest.settings import Settings

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test of this folder `integration` (a `pytestmark` in a conftest.py
    would apply to nothing)."""
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.integration)


@pytest.fixture
async def database_url(postgres_admin_url: str) -> str:
    return await create_database(postgres_admin_url)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


@pytest.fixture
async def settings(kafka_bootstrap: str, database_url: str) -> Settings:
    settings = make_settings(kafka_bootstrap, database_url)
    await create_topics(settings)
    return settings


@pytest.fixture
async def start_worker() -> AsyncIterator[Callable[[Settings], RunningWorker]]:
    workers: list[RunningWorker] = []

    def start(settings: Settings) -> RunningWorker:
        worker = RunningWorker(settings).start()
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        if worker.task is not None and not worker.task.done():
            await worker.crash()


@pytest.fixture(scope="module")
async def api(kafka_bootstrap: str, postgres_admin_url: str) -> AsyncIterator[ApiWorld]:
    """One world per test module: tests keep apart by using `unique` values."""
    world, producer = await open_world(kafka_bootstrap, await create_database(postgres_admin_url))
    yield world
    await close_world(world, producer)


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
