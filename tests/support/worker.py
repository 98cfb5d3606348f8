"""The worker in the test's own event loop, as `usage-ingest run` would run it."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from usage_ingest.settings import Settings
from usage_ingest.worker.metrics import Counters
from usage_ingest.worker.runtime import run_worker


@dataclass
class RunningWorker:
    """A worker running in this event loop, as `usage-ingest run` would."""

    settings: Settings
    stop_event: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[Counters] | None = None

    def start(self) -> RunningWorker:
        self.task = asyncio.create_task(run_worker(self.settings, self.stop_event))
        return self

    async def stop(self, timeout: float = 30.0) -> Counters:
        assert self.task is not None
        self.stop_event.set()
        return await asyncio.wait_for(self.task, timeout)

    async def crash(self) -> None:
        """Abandon everything at once, like kill -9: no commit, no goodbye."""
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
