"""A summary of a py-spy profile in collapsed-stack form (`py-spy record --format raw`).

Three views of the on-CPU samples (py-spy leaves out samples where the worker waits in
its event loop's `select`):

* self: the function the sample was in (leaf frame);
* by project function: the innermost `usage_ingest` frame of the sample, so library work
  (pydantic, json, asyncpg, aiokafka) is charged to the project code that asked for it;
  samples with no project frame below the command line (the event loop itself, aiokafka's
  background fetch and send tasks) are charged to the package of their leaf frame;
* inclusive: project functions, with everything they called.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

_FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")
_PROJECT = "usage_ingest/"
_ENTRY = "usage_ingest/cli/"


@dataclass(frozen=True, slots=True)
class _Frame:
    function: str
    file: str

    @property
    def project(self) -> bool:
        return self.file.startswith(_PROJECT)

    @property
    def package(self) -> str:
        return self.file.split("/", 1)[0] if "/" in self.file else self.file

    def __str__(self) -> str:
        return f"{self.function} ({self.file})"


@dataclass(frozen=True, slots=True)
class ProfileSummary:
    samples: int
    self_time: list[tuple[str, int]]
    by_project_function: list[tuple[str, int]]
    inclusive: list[tuple[str, int]]

    def lines(self, top: int = 15) -> list[str]:
        def share(rows: list[tuple[str, int]]) -> list[str]:
            return [f"    {100 * n / max(self.samples, 1):5.1f}%  {name}" for name, n in rows[:top]]

        return [
            f"{self.samples} on-CPU samples of the pipeline worker (py-spy, 100 Hz)",
            "  self (leaf function):",
            *share(self.self_time),
            "  by innermost usage_ingest function (library work charged to its caller):",
            *share(self.by_project_function),
            "  inclusive, usage_ingest functions:",
            *share(self.inclusive),
        ]

    def as_json(self, top: int = 30) -> dict[str, object]:
        return {
            "samples": self.samples,
            "self": self.self_time[:top],
            "byProjectFunction": self.by_project_function[:top],
            "inclusiveProject": self.inclusive[:top],
        }


def _frame(text: str) -> _Frame:
    """`function (path/to/module.py:123)`; site-packages and src prefixes are dropped."""
    match = _FRAME.match(text.strip())
    if match is None:
        return _Frame(text.strip(), "?")
    file = match["file"]
    for marker in ("site-packages/", "/src/", "/lib/python3"):
        if marker in file:
            file = file.split(marker, 1)[1]
            if marker == "/lib/python3":
                file = file.split("/", 1)[1] if "/" in file else file
    return _Frame(match["function"], file)


def summarise(path: Path) -> ProfileSummary:
    self_time: Counter[str] = Counter()
    by_project: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = [_frame(f) for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        count = int(count_text)
        total += count
        leaf = frames[-1]
        self_time[str(leaf)] += count
        project = [f for f in frames if f.project]
        # The command line's frames hold the event loop: everything runs under them.
        owners = [f for f in project if not f.file.startswith(_ENTRY)]
        owner = str(owners[-1]) if owners else f"(event loop, no project frame: {leaf.package})"
        by_project[owner] += count
        for name in {str(f) for f in project}:
            inclusive[name] += count
    return ProfileSummary(
        total, self_time.most_common(), by_project.most_common(), inclusive.most_common()
    )
