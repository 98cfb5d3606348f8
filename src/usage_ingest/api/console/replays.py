"""Replays started from the console: a dry run first, then its confirmation, run in the
background through the same code as `usage-ingest replay` (`replay.run.run_replay`).

The guarantees are the command line's: the same commit protocol and loop guard, and one
replay per replay group at a time across processes (the group's lock in Postgres, which
`usage-ingest replay` takes too). A confirmation replays what the dry run showed: its own
request, over the range it read, from the positions it started at up to the ends it read
to. When another replay moved the group since, it is refused (`DryRunOutdated`) before
anything is published; dead letters that arrived after the dry run wait for the next run.
Two confirmations at once: one runs, the other gets `ReplayBusy`.

Runs are tasks of the API process, kept in memory for the pages: the last few replays
and the recent dry runs. Each dry run reads the whole dead-letter topic with a consumer of
its own, so only a few run at once (`MAX_DRY_RUNS`; beyond, `DryRunsBusy`). Every replay
is logged (`console_replay_started`, `console_replay_finished`) with the id of the key
that confirmed it.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

import structlog

from usage_ingest.api.console.replay_request import (
    ReplayRequest as ReplayRequest,  # noqa: PLC0414 - re-exported
)
from usage_ingest.errors import ReplayOutdated, ReplayRunning, UsageIngestError
from usage_ingest.replay.guard import ReplayGuard
from usage_ingest.replay.run import Progress, ReplayPlan, replay_plan, run_replay
from usage_ingest.replay.summary import ReplaySummary
from usage_ingest.settings import Settings
from usage_ingest.times import utc_now

log = structlog.get_logger("usage_ingest.api.console")

SHOW = 100  # replayed and held-back records a summary names
REPLAYS_KEPT = 20
DRY_RUNS_KEPT = 20
DRY_RUN_VALID = timedelta(minutes=15)
MAX_DRY_RUNS = 3  # running at once in this API process, each with a consumer of its own


class RunState(StrEnum):
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"


@dataclass(slots=True)
class ConsoleReplay:
    """One run, dry or not; `summary` fills in while it runs."""

    id: str
    dry_run: bool
    request: ReplayRequest
    key_id: str
    started_at: datetime
    summary: ReplaySummary
    state: RunState = RunState.RUNNING
    error: str | None = None
    finished_at: datetime | None = None
    confirms: str | None = None  # the id of the dry run this replay confirms
    starts: dict[int, int] = field(default_factory=dict)  # partition -> first offset read
    ends: dict[int, int] = field(default_factory=dict)  # partition -> offset it read up to


class ReplayBusy(Exception):
    """A replay of the group is running: `running` when it is this console's, None when
    another process (another API, `usage-ingest replay`) holds it."""

    def __init__(self, message: str, running: ConsoleReplay | None) -> None:
        super().__init__(message)
        self.running = running


class DryRunsBusy(Exception):
    """`MAX_DRY_RUNS` dry runs are running in this API process: nothing was started, the
    operator tries again shortly."""


class DryRunOutdated(Exception):
    """The dry run to confirm is unknown, unfinished, failed, or the dead letters moved
    since (another replay ran): the operator looks again."""


class Runner(Protocol):
    """`run_replay`'s shape, as the console calls it (the unit tests give a fake)."""

    def __call__(
        self,
        settings: Settings,
        *,
        source: str,
        group_id: str,
        plan: ReplayPlan,
        guard: ReplayGuard | None,
        expected_starts: Mapping[int, int] | None = None,
        expected_ends: Mapping[int, int] | None = None,
        stop: asyncio.Event | None = None,
        on_start: Progress | None = None,
        progress: Progress | None = None,
    ) -> Awaitable[ReplaySummary]: ...


