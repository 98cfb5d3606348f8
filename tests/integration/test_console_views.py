"""The operations console's read-only views against a real Postgres (and the real
broker for the overview): the refusals table with each filter and its pages, one
refusal's detail, the lookup of a usage and its refusals, and the overview, also when
the broker is away."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest

from tests.integration.test_console import HOST, sign_in
from tests.support.api import add_key, unique
from tests.support.database import INSERT_REJECTION, INSERT_USAGE, create_database
from tests.support.settings import create_topics, make_settings
from usage_ingest.api.app import create_app
from usage_ingest.api.keys import Permission
from usage_ingest.api.publisher import OnDemandProducer
from usage_ingest.settings import Settings
from usage_ingest.store.store import Store

pytestmark = pytest.mark.integration

T = "usage.events"
START = datetime(2026, 5, 1, 10, 0, tzinfo=UTC)
ROW_ID = re.compile(r'href="/console/refusals/(\d+)"')


@dataclass
class Seeded:
    settings: Settings
    store: Store
    client: httpx.AsyncClient
    prefix: str
    ids: list[int]  # oldest first
    usage_id: int  # stored under the reference of ids[0]

    def reference(self, i: int) -> str:
        return f"{self.prefix}-{i:03d}"

    async def page(self, path: str, status: int = 200) -> httpx.Response:
        response = await self.client.get(path)
        assert response.status_code == status, response.text
        return response


def errors_of(i: int) -> list[dict[str, str | None]]:
    """Every third refusal UNKNOWN_PRODUCT, the others NO_INVENTORY."""
    if i % 3 == 0:
        return [{"code": "UNKNOWN_PRODUCT", "field": "productIdent", "message": "no such product"}]
    return [{"code": "NO_INVENTORY", "field": None, "message": "no inventory record"}]


@pytest.fixture(scope="module")
async def seeded(kafka_bootstrap: str, postgres_admin_url: str) -> AsyncIterator[Seeded]:
    settings = make_settings(kafka_bootstrap, await create_database(postgres_admin_url))
    await create_topics(settings)
    assert settings.database_url is not None
    url = settings.database_url.get_secret_value()
    store = await Store.open(url)
    prefix = unique("ref")
    conn = await asyncpg.connect(url)
    try:
        ids = []
        for i in range(60):
            errors = errors_of(i)
            ids.append(
                await conn.fetchval(
                    INSERT_REJECTION,
                    f"{prefix}-{i:03d}",
                    json.dumps(errors),
                    [e["code"] for e in errors],
                    True,
                    T,
                    i % 3,
                    i,
                    START + timedelta(minutes=i) - timedelta(seconds=1),
                    START + timedelta(minutes=i),
                    i % 2,
                )
            )
        usage_id = await conn.fetchval(INSERT_USAGE, f"{prefix}-000", START, T, 1000)
    finally:
        await conn.close()
    app = create_app(settings, store, OnDemandProducer(settings))
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=f"http://{HOST}")
    key = await add_key(store, Permission.USAGE_READ, name="views")
    assert (await sign_in(client, key)).status_code == 303
    yield Seeded(settings, store, client, prefix, ids, usage_id)
    await client.aclose()
    await store.close()


def listed(page: httpx.Response) -> list[int]:
    return [int(i) for i in ROW_ID.findall(page.text)]


async def test_the_table_pages_through_every_refusal_newest_first(seeded: Seeded) -> None:
    first = await seeded.page(f"/console/refusals?reference={seeded.prefix}")
    assert listed(first) == seeded.ids[::-1][:50]
    assert '1\N{EN DASH}50 of <strong class="total">60</strong>, page 1 of 2' in first.text
    assert 'rel="prev"' not in first.text
    second = await seeded.page(f"/console/refusals?reference={seeded.prefix}&page=2")
    assert listed(second) == seeded.ids[::-1][50:]
    assert 'rel="next"' not in second.text
    assert f"/console/refusals?reference={seeded.prefix}&amp;page=1" in second.text


async def test_htmx_gets_only_the_table(seeded: Seeded) -> None:
    fragment = await seeded.client.get(
        f"/console/refusals?reference={seeded.prefix}&page=2", headers={"HX-Request": "true"}
    )
    assert fragment.text.lstrip().startswith('<section id="refusals">')
    assert "<html" not in fragment.text
    assert listed(fragment) == seeded.ids[::-1][50:]


async def test_each_filter_narrows_the_table(seeded: Seeded) -> None:
    prefix = f"reference={seeded.prefix}"
    unknown = await seeded.page(f"/console/refusals?{prefix}&code=UNKNOWN_PRODUCT")
    assert set(listed(unknown)) == {seeded.ids[i] for i in range(0, 60, 3)}
    both = await seeded.page(f"/console/refusals?{prefix}&code=UNKNOWN_PRODUCT&code=NO_INVENTORY")
    assert 'of <strong class="total">60</strong>' in both.text
    resolved = await seeded.page(f"/console/refusals?{prefix}&resolved=true")
    assert listed(resolved) == [seeded.ids[0]]
    assert f"usage {seeded.usage_id}" in resolved.text
    unresolved = await seeded.page(f"/console/refusals?{prefix}&resolved=false&page=2")
    assert 'of <strong class="total">59</strong>' in unresolved.text
    window = await seeded.page(
        f"/console/refusals?{prefix}&since=2026-05-01T10:10&until=2026-05-01T10:15:00Z"
    )
    assert listed(window) == [seeded.ids[i] for i in range(14, 9, -1)]
    one = await seeded.page(f"/console/refusals?reference={seeded.reference(7).upper()}")
    assert listed(one) == [seeded.ids[7]]


async def test_a_bad_filter_says_what_is_wrong(seeded: Seeded) -> None:
    bad = await seeded.page("/console/refusals?since=yesterday&code=NOT_A_CODE", status=400)
    assert "is not an error code" in bad.text
    assert "failedAt" in bad.text
    assert "yesterday" in bad.text


async def test_the_detail_shows_every_error_the_source_and_the_resolving_usage(
    seeded: Seeded,
) -> None:
    resolved = await seeded.page(f"/console/refusals/{seeded.ids[0]}")
    assert "UNKNOWN_PRODUCT" in resolved.text
    assert "productIdent" in resolved.text
    assert "no such product" in resolved.text
    assert f"<code>{T}</code> partition 0, offset 0" in resolved.text
    assert "2026-05-01 10:00:00 UTC" in resolved.text
    assert f"usage {seeded.usage_id}</a>, now stored under this reference" in resolved.text
    assert f'href="/console/lookup?reference={seeded.reference(0)}"' in resolved.text
    open_one = await seeded.page(f"/console/refusals/{seeded.ids[1]}")
    assert "not resolved" in open_one.text
    assert "<dt>Replay count</dt><dd>1</dd>" in open_one.text
    await seeded.page("/console/refusals/999999999", status=404)
    await seeded.page("/console/refusals/x", status=404)


async def test_the_lookup_shows_the_stored_usage_and_the_refusals_of_a_reference(
    seeded: Seeded,
) -> None:
    stored = await seeded.page(f"/console/lookup?reference={seeded.reference(0)}")
    assert '<dl class="facts" id="usage">' in stored.text
    assert f"<dt>Id</dt><dd>{seeded.usage_id}</dd>" in stored.text
    assert "voice.uk" in stored.text
    assert "&#34;payloadHash&#34;: &#34;hash&#34;" in stored.text  # the API's JSON form
    assert listed(stored) == [seeded.ids[0]]
    refused = await seeded.page(f"/console/lookup?reference={seeded.reference(5)}")
    assert 'id="no-usage"' in refused.text
    assert listed(refused) == [seeded.ids[5]]
    nothing = await seeded.page("/console/lookup?reference=has%20spaces")
    assert 'id="no-usage"' in nothing.text
    assert "None." in nothing.text


@pytest.mark.parametrize(
    "path",
    [
        "/console/refusals/99999999999999999999999",  # past bigint
        "/console/refusals/%C2%B2",  # a digit to str.isdigit, not to int
    ],
)
async def test_a_refusal_id_that_no_refusal_can_have_is_not_found(
    seeded: Seeded, path: str
) -> None:
    missing = await seeded.page(path, status=404)
    assert "there is no refusal" in missing.text


@pytest.mark.parametrize("page", ["99999999999999999999999", "%C2%B2"])
async def test_a_page_number_past_any_page_shows_the_first(seeded: Seeded, page: str) -> None:
    first = await seeded.page(f"/console/refusals?reference={seeded.prefix}&page={page}")
    assert listed(first) == seeded.ids[::-1][:50]


async def test_a_reference_with_a_nul_is_a_problem_not_a_failure(seeded: Seeded) -> None:
    refused = await seeded.page("/console/lookup?reference=a%00b", status=400)
    assert "the reference holds a control character" in refused.text
    assert refused.headers["content-security-policy"].startswith("default-src 'self'")


async def test_the_overview_shows_the_group_and_its_lag(seeded: Seeded) -> None:
    overview = await seeded.page("/console")
    assert f"Consumer group <code>{seeded.settings.group_id}</code>" in overview.text
    assert 'id="offset-lag">0<' in overview.text
    assert overview.text.count(f"<td>{seeded.settings.topic_events}</td>") == 3
    assert 'hx-trigger="every 5s"' in overview.text
    fragment = await seeded.client.get("/console", headers={"HX-Request": "true"})
    assert fragment.text.lstrip().startswith('<div id="overview"')


async def test_the_overview_renders_with_the_broker_away(
    seeded: Seeded, unreachable_broker: str
) -> None:
    settings = seeded.settings.model_copy(update={"kafka_bootstrap_servers": unreachable_broker})
    app = create_app(settings, seeded.store, OnDemandProducer(settings))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url=f"http://{HOST}"
    ) as client:
        key = await add_key(seeded.store, Permission.USAGE_READ, name="away")
        assert (await sign_in(client, key)).status_code == 303
        overview = await client.get("/console")
    assert overview.status_code == 200
    assert 'id="lag-unavailable"' in overview.text
    # The API's own broker check, beside the database's.
    assert re.search(r'broker\s*<span class="badge alert">unavailable</span>', overview.text)
    assert re.search(r'database\s*<span class="badge ok">ready</span>', overview.text)


@pytest.fixture
def unreachable_broker() -> str:
    from usage_ingest.dev.embedded import free_port

    return f"127.0.0.1:{free_port()}"
