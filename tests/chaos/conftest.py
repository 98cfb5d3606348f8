"""Fixtures of the chaos suite, and the figure table printed at the end of the session.

The servers are the integration suite's (an embedded broker and Postgres unless
USAGE_INGEST_TEST_* variables name others); every scenario gets its own database,
topics and consumer group, and kills only processes it started.
"""

from __future__ import annotations

import contextlib
import os
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.harness import (
    RESULTS,
    TcpProxy,
    WorkerProcess,
    load_demo_reference,
    results_json,
    table_lines,
)
from tests.integration.conftest import (  # noqa: F401 - fixtures, re-used as they are
    create_database,
    create_topics,
    kafka_bootstrap,
    make_settings,
    postgres_admin_url,
)
from usage_ingest.dev.embedded import free_port
from usage_ingest.settings import Settings

RESULTS_FILE = Path(__file__).parents[2] / "build" / "chaos" / "results.json"


class Chaos:
    """One scenario's servers, workers and proxies; all of them end with the test."""

    def __init__(self, bootstrap: str, admin_url: str, log_dir: Path) -> None:
        self.kafka_bootstrap = bootstrap
        self.admin_url = admin_url
        self.log_dir = log_dir
        self.workers: list[WorkerProcess] = []
        self.proxies: list[TcpProxy] = []

    async def database(self) -> str:
        """A fresh, migrated database with the demo reference data."""
        url = await create_database(self.admin_url)
        await load_demo_reference(url)
        return url

    async def settings(
        self, database_url: str, bootstrap: str | None = None, **overrides: Any
    ) -> Settings:
        """Settings with topics and a group of their own; the topics are created."""
        settings = make_settings(bootstrap or self.kafka_bootstrap, database_url, **overrides)
        await create_topics(settings)
        return settings

    def worker(self, settings: Settings, name: str = "worker") -> WorkerProcess:
        worker = WorkerProcess(name, settings, self.log_dir, metrics_port=free_port())
        self.workers.append(worker)
        return worker

    async def proxy(
        self, target_port: int, *, port: int = 0, server_ssl: ssl.SSLContext | None = None
    ) -> TcpProxy:
        proxy = await TcpProxy(target_port, port=port, server_ssl=server_ssl).start()
        self.proxies.append(proxy)
        return proxy

    async def close(self) -> None:
        for worker in self.workers:
            worker.kill()
        for proxy in self.proxies:
            with contextlib.suppress(Exception):
                await proxy.close()


@pytest.fixture
async def chaos(
    kafka_bootstrap: str,  # noqa: F811 - the fixture imported above
    postgres_admin_url: str,  # noqa: F811
    tmp_path: Path,
) -> AsyncIterator[Chaos]:
    scenario = Chaos(kafka_bootstrap, postgres_admin_url, tmp_path)
    try:
        yield scenario
    finally:
        await scenario.close()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The figure table: one row per scenario that ran, also written as JSON."""
    if not RESULTS:
        return
    terminalreporter.section("chaos: what happens when...")
    for line in table_lines(RESULTS):
        terminalreporter.write_line(line)
    RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_FILE.write_text(results_json(RESULTS) + "\n")
    terminalreporter.write_line(f"(also in {os.path.relpath(RESULTS_FILE)})")
