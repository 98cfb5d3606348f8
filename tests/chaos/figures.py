"""The figure table of the chaos suite: one row per scenario that ran, printed at the
end of the session (conftest.py) and written as JSON.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from tests.chaos.checker import Verdict


@dataclass
class Row:
    scenario: str
    events: int
    stored: int
    lost: int
    doubled: int
    outcomes_missing: int
    recovery_s: float | None
    faults: str
    seconds: float


RESULTS: list[Row] = []
TABLE_COLUMNS = (
    ("scenario", 30),
    ("events", 7),
    ("stored", 7),
    ("lost", 5),
    ("doubled", 8),
    ("outcomes missing", 17),
    ("recovery (s)", 13),
    ("faults injected", 0),
)


def record(
    scenario: str,
    verdict: Verdict,
    *,
    recovery_s: float | None,
    faults: str,
    started: float,
) -> None:
    """One row of the table printed at the end of the session (conftest.py)."""
    RESULTS.append(
        Row(
            scenario,
            verdict.events,
            verdict.stored,
            verdict.lost,
            verdict.doubled,
            verdict.outcomes_missing,
            None if recovery_s is None else round(recovery_s, 1),
            faults,
            round(time.monotonic() - started, 1),
        )
    )


def table_lines(rows: Sequence[Row]) -> list[str]:
    def cells(values: Sequence[str]) -> str:
        return "  ".join(
            v.ljust(width) if width else v
            for v, (_, width) in zip(values, TABLE_COLUMNS, strict=True)
        )

    lines = [cells([name for name, _ in TABLE_COLUMNS])]
    for row in sorted(rows, key=lambda r: r.scenario):
        recovery = "-" if row.recovery_s is None else f"{row.recovery_s:.1f}"
        lines.append(
            cells(
                [
                    row.scenario,
                    str(row.events),
                    str(row.stored),
                    str(row.lost),
                    str(row.doubled),
                    str(row.outcomes_missing),
                    recovery,
                    row.faults,
                ]
            )
        )
    return lines


def results_json(rows: Sequence[Row]) -> str:
    return json.dumps([asdict(r) for r in sorted(rows, key=lambda r: r.scenario)], indent=2)
