"""The overview's chart of outcomes, drawn on the server as SVG: one bar per minute of
the last hour, stacked created / duplicate / rejected, and the refusals by code. Pure
geometry: the template only writes out the rectangles computed here, so the chart needs
no script and no library.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from usage_ingest.store.worker_reports import OutcomeCount

STATUSES: Final = ("created", "duplicate", "rejected")  # bottom to top
WIDTH: Final = 720.0
HEIGHT: Final = 200.0
# Room for the axis labels: left of the bars and under them.
LEFT: Final = 40.0
BOTTOM: Final = 20.0
TOP: Final = 8.0
_BAR_SHARE = 0.8  # of a minute's slot; the rest is the gap between bars
_TICK_EVERY_MIN = 10


@dataclass(frozen=True, slots=True)
class Segment:
    status: str
    y: float
    height: float
    count: int


@dataclass(frozen=True, slots=True)
class Bar:
    minute: datetime
    x: float
    width: float
    segments: tuple[Segment, ...]
    title: str  # the bar's tooltip: the minute and its counts


@dataclass(frozen=True, slots=True)
class Tick:
    position: float
    label: str


@dataclass(frozen=True, slots=True)
class CodeBar:
    code: str
    count: int
    width: float  # of the widest, WIDTH - LEFT


@dataclass(frozen=True, slots=True)
class Chart:
    bars: tuple[Bar, ...]
    scale: int  # the count at the top of the plot
    x_ticks: tuple[Tick, ...]
    y_ticks: tuple[Tick, ...]
    totals: dict[str, int]
    by_code: tuple[CodeBar, ...]
    width: float = WIDTH
    height: float = HEIGHT
    left: float = LEFT
    baseline: float = HEIGHT - BOTTOM


def nice_ceiling(value: int) -> int:
    """The smallest 1, 2 or 5 times a power of ten at or above `value` (at least 1)."""
    if value <= 1:
        return 1
    power = int(10 ** math.floor(math.log10(value)))
    for step in (1, 2, 5, 10):
        if step * power >= value:
            return step * power
    return 10 * power  # pragma: no cover - the loop ends at 10


def _minute_of(instant: datetime) -> datetime:
    return instant.replace(second=0, microsecond=0)


def _per_minute(counts: Iterable[OutcomeCount]) -> dict[datetime, Counter[str]]:
    minutes: dict[datetime, Counter[str]] = {}
    for count in counts:
        minutes.setdefault(_minute_of(count.minute), Counter())[count.status] += count.count
    return minutes


def _bar(minute: datetime, counts: Counter[str], x: float, width: float, scale: int) -> Bar:
    plot = HEIGHT - BOTTOM - TOP
    y = HEIGHT - BOTTOM
    segments = []
    for status in STATUSES:
        height = round(counts[status] / scale * plot, 2)
        y = round(y - height, 2)
        segments.append(Segment(status, y, height, counts[status]))
    figures = ", ".join(f"{counts[s]} {s}" for s in STATUSES)
    return Bar(minute, round(x, 2), round(width, 2), tuple(segments), f"{minute:%H:%M}: {figures}")


def _code_bars(counts: Iterable[OutcomeCount]) -> tuple[CodeBar, ...]:
    by_code: Counter[str] = Counter()
    for count in counts:
        if count.status == "rejected":
            by_code[count.code or "unknown"] += count.count
    widest = max(by_code.values(), default=0)
    return tuple(
        CodeBar(code, n, round(n / widest * (WIDTH - LEFT), 2))
        for code, n in sorted(by_code.items(), key=lambda item: (-item[1], item[0]))
    )


def outcome_chart(counts: list[OutcomeCount], now: datetime, minutes: int = 60) -> Chart:
    """The chart of the `minutes` minutes up to `now`'s (the last bar is the current,
    unfinished minute); counts outside that hour are left out."""
    last = _minute_of(now)
    first = last - timedelta(minutes=minutes - 1)
    shown = [c for c in counts if first <= _minute_of(c.minute) <= last]
    per_minute = _per_minute(shown)
    scale = nice_ceiling(max((sum(c.values()) for c in per_minute.values()), default=0))
    slot = (WIDTH - LEFT) / minutes
    bars = []
    x_ticks = []
    for i in range(minutes):
        minute = first + timedelta(minutes=i)
        x = LEFT + i * slot
        bars.append(_bar(minute, per_minute.get(minute, Counter()), x, slot * _BAR_SHARE, scale))
        if minute.minute % _TICK_EVERY_MIN == 0:
            x_ticks.append(Tick(round(x, 2), f"{minute:%H:%M}"))
    plot = HEIGHT - BOTTOM - TOP
    y_ticks = tuple(
        Tick(round(HEIGHT - BOTTOM - share * plot, 2), str(round(scale * share)))
        for share in (0.0, 0.5, 1.0)
        if share == 0.0 or scale * share == int(scale * share)
    )
    totals = {s: sum(c[s] for c in per_minute.values()) for s in STATUSES}
    return Chart(tuple(bars), scale, tuple(x_ticks), y_ticks, totals, _code_bars(shown))


def rejection_ratio(counts: list[OutcomeCount], since: datetime) -> float | None:
    """The share of outcomes refused from `since` on, as the alert computes it over its
    window; None when there were none."""
    recent = [c for c in counts if c.minute >= _minute_of(since)]
    total = sum(c.count for c in recent)
    if total == 0:
        return None
    return sum(c.count for c in recent if c.status == "rejected") / total
