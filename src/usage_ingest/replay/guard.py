"""One replay per replay group at a time: the port of the lock a replay holds while it
publishes and commits (`usage-ingest replay` and the console alike).

Two replays of one group reading from the same committed positions would both publish
the same dead letters before either commits: each would be replayed twice. So a replay
that publishes first takes the group's lock, and gives up at once when another holds it
(`ReplayRunning`). A dry run takes none: it neither publishes nor commits.

The store implements the port with a Postgres session-level advisory lock
(`store.replay_lock`), which Postgres releases when the holding session ends, so a
replay process that dies frees the group. That is also how a replay can lose its lock
while it runs (its connection drops): the loop asks `held()` before each batch it
publishes, and stops when the answer is no. Unit tests use an in-memory fake.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Protocol


class GroupLock(Protocol):
    """The lock of one replay group, held for the length of a run."""

    async def held(self) -> bool:
        """Whether it is still held (False once its connection was lost)."""
        ...


class ReplayGuard(Protocol):
    def hold_replay_lock(self, group_id: str) -> AbstractAsyncContextManager[GroupLock]:
        """Hold the lock of `group_id` for the block; raises `ReplayRunning` at once when
        another run holds it, and `StoreUnavailable` when the database is away."""
        ...
