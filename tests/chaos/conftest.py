"""Fixtures of the chaos suite, and the figure table printed at the end of the session.

The servers are the integration suite's (tests/conftest.py: an embedded broker and
Postgres unless USAGE_INGEST_TEST_* variables name others); every scenario gets its
own database, topics and consumer group, and kills only processes it started.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.figures import RESULTS, results_json, table_lines
from tests.chaos.harness import Chaos

RESULTS_FILE = Path(__file__).parents[2] / "build" / "chaos" / "results.json"


@pytest.fixture
async def chaos(
    kafka_bootstrap: str, postgres_admin_url: str, tmp_path: Path
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
