"""What `usage-ingest replay` shows: progress while it runs, a summary at the end.

Progress goes to standard error: a rich progress bar on a terminal, otherwise
a plain line at most once a second (and one at the end), which logs and CI
output keep readable. The summary goes to standard output, as a table or, with
`--json`, as one JSON document.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from types import TracebackType
from typing import Self

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from usage_ingest.replay.selection import SkipReason
from usage_ingest.replay.summary import ReplaySummary, Sample

_PLAIN_INTERVAL_S = 1.0


class ReplayProgress:
    """Shows how far the scan got, as a bar on a terminal or as plain lines."""

    def __init__(
        self,
        console: Console,
        interval_s: float = _PLAIN_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._console = console
        self._interval_s = interval_s
        self._clock = clock
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        self._last_line = float("-inf")
        self._shown: tuple[int, int, int] | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.stop()

    def start(self, summary: ReplaySummary) -> None:
        verb = "would replay" if summary.dry_run else "replayed"
        if self._console.is_terminal:
            self._bar = Progress(
                TextColumn(f"{'dry run: ' if summary.dry_run else ''}{summary.source}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn(verb + " {task.fields[replayed]}"),
                TimeElapsedColumn(),
                console=self._console,
                transient=False,
            )
            self._task = self._bar.add_task("scan", total=summary.total, replayed=0)
            self._bar.start()
        else:
            self._console.print(
                f"replay: {'dry run, ' if summary.dry_run else ''}scanning up to "
                f"{summary.total} record(s) of {summary.source} for group {summary.group_id}",
                highlight=False,
                soft_wrap=True,
            )

    def update(self, summary: ReplaySummary) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, completed=summary.scanned, replayed=summary.replayed)
            return
        now = self._clock()
        if now - self._last_line >= self._interval_s:
            self._last_line = now
            self._line(summary)

    def finish(self, summary: ReplaySummary) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, completed=summary.scanned, replayed=summary.replayed)
            self._bar.stop()
            self._bar = None
        elif self._shown != (summary.scanned, summary.matched, summary.replayed):
            self._line(summary)

    def _line(self, summary: ReplaySummary) -> None:
        self._shown = (summary.scanned, summary.matched, summary.replayed)
        verb = "would replay" if summary.dry_run else "replayed"
        self._console.print(
            f"replay: scanned {summary.scanned}/{summary.total}, matched {summary.matched}, "
            f"{verb} {summary.replayed}",
            highlight=False,
            soft_wrap=True,
        )


def print_json(summary: ReplaySummary, console: Console) -> None:
    console.print(json.dumps(summary.to_json()), highlight=False, soft_wrap=True)


def print_summary(summary: ReplaySummary, console: Console) -> None:
    """The final table: scanned, matched, replayed (by code), skipped by reason."""
    verb = "would replay" if summary.dry_run else "replayed"
    title = (
        f"Dry run of {summary.source} -> {summary.destination} (group {summary.group_id}): "
        "nothing was published, nothing was committed"
        if summary.dry_run
        else f"Replay of {summary.source} -> {summary.destination} (group {summary.group_id})"
    )
    console.print(title, highlight=False, soft_wrap=True)
    table = Table(show_header=True, header_style="bold")
    table.add_column("dead letters")
    table.add_column("count", justify="right")
    table.add_row("scanned", str(summary.scanned))
    table.add_row("matched", str(summary.matched))
    table.add_row(verb, str(summary.replayed))
    for code, count in sorted(summary.replayed_by_code.items()):
        table.add_row(f"  {code}", str(count))
    for reason in SkipReason:
        table.add_row(f"skipped: {reason.value}", str(summary.skipped[reason]))
    console.print(table)
    _print_samples(
        console, f"{verb} (first {len(summary.replayed_sample)}):", summary.replayed_sample
    )
    _print_samples(
        console,
        f"held back by --max-replays (first {len(summary.max_replays_sample)}):",
        summary.max_replays_sample,
    )
    if summary.max_replays_sample:
        console.print(
            "these were replayed --max-replays times and failed each time: fix their cause, "
            "then replay them with a higher --max-replays (or leave them)",
            highlight=False,
        )
    if summary.limit_reached:
        console.print("--limit reached: more dead letters remain; run again to continue")
    if summary.interrupted:
        console.print("interrupted: the rest remains for the next run")
    if summary.committed:
        positions = ", ".join(f"{p}: {o}" for p, o in sorted(summary.committed.items()))
        console.print(f"committed for {summary.group_id}: {positions}", highlight=False)
    elif not summary.dry_run:
        console.print("nothing new to commit", highlight=False)


def _print_samples(console: Console, title: str, samples: list[Sample]) -> None:
    if not samples:
        return
    table = Table(title=title, title_justify="left", show_header=True, header_style="bold")
    table.add_column("externalReference", overflow="fold")
    table.add_column("code", no_wrap=True)
    for name in ("partition", "offset", "replays"):
        table.add_column(name, justify="right", no_wrap=True)
    for sample in samples:
        table.add_row(
            sample.reference or "(none)",
            sample.code or "(none)",
            str(sample.partition),
            str(sample.offset),
            str(sample.replay_count),
        )
    console.print(table)
