"""The benchmark's table (measurement, value, unit, target, met?) and its JSON document."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

MIB = 1024 * 1024
# Values at least this large are shown without decimals, or with one.
_WHOLE_FROM = 100
_ONE_DECIMAL_FROM = 10


@dataclass(frozen=True, slots=True)
class Row:
    measurement: str
    value: float | None
    unit: str
    target: str = ""
    met: bool | None = None  # None: no target, or not decidable here
    note: str = ""

    def as_json(self) -> dict[str, Any]:
        value = None if self.value is None or math.isnan(self.value) else self.value
        return {
            "measurement": self.measurement,
            "value": value,
            "unit": self.unit,
            "target": self.target or None,
            "met": self.met,
            "note": self.note or None,
        }


def _shown(value: float | None, unit: str) -> str:
    if value is None or math.isnan(value):
        return "—"
    if unit == "x":
        return f"{value:.2f}"
    if abs(value) >= _WHOLE_FROM:
        return f"{value:,.0f}"
    if abs(value) >= _ONE_DECIMAL_FROM:
        return f"{value:.1f}"
    return f"{value:.3f}"


def render(rows: list[Row], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for name, justify in (
        ("measurement", "left"),
        ("value", "right"),
        ("unit", "left"),
        ("target", "left"),
        ("met?", "left"),
        ("note", "left"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in rows:
        met = {True: "[green]yes[/]", False: "[red]no[/]", None: ""}[row.met]
        table.add_row(
            row.measurement, _shown(row.value, row.unit), row.unit, row.target, met, row.note
        )
    return table


def print_table(rows: list[Row], title: str) -> None:
    Console(width=200).print(render(rows, title))


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, sort_keys=False, default=str) + "\n")
