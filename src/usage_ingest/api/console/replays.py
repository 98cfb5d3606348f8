"""Replays started from the console: a dry run first, then its confirmation, run in the
background through the same code as `usage-ingest replay` (`replay.run.run_replay`).

INTERFACE STUB: the bodies are being written; the shapes are settled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from usage_ingest.replay.run import ReplaySummary
from usage_ingest.settings import Settings
from usage_ingest.store.store import Store


@dataclass(frozen=True, slots=True)
class ReplayRequest:
    """The filters an operator chose, as `usage-ingest replay` has them."""

    codes: frozenset[str] = frozenset()
    references: frozenset[str] = frozenset()
    since: datetime | None = None
    until: datetime | None = None
    limit: int | None = None
    max_replays: int = 5
    retryable_only: bool = True

    def problems(self) -> list[str]:
        """What makes the request contradictory, one sentence each (as the CLI's)."""
        raise NotImplementedError


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


class ReplayBusy(Exception):
    """A replay of the group is running: `running` when it is this console's, None when
    another process (another API, `usage-ingest replay`) holds it."""

    def __init__(self, message: str, running: ConsoleReplay | None) -> None:
        super().__init__(message)
        self.running = running


class DryRunOutdated(Exception):
    """The dry run to confirm is unknown, unfinished, failed, or the dead letters moved
    since (another replay ran): the operator looks again."""


class ConsoleReplays:
    """The console's replays in this API process."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self._settings = settings
        self._store = store

    def start_dry_run(self, request: ReplayRequest, key_id: str) -> ConsoleReplay:
        """Start a dry run in the background and return it at once."""
        raise NotImplementedError

    async def confirm(self, dry_run_id: str, key_id: str) -> ConsoleReplay:
        """Start the replay the dry run `dry_run_id` showed, with its request; returns
        once the replay holds the group's lock. Raises ReplayBusy or DryRunOutdated."""
        raise NotImplementedError

    def get(self, run_id: str) -> ConsoleReplay | None:
        raise NotImplementedError

    def latest(self) -> ConsoleReplay | None:
        """The replay running now, else the last one finished (dry runs aside)."""
        raise NotImplementedError

    async def close(self) -> None:
        """Stop what runs (a replay finishes its batch in flight) and wait for it."""
        raise NotImplementedError
