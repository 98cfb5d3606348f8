"""The console's routes over in-memory fakes of the store, the broker and the replays:
what each page says, and how the replay pages answer a busy group or an outdated dry
run. (The real store, broker and replays: tests/integration/test_console*.py and
tests/browser.)"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import structlog

from usage_ingest import alert_thresholds
from usage_ingest.api.app import create_app
from usage_ingest.api.console import access
from usage_ingest.api.console.overview import BrokerViewCache
from usage_ingest.api.console.pages import PAGE_HEADERS
from usage_ingest.api.console.replays import (
    ConsoleReplay,
    DryRunOutdated,
    DryRunsBusy,
    ReplayBusy,
    ReplayRequest,
    RunState,
)
from usage_ingest.errors import StoreRefusedData, StoreUnavailable
from usage_ingest.lag import LagReport, PartitionLag
from usage_ingest.replay.selection import SkipReason
from usage_ingest.replay.summary import ReplaySummary, Sample
from usage_ingest.settings import Settings
from usage_ingest.store.console_sessions import ConsoleSession
from usage_ingest.store.worker_reports import WorkerStatus

NOW = datetime(2026, 5, 1, 10, 0, tzinfo=UTC)
TOKEN = "session-token"
ORIGIN = {"Origin": "http://console.test"}


@dataclass
class FakeStore:
    permissions: tuple[str, ...] = ("USAGE.READ", "DEAD_LETTER.REPLAY")
    workers: list[WorkerStatus] | None = None  # None: the reports fail
    fail_lists: bool = False
    lists_raise: Exception | None = None

    async def find_console_session(self, token_hash: str) -> ConsoleSession | None:
        if token_hash != access.token_hash(TOKEN):
            return None
        return ConsoleSession("0123456789ab", "on-call", self.permissions, False, NOW)

    async def answers(self, timeout_s: float) -> bool:
        return True

    async def worker_statuses(self) -> list[WorkerStatus]:
        if self.workers is None:
            raise StoreUnavailable("worker reports: connection refused")
        return self.workers

    async def outcome_counts(self, since: datetime) -> list[Any]:
        return []

    async def list_rejections(self, query: Any) -> tuple[int, list[dict[str, Any]]]:
        if self.fail_lists:
            raise StoreUnavailable("list usage rejections: connection refused")
        if self.lists_raise is not None:
            raise self.lists_raise
        return 0, []


def summary(dry_run: bool, **figures: Any) -> ReplaySummary:
    return ReplaySummary("dlq", "events", "g.replay", dry_run, **figures)


def run(run_id: str, *, dry_run: bool, state: RunState, **figures: Any) -> ConsoleReplay:
    return ConsoleReplay(
        id=run_id,
        dry_run=dry_run,
        request=ReplayRequest(codes=frozenset({"NO_INVENTORY"})),
        key_id="0123456789ab",
        started_at=NOW,
        summary=summary(dry_run, **figures),
        state=state,
    )


@dataclass
class FakeReplays:
    runs: dict[str, ConsoleReplay] = field(default_factory=dict)
    confirm_raises: Exception | None = None
    start_raises: Exception | None = None
    started: list[tuple[ReplayRequest, str]] = field(default_factory=list)

    def start_dry_run(self, request: ReplayRequest, key_id: str) -> ConsoleReplay:
        if self.start_raises is not None:
            raise self.start_raises
        self.started.append((request, key_id))
        dry = run("dry1", dry_run=True, state=RunState.RUNNING)
        self.runs[dry.id] = dry
        return dry

    async def confirm(self, dry_run_id: str, key_id: str) -> ConsoleReplay:
        if dry_run_id not in self.runs:
            raise DryRunOutdated("no such dry run (it may have expired): do the dry run again")
        if self.confirm_raises is not None:
            raise self.confirm_raises
        replay = run("rep1", dry_run=False, state=RunState.RUNNING)
        replay.confirms = dry_run_id
        self.runs[replay.id] = replay
        return replay

    def get(self, run_id: str) -> ConsoleReplay | None:
        return self.runs.get(run_id)

    def latest(self) -> ConsoleReplay | None:
        replays = [r for r in self.runs.values() if not r.dry_run]
        return replays[-1] if replays else None

    async def close(self) -> None:
        return None


@dataclass
class Console:
    store: FakeStore
    replays: FakeReplays
    client: httpx.AsyncClient
    lag: LagReport | None = None

    async def csrf_post(self, path: str, **data: str) -> httpx.Response:
        return await self.client.post(
            path, data={"csrf": access.csrf_token(TOKEN), **data}, headers=ORIGIN
        )


def lag_report(offset_lag: int, time_lag_s: float) -> LagReport:
    partition = PartitionLag("events", 0, 5, 5 + offset_lag, offset_lag, time_lag_s)
    return LagReport("g", "Empty", (), (partition,))


@pytest.fixture
async def console() -> AsyncIterator[Console]:
    settings = Settings(group_id="g", topic_events="events")
    store, replays = FakeStore(), FakeReplays()
    app = create_app(settings, store, None)  # type: ignore[arg-type]
    holder = Console(store, replays, httpx.AsyncClient())

    async def read_lag(*_args: Any) -> LagReport:
        assert holder.lag is not None
        return holder.lag

    async def answers(_settings: Settings) -> bool:
        return True

    app.state.console_replays = replays
    app.state.console_broker_view = BrokerViewCache(
        settings, ttl_s=0, read_lag=read_lag, check_broker=answers
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://console.test",
        cookies={access.SESSION_COOKIE: TOKEN},
    ) as client:
        holder.client = client
        yield holder


async def test_the_overview_highlights_what_is_past_a_threshold(console: Console) -> None:
    console.lag = lag_report(alert_thresholds.OFFSET_LAG + 1, alert_thresholds.TIME_LAG_S + 1)
    page = await console.client.get("/console")
    assert page.status_code == 200
    assert f'class="n alert" id="offset-lag">{alert_thresholds.OFFSET_LAG + 1}<' in page.text
    assert 'class="n alert" id="time-lag">' in page.text
    assert "past an alert threshold" in page.text
    assert "The workers' reports are unavailable: worker reports: connection refused" in page.text


async def test_the_overview_says_when_no_worker_runs(console: Console) -> None:
    console.lag = lag_report(3, 1.0)
    console.store.workers = []
    page = await console.client.get("/console", headers={"HX-Request": "true"})
    assert page.text.startswith('<div id="overview"')
    assert 'id="offset-lag">3<' in page.text
    assert 'id="no-worker"' in page.text


async def test_a_store_that_is_away_is_a_503_page(console: Console) -> None:
    console.store.fail_lists = True
    page = await console.client.get("/console/refusals")
    assert page.status_code == 503
    assert "the database is unavailable" in page.text
    assert page.headers["cache-control"] == "no-store"


async def test_a_dry_run_starts_from_the_form_and_its_page_polls(console: Console) -> None:
    started = await console.csrf_post(
        "/console/replay", code="NO_INVENTORY", max_replays="5", retryable_only="on"
    )
    assert started.status_code == 303
    assert started.headers["location"] == "/console/replay/runs/dry1"
    assert console.replays.started == [
        (ReplayRequest(codes=frozenset({"NO_INVENTORY"})), "0123456789ab")
    ]
    running = await console.client.get("/console/replay/runs/dry1")
    assert 'hx-trigger="every 1s"' in running.text
    assert 'id="confirm"' not in running.text


async def test_too_many_dry_runs_at_once_is_a_429_that_keeps_the_filters(
    console: Console,
) -> None:
    console.replays.start_raises = DryRunsBusy("3 dry runs are running in this API process")
    busy = await console.csrf_post(
        "/console/replay", code="NO_INVENTORY", max_replays="5", retryable_only="on"
    )
    assert busy.status_code == 429
    assert busy.headers["retry-after"] == "10"
    assert "Dry runs are busy" in busy.text
    assert "3 dry runs are running in this API process" in busy.text
    assert "try again shortly" in busy.text
    assert 'href="/console/replay?code=NO_INVENTORY&amp;max_replays=5' in busy.text
    assert console.replays.started == []


async def test_a_finished_dry_run_shows_what_goes_back_and_what_is_held_back(
    console: Console,
) -> None:
    dry = run("dry2", dry_run=True, state=RunState.FINISHED, total=5, scanned=5, replayed=3)
    dry.summary.replayed_by_code.update({"NO_INVENTORY": 3})
    dry.summary.skipped.update({SkipReason.CODE: 1, SkipReason.MAX_REPLAYS: 1})
    dry.summary.max_replays_sample.append(Sample("call-9", "NO_INVENTORY", 0, 4, 5))
    console.replays.runs[dry.id] = dry
    page = await console.client.get("/console/replay/runs/dry2", headers={"HX-Request": "true"})
    assert page.text.startswith('<div id="run" data-state="finished">')
    assert "hx-trigger" not in page.text  # finished: the polling stops
    assert '<tr id="skipped-max-replays"><td>max-replays</td><td class="n">1</td>' in page.text
    assert "call-9" in page.text
    assert "Confirm: replay 3 records" in page.text
    assert 'action="/console/replay/runs/dry2/confirm"' in page.text


async def test_a_confirmed_replay_goes_to_its_progress(console: Console) -> None:
    console.replays.runs["dry1"] = run("dry1", dry_run=True, state=RunState.FINISHED)
    confirmed = await console.csrf_post("/console/replay/runs/dry1/confirm")
    assert confirmed.status_code == 303
    assert confirmed.headers["location"] == "/console/replay/runs/rep1"
    latest = await console.client.get("/console/replay")
    assert 'href="/console/replay/runs/rep1"' in latest.text


async def test_a_replay_running_here_is_named_with_a_link(console: Console) -> None:
    running = run("rep0", dry_run=False, state=RunState.RUNNING)
    console.replays.confirm_raises = ReplayBusy("a replay of group 'g.replay' is running", running)
    console.replays.runs["dry1"] = run("dry1", dry_run=True, state=RunState.FINISHED)
    busy = await console.csrf_post("/console/replay/runs/dry1/confirm")
    assert busy.status_code == 409
    assert "A replay is running" in busy.text
    assert 'href="/console/replay/runs/rep0"' in busy.text


async def test_a_replay_running_elsewhere_is_said_so(console: Console) -> None:
    console.replays.confirm_raises = ReplayBusy("another process holds the group", None)
    console.replays.runs["dry1"] = run("dry1", dry_run=True, state=RunState.FINISHED)
    busy = await console.csrf_post("/console/replay/runs/dry1/confirm")
    assert busy.status_code == 409
    assert "Another process" in busy.text


async def test_an_outdated_dry_run_asks_to_look_again(console: Console) -> None:
    console.replays.confirm_raises = DryRunOutdated("the group moved since")
    console.replays.runs["dry1"] = run("dry1", dry_run=True, state=RunState.FINISHED)
    outdated = await console.csrf_post("/console/replay/runs/dry1/confirm")
    assert outdated.status_code == 409
    assert "The dead letters moved since this dry run: look again." in outdated.text
    assert 'href="/console/replay?code=NO_INVENTORY&amp;max_replays=5' in outdated.text


async def test_confirming_an_unknown_dry_run_asks_to_look_again(console: Console) -> None:
    unknown = await console.csrf_post("/console/replay/runs/nope/confirm")
    assert unknown.status_code == 409
    assert "no such dry run" in unknown.text
    assert 'href="/console/replay"' in unknown.text


async def test_a_post_without_the_token_reaches_no_replay(console: Console) -> None:
    refused = await console.client.post(
        "/console/replay", data={"code": "NO_INVENTORY"}, headers=ORIGIN
    )
    assert refused.status_code == 403
    assert console.replays.started == []
    other_site = await console.client.post(
        "/console/replay",
        data={"csrf": access.csrf_token(TOKEN)},
        headers={"Origin": "http://evil.test"},
    )
    assert other_site.status_code == 403
    assert console.replays.started == []


async def test_a_post_that_is_not_a_form_is_refused(console: Console) -> None:
    refused = await console.client.post(
        "/console/replay",
        content=b'{"code": "NO_INVENTORY"}',
        headers={**ORIGIN, "Content-Type": "application/json"},
    )
    assert refused.status_code == 415


def assert_console_page(answer: httpx.Response, status: int) -> None:
    """A console page (HTML, not the API's JSON) with every one of the console's headers."""
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("text/html")
    for name, value in PAGE_HEADERS.items():
        assert answer.headers[name] == value, name


async def test_a_form_of_too_many_fields_is_a_400_page_before_sign_in(console: Console) -> None:
    fields = "&".join(f"f{i}=1" for i in range(1001))
    with structlog.testing.capture_logs() as logs:
        answer = await console.client.post(
            "/console/sign-in",
            content=fields.encode(),
            headers={**ORIGIN, "Content-Type": "application/x-www-form-urlencoded"},
        )
    assert_console_page(answer, 400)
    assert "the form has more than 1000 fields" in answer.text
    assert [e for e in logs if e["log_level"] == "error"] == []


@pytest.mark.parametrize(
    "path",
    ["/console/refusals/%C2%B2", "/console/refusals/99999999999999999999999"],
    ids=["superscript-two", "past-bigint"],
)
async def test_a_refusal_id_that_is_no_plain_number_is_not_found(
    console: Console, path: str
) -> None:
    # The fake store has no get_rejection: asking it would fail the request.
    assert_console_page(await console.client.get(path), 404)


@pytest.mark.parametrize("page", ["%C2%B2", "99999999999999999999999"])
async def test_a_page_that_is_no_plain_number_is_the_first(console: Console, page: str) -> None:
    answer = await console.client.get(f"/console/refusals?page={page}")
    assert_console_page(answer, 200)


async def test_a_limit_that_is_no_plain_number_is_a_problem_of_the_replay_form(
    console: Console,
) -> None:
    answer = await console.csrf_post("/console/replay", limit="\N{SUPERSCRIPT TWO}")
    assert_console_page(answer, 400)
    assert "limit: &#39;\N{SUPERSCRIPT TWO}&#39; is not a whole number" in answer.text
    assert console.replays.started == []


async def test_a_reference_with_a_control_character_is_a_problem_of_the_lookup(
    console: Console,
) -> None:
    # The fake store has no get_usage: asking it would fail the request.
    answer = await console.client.get("/console/lookup?reference=a%00b")
    assert_console_page(answer, 400)
    assert "the reference holds a control character" in answer.text
    assert 'name="reference"' in answer.text  # the form, to correct it


async def test_a_value_the_database_refuses_is_a_400_page(console: Console) -> None:
    console.store.lists_raise = StoreRefusedData("list usage rejections: DataError: out of range")
    answer = await console.client.get("/console/refusals")
    assert_console_page(answer, 400)
    assert "the database refused a value of this request" in answer.text
    assert "DataError" not in answer.text


async def test_an_unknown_console_address_is_a_console_page(console: Console) -> None:
    answer = await console.client.get("/console/no-such-page%3Cb%3E")
    assert_console_page(answer, 404)
    assert "no-such-page" not in answer.text  # the path is not echoed


async def test_a_wrong_method_is_a_console_page_naming_the_right_one(console: Console) -> None:
    answer = await console.client.get("/console/sign-out")
    assert_console_page(answer, 405)
    assert answer.headers["allow"] == "POST"
    assert "GET is not allowed here; this address takes POST" in answer.text


async def test_an_unexpected_failure_under_console_carries_the_consoles_headers(
    console: Console,
) -> None:
    console.store.lists_raise = RuntimeError("a bug")
    with structlog.testing.capture_logs():
        answer = await console.client.get("/console/refusals")
    assert answer.status_code == 500
    assert "a bug" not in answer.text
    for name, value in PAGE_HEADERS.items():
        assert answer.headers[name] == value, name


async def test_the_apis_own_errors_keep_their_shape_and_headers(console: Console) -> None:
    for path in ("/no-such-resource", "/consoles"):
        answer = await console.client.get(path)
        assert answer.status_code == 404
        assert answer.json()["errors"][0]["code"] == "NOT_FOUND"
        assert "content-security-policy" not in answer.headers
