"""What the benchmark reads from Linux's /proc: CPU seconds and memory of processes,
and how busy the whole machine was. Linux only (the benchmark says so when it starts).

CPU seconds are `utime + stime` of /proc/<pid>/stat (fields 14 and 15, in clock ticks);
peak RSS is `VmHWM` of /proc/<pid>/status (the high-water mark of the resident set).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (field 3 is index 0)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def cpu_seconds(pid: int, *, with_reaped_children: bool = False) -> float:
    """utime + stime of `pid` (and of its children that ended and were reaped, if asked:
    cutime + cstime), in seconds; 0 when the process is gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if with_reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLOCK_TICKS


def _status_kib(pid: int, name: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return 0


def peak_rss_bytes(pid: int) -> int:
    """VmHWM: the largest resident set the process has had, in bytes (0 when gone)."""
    return _status_kib(pid, "VmHWM") * 1024


def rss_bytes(pid: int) -> int:
    """VmRSS: the resident set now, in bytes (0 when gone)."""
    return _status_kib(pid, "VmRSS") * 1024


def children(pid: int) -> list[int]:
    """Pids whose parent is `pid`."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        fields = _stat_fields(int(stat.parent.name))
        if fields is not None and int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of all cores since boot, from the `cpu` line of /proc/stat.
    Busy is everything but idle and iowait."""
    line = Path("/proc/stat").read_text().splitlines()[0]
    ticks = [int(v) for v in line.split()[1:]]
    idle = ticks[3] + ticks[4]
    total = sum(ticks[:8])  # user nice system idle iowait irq softirq steal (guest is in user)
    return (total - idle) / CLOCK_TICKS, total / CLOCK_TICKS


def load_average() -> tuple[float, float, float]:
    one, five, fifteen = os.getloadavg()
    return round(one, 2), round(five, 2), round(fifteen, 2)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def memory_total_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


@dataclass(frozen=True, slots=True)
class CpuSnapshot:
    """CPU seconds used so far by each group of processes and by the whole machine."""

    at: float  # time.monotonic()
    groups: dict[str, float]
    machine_busy: float
    machine_total: float


@dataclass(slots=True)
class CpuMeter:
    """Samples the CPU seconds of named groups of processes (the workers, Postgres, the
    broker, the benchmark itself) and of the machine, so a window can be split into
    who used how many cores. Postgres counts its postmaster, its live backends and the
    backends that ended (reaped by the postmaster)."""

    groups: dict[str, list[int]] = field(default_factory=dict)
    postmaster: int | None = None

    def snapshot(self, at: float) -> CpuSnapshot:
        values = {name: sum(cpu_seconds(pid) for pid in pids) for name, pids in self.groups.items()}
        if self.postmaster is not None:
            values["postgres"] = cpu_seconds(self.postmaster, with_reaped_children=True) + sum(
                cpu_seconds(pid) for pid in children(self.postmaster)
            )
        busy, total = machine_busy_seconds()
        return CpuSnapshot(at, values, busy, total)


def cores_used(start: CpuSnapshot, end: CpuSnapshot) -> dict[str, float]:
    """Average cores each group used between two snapshots, plus `machine` (all busy
    cores) and `others` (busy cores not accounted for by any group: other users of the
    machine, the kernel)."""
    wall = max(end.at - start.at, 1e-9)
    used = {
        name: max(end.groups.get(name, 0.0) - start.groups.get(name, 0.0), 0.0) / wall
        for name in end.groups
    }
    machine = (end.machine_busy - start.machine_busy) / wall
    used["machine"] = machine
    used["others"] = max(machine - sum(v for k, v in used.items() if k != "machine"), 0.0)
    return {k: round(v, 3) for k, v in used.items()}


def sum_cpu(pids: Iterable[int]) -> float:
    return sum(cpu_seconds(pid) for pid in pids)
