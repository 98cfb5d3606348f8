"""What an operator asks the console to replay (`ReplayRequest`): the filters of
`usage-ingest replay`, checked with the command line's words."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from usage_ingest.replay.selection import DEFAULT_MAX_REPLAYS, Selection


@dataclass(frozen=True, slots=True)
class ReplayRequest:
    """The filters an operator chose, as `usage-ingest replay` has them."""

    codes: frozenset[str] = frozenset()
    references: frozenset[str] = frozenset()
    since: datetime | None = None
    until: datetime | None = None
    limit: int | None = None
    max_replays: int = DEFAULT_MAX_REPLAYS
    retryable_only: bool = True

    def selection(self) -> Selection:
        return Selection(
            codes=frozenset(c.strip().upper() for c in self.codes),
            retryable_only=self.retryable_only,
            references=self.references,
            since=self.since,
            until=self.until,
            max_replays=self.max_replays,
        )

    def problems(self) -> list[str]:
        """What makes the request contradictory, one sentence each (as the CLI's)."""
        found = self.selection().problems()
        if self.limit is not None and self.limit < 1:
            found.append("--limit must be at least 1")
        return found

    def filters(self) -> dict[str, Any]:
        """The request as its log lines show it."""
        return {
            "codes": sorted(self.selection().codes),
            "references": sorted(self.references),
            "since": None if self.since is None else self.since.isoformat(),
            "until": None if self.until is None else self.until.isoformat(),
            "limit": self.limit,
            "max_replays": self.max_replays,
            "retryable_only": self.retryable_only,
        }