class ConsoleReplays:
    """The console's replays in this API process."""

    def __init__(
        self,
        settings: Settings,
        store: ReplayGuard,
        *,
        runner: Runner = run_replay,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._settings = settings
        self._store = store
        self._runner = runner
        self._clock = clock
        self._runs: dict[str, ConsoleReplay] = {}  # oldest first
        self._tasks: set[asyncio.Task[None]] = set()
        self._confirmed: set[str] = set()  # dry runs a replay started from
        self._running: ConsoleReplay | None = None
        self._stop = asyncio.Event()

    @property
    def group_id(self) -> str:
        return f"{self._settings.group_id}.replay"

    def start_dry_run(self, request: ReplayRequest, key_id: str) -> ConsoleReplay:
        """Start a dry run in the background and return it at once. A contradictory
        request raises ValueError (its `problems()`, joined); `MAX_DRY_RUNS` running
        already, DryRunsBusy."""
        problems = request.problems()
        if problems:
            raise ValueError("; ".join(problems))
        running = sum(r.dry_run and r.state is RunState.RUNNING for r in self._runs.values())
        if running >= MAX_DRY_RUNS:  # no await since the count: it holds
            log.info("console_replay_dry_run_refused", key_id=key_id, running=running)
            raise DryRunsBusy(
                f"{running} dry runs are running in this API process (at most {MAX_DRY_RUNS} "
                "at once): nothing was started; try again shortly"
            )
        run = self._new_run(request, key_id, dry_run=True)
        self._spawn(self._execute(run, None, None))
        return run

    async def confirm(self, dry_run_id: str, key_id: str) -> ConsoleReplay:
        """Start the replay the dry run `dry_run_id` showed, with its request; returns
        once the replay holds the group's lock. Raises ReplayBusy or DryRunOutdated."""
        dry = self._confirmable(dry_run_id)
        if self._running is not None:  # no await since the check: one confirm wins
            self._refused(dry, key_id, "busy")
            raise ReplayBusy(
                f"a replay of group {self.group_id!r} is running (started from this console "
                f"at {self._running.started_at.isoformat()})",
                self._running,
            )
        run = self._new_run(dry.request, key_id, dry_run=False, confirms=dry.id)
        self._running = run
        started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._spawn(self._execute(run, started, dry))
        try:
            await asyncio.shield(started)
        except ReplayRunning as exc:
            raise ReplayBusy(str(exc), None) from exc
        except ReplayOutdated as exc:
            raise DryRunOutdated(str(exc)) from exc
        return run

    def get(self, run_id: str) -> ConsoleReplay | None:
        self._prune()
        return self._runs.get(run_id)

    def latest(self) -> ConsoleReplay | None:
        """The replay running now, else the last one finished (dry runs aside)."""
        if self._running is not None:
            return self._running
        replays = [run for run in self._runs.values() if not run.dry_run]
        return replays[-1] if replays else None

    async def close(self) -> None:
        """Stop what runs (a replay finishes its batch in flight) and wait for it."""
        self._stop.set()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- bookkeeping --------------------------------------------------------------------

    def _new_run(
        self, request: ReplayRequest, key_id: str, *, dry_run: bool, confirms: str | None = None
    ) -> ConsoleReplay:
        self._prune()
        settings = self._settings
        summary = ReplaySummary(settings.topic_dlq, settings.topic_events, self.group_id, dry_run)
        run = ConsoleReplay(
            id=secrets.token_hex(8),
            dry_run=dry_run,
            request=request,
            key_id=key_id,
            started_at=self._clock(),
            summary=summary,
            confirms=confirms,
        )
        self._runs[run.id] = run
        return run

    def _confirmable(self, dry_run_id: str) -> ConsoleReplay:
        """The dry run, if a replay may start from it; DryRunOutdated otherwise."""
        self._prune()
        dry = self._runs.get(dry_run_id)
        if dry is None or not dry.dry_run:
            raise DryRunOutdated("no such dry run (it may have expired): do the dry run again")
        if dry.state is RunState.RUNNING:
            raise DryRunOutdated("the dry run has not finished yet: wait for its result")
        if dry.state is RunState.FAILED or dry.summary.interrupted:
            raise DryRunOutdated(f"the dry run did not finish: {dry.error or 'interrupted'}")
        if dry.id in self._confirmed:
            raise DryRunOutdated("this dry run was confirmed already: do the dry run again")
        return dry

    def _prune(self) -> None:
        """Forget expired dry runs and all but the last few runs; never a running one."""
        now = self._clock()
        finished = [run for run in self._runs.values() if run.state is not RunState.RUNNING]
        expired = {
            run.id
            for run in finished
            if run.dry_run and run.finished_at and now - run.finished_at > DRY_RUN_VALID
        }
        for dry_run, kept in ((True, DRY_RUNS_KEPT), (False, REPLAYS_KEPT)):
            same = [run.id for run in finished if run.dry_run is dry_run and run.id not in expired]
            expired.update(same[: max(len(same) - kept, 0)])
        for run_id in expired:
            del self._runs[run_id]
            self._confirmed.discard(run_id)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- a run --------------------------------------------------------------------------

    async def _execute(
        self,
        run: ConsoleReplay,
        started: asyncio.Future[None] | None,
        confirmed: ConsoleReplay | None,
    ) -> None:
        """Run `run` to its end, over the range of the dry run it `confirmed` (if any);
        `started` learns when it holds the lock, or why not."""

        def on_start(summary: ReplaySummary) -> None:
            run.summary = summary
            run.starts, run.ends = dict(summary.starts), dict(summary.ends)
            if not run.dry_run:
                assert run.confirms is not None
                self._confirmed.add(run.confirms)
                self._log_started(run)
            if started is not None and not started.done():
                started.set_result(None)

        def on_progress(summary: ReplaySummary) -> None:
            run.summary = summary

        try:
            run.summary = await self._runner(
                self._settings,
                source=self._settings.topic_dlq,
                group_id=self.group_id,
                plan=self._plan(run),
                guard=self._store,
                expected_starts=None if confirmed is None else confirmed.starts,
                expected_ends=None if confirmed is None else confirmed.ends,
                stop=self._stop,
                on_start=on_start,
                progress=on_progress,
            )
            run.error = run.summary.stopped_because
            run.state = RunState.FAILED if run.error else RunState.FINISHED
        except (ReplayRunning, ReplayOutdated) as exc:
            self._not_started(run, started, exc)
        except UsageIngestError as exc:  # the broker away, a topic missing: said on the page
            run.state, run.error = RunState.FAILED, str(exc)
        except Exception as exc:
            log.exception("console_replay_crashed", run_id=run.id)
            run.state, run.error = RunState.FAILED, f"unexpected error: {type(exc).__name__}"
        finally:
            self._ended(run, started)

    def _plan(self, run: ConsoleReplay) -> ReplayPlan:
        return replay_plan(
            self._settings,
            destination=self._settings.topic_events,
            selection=run.request.selection(),
            limit=run.request.limit,
            dry_run=run.dry_run,
            show=SHOW,
        )

    def _not_started(
        self,
        run: ConsoleReplay,
        started: asyncio.Future[None] | None,
        refusal: ReplayRunning | ReplayOutdated,
    ) -> None:
        """Refused before anything was read for it: told to the confirming request, and
        not kept as a run (nothing happened)."""
        run.state, run.error = RunState.FAILED, str(refusal)
        self._runs.pop(run.id, None)
        dry = self._runs.get(run.confirms or "")
        if dry is not None:
            why = "busy" if isinstance(refusal, ReplayRunning) else "outdated"
            self._refused(dry, run.key_id, why)
        if started is not None and not started.done():
            started.set_exception(refusal)

    def _ended(self, run: ConsoleReplay, started: asyncio.Future[None] | None) -> None:
        run.finished_at = self._clock()
        if started is not None and not started.done():  # failed before it held the lock
            started.set_result(None)
        if self._running is run:
            self._running = None
        if not run.dry_run and run.id in self._runs:
            self._log_finished(run)

    # --- what the log keeps -------------------------------------------------------------

    def _log_started(self, run: ConsoleReplay) -> None:
        log.info(
            "console_replay_started",
            key_id=run.key_id,
            run_id=run.id,
            dry_run_id=run.confirms,
            group_id=self.group_id,
            filters=run.request.filters(),
            starts=run.starts,
            ends=run.ends,
        )

    def _log_finished(self, run: ConsoleReplay) -> None:
        summary = run.summary
        log.info(
            "console_replay_finished",
            key_id=run.key_id,
            run_id=run.id,
            dry_run_id=run.confirms,
            group_id=self.group_id,
            filters=run.request.filters(),
            state=run.state.value,
            error=run.error,
            scanned=summary.scanned,
            matched=summary.matched,
            replayed=summary.replayed,
            skipped={reason.value: n for reason, n in summary.skipped.items()},
            replayed_by_code=dict(summary.replayed_by_code),
            limit_reached=summary.limit_reached,
            interrupted=summary.interrupted,
            committed=summary.committed,
        )

    def _refused(self, dry: ConsoleReplay, key_id: str, why: str) -> None:
        log.info(
            "console_replay_refused",
            key_id=key_id,
            dry_run_id=dry.id,
            group_id=self.group_id,
            reason=why,
            filters=dry.request.filters(),
        )
