"""The operator's whole fix-and-replay loop in a real browser (headless Chromium), against
a real `usage-ingest api` process, a real worker, the broker and Postgres:

sign in; watch the lag of a stopped group grow on the overview, which refreshes by
itself; start the worker and see the refusals of a product with no inventory; load the
missing inventory record; replay from the page (dry run, confirm, progress, summary);
see the refusals resolved and the usages stored.

Each view is photographed into build/console/ for the README.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, expect

from tests.support.api import add_key
from tests.support.cli import ApiProcess, cli_env, run_cli
from tests.support.database import (
    LATE_INVENTORY,
    LATE_PRODUCT,
    create_database,
    load_demo_reference,
)
from tests.support.events import Outgoing, produce
from tests.support.settings import create_topics, make_settings
from usage_ingest.api.keys import Permission
from usage_ingest.domain.reference import ReferenceFile
from usage_ingest.settings import Settings
from usage_ingest.store.store import Store
from usage_ingest.worker.runtime import run_worker

pytestmark = pytest.mark.timeout(150)

SCREENSHOTS = Path(__file__).parents[2] / "build" / "console"
WAIT_MS = 30_000  # for the worker and the broker, not a measure of speed
LATE, UNKNOWN = 8, 2  # NO_INVENTORY refusals (fixed later), UNKNOWN_PRODUCT (never)
REPORT_INTERVAL_S = 1.0  # the worker's reports, which the overview shows, every second


def usage_event(reference: str, product: str) -> bytes:
    body: dict[str, Any] = {
        "externalReference": reference,
        "contractId": 1,
        "productIdent": product,
        "startDate": "2026-03-02T10:00:00Z",
        "endDate": "2026-03-02T10:05:00Z",
        "unitQuantities": [{"unit": "minute", "quantity": "5"}],
    }
    return json.dumps(body).encode()


def events() -> list[Outgoing]:
    products = ["late.usage"] * LATE + ["missing.product"] * UNKNOWN
    return [
        Outgoing(usage_event(f"call-{i:03d}", product), i % 3, f"call-{i:03d}".encode(), None)
        for i, product in enumerate(products)
    ]


@dataclass
class World:
    settings: Settings
    env: dict[str, str]
    api: ApiProcess
    key: str
    tmp: Path

    def url(self, path: str) -> str:
        return self.api.base_url + path


def process_env(settings: Settings) -> dict[str, str]:
    """The API's settings as the command line reads them: the test's own topics and group."""
    return {
        **cli_env(settings),
        "USAGE_INGEST_GROUP_ID": settings.group_id,
        "USAGE_INGEST_TOPIC_ACCEPTED": settings.topic_accepted,
        "USAGE_INGEST_TOPIC_REJECTED": settings.topic_rejected,
        "USAGE_INGEST_TOPIC_DLQ": settings.topic_dlq,
    }


@pytest.fixture
async def world(
    kafka_bootstrap: str, postgres_admin_url: str, tmp_path: Path
) -> AsyncIterator[World]:
    url = await create_database(postgres_admin_url)
    settings = make_settings(kafka_bootstrap, url)
    await create_topics(settings)
    await load_demo_reference(url)
    store = await Store.open(url)
    try:
        await store.load_reference(ReferenceFile.model_validate(LATE_PRODUCT))
        key = await add_key(
            store, Permission.USAGE_READ, Permission.DEAD_LETTER_REPLAY, name="on-call"
        )
    finally:
        await store.close()
    env = process_env(settings)
    api = await ApiProcess(env).start()
    try:
        yield World(settings, env, api, key, tmp_path)
    finally:
        await api.stop()


async def shoot(page: Page, view: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / f"{view}.png"), full_page=True)


async def reload_until(page: Page, selector: str, text: str) -> None:
    """Reload until `selector` reads `text` (the worker and replay run on their own)."""
    for _ in range(WAIT_MS // 500):
        await page.reload()
        if (await page.locator(selector).first.inner_text()).strip() == text:
            return
        await page.wait_for_timeout(500)
    await expect(page.locator(selector).first).to_have_text(text)


async def sign_in(page: Page, world: World) -> None:
    await page.goto(world.url("/console"))
    await expect(page).to_have_url(re.compile(r"/console/sign-in$"))
    await page.fill("#key", world.key)
    await page.click("button[type=submit]")
    await expect(page).to_have_url(world.url("/console"))
    assert world.key not in await page.content()
    await expect(page.locator(".who")).to_contain_text("on-call")


async def watch_the_lag_grow(page: Page, world: World) -> None:
    """No worker runs: the events wait, and the overview shows them without a reload."""
    lag = page.locator("#offset-lag")
    await expect(lag).to_have_text("0")
    await produce(world.settings, events(), chunk=1)
    await expect(lag).to_have_text(str(LATE + UNKNOWN), timeout=WAIT_MS)
    await expect(page.locator("#group-state")).not_to_have_text("Stable")
    await shoot(page, "overview-lag")


async def see_the_refusals(page: Page, world: World) -> None:
    await page.goto(world.url("/console/refusals"))
    await reload_until(page, ".pager .total", str(LATE + UNKNOWN))
    await expect(page.locator("table.refusals")).to_contain_text("NO_INVENTORY")
    await expect(page.locator("table.refusals")).to_contain_text("UNKNOWN_PRODUCT")
    await shoot(page, "refusals")
    await page.select_option("select[name=code]", ["NO_INVENTORY"])
    await page.click("form.filters button[type=submit]")  # htmx swaps the table
    await expect(page.locator(".pager .total").first).to_have_text(str(LATE))
    await expect(page).to_have_url(re.compile(r"code=NO_INVENTORY"))
    await page.locator("table.refusals tbody a").first.click()
    await expect(page.locator("h1")).to_contain_text("Refusal")
    await expect(page.locator("table.errors")).to_contain_text("NO_INVENTORY")
    await expect(page.locator("#resolved-by")).to_contain_text("not resolved")
    await shoot(page, "refusal-detail")


async def load_the_fix(world: World) -> None:
    path = world.tmp / "late-inventory.json"
    path.write_text(json.dumps(LATE_INVENTORY))
    loaded = await run_cli(world.env, "reference", "load", str(path))
    assert loaded.returncode == 0, loaded.stderr


async def replay_from_the_page(page: Page, world: World) -> None:
    await page.goto(world.url("/console/replay"))
    await page.check("input[name=code][value=NO_INVENTORY]")
    await page.click("form.replay button[type=submit]")
    await expect(page).to_have_url(re.compile(r"/console/replay/runs/[0-9a-f]+$"))
    dry_run_url = page.url
    await expect(page.locator("#run")).to_have_attribute("data-state", "finished", timeout=WAIT_MS)
    await expect(page.locator("#replayed")).to_have_text(str(LATE))
    await expect(page.locator("#skipped-code td.n")).to_have_text(str(UNKNOWN))
    await shoot(page, "replay-dry-run")
    await page.click("#confirm")
    await expect(page).not_to_have_url(dry_run_url)
    await expect(page.locator("#run")).to_have_attribute("data-state", "finished", timeout=WAIT_MS)
    await expect(page.locator("#replayed")).to_have_text(str(LATE))
    await expect(page.locator("#committed")).to_be_visible()
    await shoot(page, "replay-summary")
    await page.goto(world.url("/console/replay"))
    await expect(page.locator("#latest")).to_contain_text("finished, 8 replayed")


async def see_them_resolved(page: Page, world: World) -> None:
    await page.goto(world.url("/console/refusals?resolved=true"))
    await reload_until(page, ".pager .total", str(LATE))
    await page.goto(world.url("/console/lookup"))
    await page.fill("input[name=reference]", "call-000")
    await page.click("form.filters button[type=submit]")
    await expect(page.locator("#usage")).to_contain_text("late.usage")
    await expect(page.locator("#lookup table.refusals")).to_contain_text("usage ")
    await shoot(page, "lookup")


async def see_the_overview_caught_up(page: Page, world: World) -> None:
    """The lag is gone, the worker reports itself ready, the chart counts the outcomes."""
    await page.goto(world.url("/console"))
    await expect(page.locator("#offset-lag")).to_have_text("0", timeout=WAIT_MS)
    await expect(page.locator("#workers tbody tr")).to_have_attribute(
        "data-ready", "true", timeout=WAIT_MS
    )
    await expect(page.locator("#total-created")).to_have_text(str(LATE), timeout=WAIT_MS)
    await expect(page.locator("#total-rejected")).to_have_text(str(LATE + UNKNOWN))
    await expect(page.locator("table.by-code")).to_contain_text("NO_INVENTORY")
    await shoot(page, "overview")


async def test_the_fix_and_replay_loop_in_the_browser(browser: Browser, world: World) -> None:
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    page = await context.new_page()
    stop = asyncio.Event()
    worker: asyncio.Task[Any] | None = None
    try:
        await sign_in(page, world)
        await watch_the_lag_grow(page, world)
        worker = asyncio.create_task(
            run_worker(world.settings, stop, report_interval_s=REPORT_INTERVAL_S)
        )
        await see_the_refusals(page, world)
        await load_the_fix(world)
        await replay_from_the_page(page, world)
        await see_them_resolved(page, world)
        await see_the_overview_caught_up(page, world)
    finally:
        await context.close()
        stop.set()
        if worker is not None:
            await asyncio.wait_for(worker, WAIT_MS / 1000)
