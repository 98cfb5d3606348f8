"""The replay pages: the filters, their dry run, its confirmation, and the run's
progress and summary. The replay itself is `ConsoleReplays` (the same loop, commit
protocol and loop guard as `usage-ingest replay`); these routes check the permission
DEAD_LETTER.REPLAY, the CSRF token and the form; `ConsoleReplays` logs every replay
with the key id that confirmed it, and these routes each dry run with the key that
started it."""

from __future__ import annotations

import structlog
from fastapi import APIRouter, Request, Response

from usage_ingest.api.console.pages import (
    ConsoleProblem,
    ConsoleRoute,
    render,
    render_view,
    see_other,
)
from usage_ingest.api.console.replay_form import ReplayForm, read_replay_form
from usage_ingest.api.console.replays import (
    ConsoleReplay,
    ConsoleReplays,
    DryRunOutdated,
    DryRunsBusy,
    ReplayBusy,
    RunState,
)
from usage_ingest.api.console.session import ConsoleUser, UserDep, lacks, posted_form
from usage_ingest.api.keys import Permission
from usage_ingest.errors import ErrorCode
from usage_ingest.replay.selection import SkipReason

log = structlog.get_logger("usage_ingest.api.console")

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)

REPLAY_PATH = "/console/replay"
DRY_RUNS_RETRY_AFTER_S = 10  # a dry run of a large dead-letter topic takes seconds


def _replays(request: Request) -> ConsoleReplays:
    replays: ConsoleReplays = request.app.state.console_replays
    return replays


def _may_replay(user: ConsoleUser) -> None:
    if not user.can(Permission.DEAD_LETTER_REPLAY):
        raise lacks(Permission.DEAD_LETTER_REPLAY, user)


def _form_page(
    request: Request, user: ConsoleUser, form: ReplayForm, problems: list[str], status: int = 200
) -> Response:
    context = {
        "user": user,
        "form": form,
        "problems": problems,
        "codes": tuple(ErrorCode),
        "latest": _replays(request).latest(),
    }
    return render(request, "replay.html", context, status)


@router.get(REPLAY_PATH)
async def replay_form(request: Request, user: UserDep) -> Response:
    _may_replay(user)
    params = {name: request.query_params.getlist(name) for name in request.query_params}
    return _form_page(request, user, ReplayForm.of(params, submitted="filled" in params), [])


@router.post(REPLAY_PATH)
async def start_dry_run(request: Request, user: UserDep) -> Response:
    _may_replay(user)
    form = ReplayForm.of(await posted_form(request, user), submitted=True)
    read = read_replay_form(form)
    if read.request is None:
        return _form_page(request, user, form, read.problems, 400)
    try:
        run = _replays(request).start_dry_run(read.request, user.key_id)
    except DryRunsBusy as busy:  # logged by ConsoleReplays, with the key id
        again = REPLAY_PATH + form.link()
        context = {"user": user, "message": str(busy), "again_link": again}
        page = render(request, "dry_runs_busy.html", context, 429)
        page.headers["Retry-After"] = str(DRY_RUNS_RETRY_AFTER_S)
        return page
    log.info("console_replay_dry_run_started", run_id=run.id, key_id=user.key_id)
    return see_other(request, f"{REPLAY_PATH}/runs/{run.id}")


def _run(request: Request, user: ConsoleUser, run_id: str) -> ConsoleReplay:
    run = _replays(request).get(run_id)
    if run is None:
        raise ConsoleProblem(404, "Not found", f"there is no replay run {run_id}", user)
    return run


@router.get(REPLAY_PATH + "/runs/{run_id}")
async def replay_run(request: Request, user: UserDep, run_id: str) -> Response:
    _may_replay(user)
    run = _run(request, user, run_id)
    context = {
        "user": user,
        "run": run,
        "running": run.state is RunState.RUNNING,
        "reasons": tuple(SkipReason),
        "change_link": REPLAY_PATH + ReplayForm.of_request(run.request).link(),
    }
    return render_view(request, "replay_run.html", "replay_run_panel.html", context)


@router.post(REPLAY_PATH + "/runs/{run_id}/confirm")
async def confirm_replay(request: Request, user: UserDep, run_id: str) -> Response:
    _may_replay(user)
    await posted_form(request, user)
    replays = _replays(request)
    dry_run = replays.get(run_id)
    try:
        run = await replays.confirm(run_id, user.key_id)
    except ReplayBusy as busy:  # logged by ConsoleReplays, with the key id
        context = {"user": user, "busy": busy, "message": str(busy)}
        return render(request, "replay_busy.html", context, 409)
    except DryRunOutdated as outdated:
        again = "" if dry_run is None else ReplayForm.of_request(dry_run.request).link()
        context = {"user": user, "message": str(outdated), "again_link": REPLAY_PATH + again}
        return render(request, "replay_outdated.html", context, 409)
    return see_other(request, f"{REPLAY_PATH}/runs/{run.id}")
