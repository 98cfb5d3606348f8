"""Fixtures of the browser tests: Debian's Chromium, headless, driven by Playwright's
Python package (no browser download), against the real servers of tests/conftest.py.

Every test collected here is marked `browser` and `integration`: it needs the broker and
Postgres, and `pytest` runs it by default (it is part of `make test`).
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, async_playwright

HERE = Path(__file__).parent
CHROMIUM = Path("/usr/bin/chromium")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "browser: drives a headless Chromium against a real API (tests/browser)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.browser)
            item.add_marker(pytest.mark.integration)


def chromium() -> str:
    """Debian's Chromium: /usr/bin/chromium, or wherever PATH finds it."""
    found = str(CHROMIUM) if CHROMIUM.exists() else shutil.which("chromium")
    if found is None:
        pytest.fail("Chromium is not installed: `make debian-packages` installs Debian's chromium")
    return found


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    executable = chromium()
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=executable, headless=True)
        yield launched
        await launched.close()
