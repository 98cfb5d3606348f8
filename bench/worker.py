"""The real worker as a subprocess, and how a measurement watches it drain a backlog.

A worker is `usage-ingest run` from the benchmark's own virtualenv, configured through
`USAGE_INGEST_*` environment variables, its output in a log file. Its progress is read
from the consumer group's committed offsets (OffsetFetch, the way `usage-ingest lag`
reads them, without joining the group): a record counts once the worker committed it,
that is after its row was stored and its outcome acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from bench import procfs
from bench.environment import BenchEnvironment, Topics
from usage_ingest.dev.embedded import free_port
from usage_ingest.settings import ENV_PREFIX

POLL_S: Final = 0.1
_STOP_GRACE_S: Final = 30.0


def worker_executable(module: str | None = None) -> list[str]:
    """`usage-ingest` next to this interpreter (the venv's), else `python -m usage_ingest.cli`;
    with `module`, that module run as the command (a variant of the worker for a comparison)."""
    if module is not None:
        return [sys.executable, "-m", module]
    script = Path(sys.executable).parent / "usage-ingest"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "usage_ingest.cli"]


class WorkerProcess:
    """One `usage-ingest run` process."""

    def __init__(
        self, env: Mapping[str, str], log_path: Path, metrics_port: int, module: str | None = None
    ) -> None:
        self._env = env
        self._module = module
        self.log_path = log_path
        self.metrics_port = metrics_port
        self._proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    @classmethod
    def for_topics(
        cls,
        environment: BenchEnvironment,
        topics: Topics,
        database_url: str,
        log_name: str,
        extra_env: Mapping[str, str],
        *,
        module: str | None = None,
    ) -> WorkerProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
        port = free_port()
        env.update(
            {
                f"{ENV_PREFIX}KAFKA_BOOTSTRAP_SERVERS": environment.bootstrap,
                f"{ENV_PREFIX}DATABASE_URL": database_url,
                f"{ENV_PREFIX}GROUP_ID": topics.group,
                f"{ENV_PREFIX}TOPIC_EVENTS": topics.events,
                f"{ENV_PREFIX}TOPIC_ACCEPTED": topics.accepted,
                f"{ENV_PREFIX}TOPIC_REJECTED": topics.rejected,
                f"{ENV_PREFIX}TOPIC_DLQ": topics.dlq,
                f"{ENV_PREFIX}KAFKA_SESSION_TIMEOUT_MS": "3000",
                f"{ENV_PREFIX}METRICS_HOST": "127.0.0.1",
                f"{ENV_PREFIX}METRICS_PORT": str(port),
                f"{ENV_PREFIX}LOG_FORMAT": "json",
                f"{ENV_PREFIX}LOG_LEVEL": "info",
            }
        )
        env.update(extra_env)
        return cls(env, environment.workdir / f"{log_name}.log", port, module)

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(  # noqa: S603 - our own executable, no shell
                [*worker_executable(self._module), "run"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(self._env),
                start_new_session=True,  # a Ctrl-C on the terminal reaches the bench only
            )
        self.started_at = time.monotonic()

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def cpu_seconds(self) -> float:
        return procfs.cpu_seconds(self.pid)

    def peak_rss_bytes(self) -> int:
        return procfs.peak_rss_bytes(self.pid)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    async def scrape(self) -> dict[str, Any]:
        """The worker's own view from its /metrics: batches, their size and duration, the
        database round trips, retries. Empty when it does not answer."""
        try:
            text = await asyncio.wait_for(_http_get("127.0.0.1", self.metrics_port, "/metrics"), 5)
        except (OSError, TimeoutError):
            return {}
        return summarise_metrics(text)

    async def stop(self) -> int | None:
        """SIGTERM (the graceful stop of SPEC.md §6), SIGKILL after a grace; the exit code."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.to_thread(proc.wait), _STOP_GRACE_S)
            except TimeoutError:
                proc.kill()
                await asyncio.to_thread(proc.wait)
        return proc.returncode


async def _http_get(host: str, port: int, path: str) -> str:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        await writer.drain()
        response = await reader.read()
    finally:
        writer.close()
    return response.partition(b"\r\n\r\n")[2].decode(errors="replace")


def summarise_metrics(text: str) -> dict[str, Any]:
    """Means of the worker's histograms (sum / count) and its counters, by label."""
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    counters: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()) if k != "le")
            key = f"{family.name}{{{labels}}}" if labels else family.name
            if sample.name.endswith("_sum"):
                sums[key] = sample.value
            elif sample.name.endswith("_count"):
                counts[key] = sample.value
            elif family.type == "counter" and sample.name.endswith("_total"):
                counters[key] = sample.value
    means = {k: round(sums[k] / counts[k], 6) for k in sums if counts.get(k)}
    return {
        "histogramCounts": counts,
        "histogramMeans": means,
        "counters": counters,
    }


class WorkerDied(RuntimeError):
    """A worker process ended while it was being measured."""


class CommitWatcher:
    """Reads a group's committed offsets on one topic without joining the group."""

    def __init__(self, bootstrap: str, group_id: str, topic: str, partitions: int) -> None:
        self._partitions = [TopicPartition(topic, p) for p in range(partitions)]
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=group_id,
            client_id="bench-watcher",
            enable_auto_commit=False,
        )

    async def __aenter__(self) -> CommitWatcher:
        await self._consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.stop()

    async def committed(self) -> dict[int, int]:
        offsets = await asyncio.gather(*(self._consumer.committed(tp) for tp in self._partitions))
        return {tp.partition: o or 0 for tp, o in zip(self._partitions, offsets, strict=True)}


@dataclass(slots=True)
class Drained:
    """How a set of workers got through a backlog, as seen from outside."""

    records: int  # committed records counted (up to the target)
    started_to_first_commit_s: float  # process start to the first commit seen
    window_s: float  # first commit seen to the target reached
    window_records: int  # records committed within the window
    worker_cpu_s: float  # CPU seconds of the workers within the window
    worker_cpu_total_s: float  # CPU seconds of the workers from their start
    peak_rss_bytes: list[int]  # VmHWM of each worker when the target was reached
    cores: dict[str, float]  # average cores used within the window, by group
    rss_samples: list[tuple[float, int]] = field(default_factory=list)  # (s, summed RSS)

    @property
    def per_second(self) -> float:
        return self.window_records / self.window_s if self.window_s > 0 else 0.0

    @property
    def cpu_s_per_1k(self) -> float:
        return 1000 * self.worker_cpu_s / max(self.window_records, 1)

    def as_json(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "startedToFirstCommitSeconds": round(self.started_to_first_commit_s, 3),
            "windowSeconds": round(self.window_s, 3),
            "windowRecords": self.window_records,
            "eventsPerSecond": round(self.per_second, 1),
            "workerCpuSecondsInWindow": round(self.worker_cpu_s, 3),
            "workerCpuSecondsTotal": round(self.worker_cpu_total_s, 3),
            "cpuSecondsPer1kEvents": round(self.cpu_s_per_1k, 4),
            "peakRssBytes": self.peak_rss_bytes,
            "coresUsedInWindow": self.cores,
        }


async def drain(
    environment: BenchEnvironment,
    workers: Sequence[WorkerProcess],
    topics: Topics,
    ends: Mapping[int, int],
    *,
    target: int | None = None,
    timeout_s: float,
) -> Drained:
    """Wait until the workers' group has committed `target` records of the topic (all of
    it by default), sampling CPU and memory; the workers keep running afterwards.

    The window starts at the first commit seen (so process start-up and the group join
    are outside it, and reported on their own) and ends when the target is reached.
    """
    goal = target if target is not None else sum(ends.values())
    started = min(w.started_at for w in workers)
    meter = environment.cpu_meter({"workers": [w.pid for w in workers]})
    first: tuple[float, int, procfs.CpuSnapshot] | None = None
    rss_samples: list[tuple[float, int]] = []
    async with CommitWatcher(environment.bootstrap, topics.group, topics.events, len(ends)) as w:
        while True:
            for worker in workers:
                if not worker.alive():
                    raise WorkerDied(f"worker {worker.pid} ended:\n{worker.log_tail()}")
            committed = await w.committed()
            now = time.monotonic()
            done = sum(min(committed.get(p, 0), end) for p, end in ends.items())
            rss_samples.append(
                (round(now - started, 2), sum(procfs.rss_bytes(x.pid) for x in workers))
            )
            if first is None and done > 0:
                first = (now, done, meter.snapshot(now))
            if done >= goal:
                break
            if now - started > timeout_s:
                raise TimeoutError(
                    f"{done} of {goal} records committed after {timeout_s:g} s; "
                    f"last worker log lines:\n{workers[0].log_tail()}"
                )
            await asyncio.sleep(POLL_S)
    end = meter.snapshot(now)
    peaks = [x.peak_rss_bytes() for x in workers]
    assert first is not None
    first_at, first_done, first_cpu = first
    worker_cpu = end.groups["workers"] - first_cpu.groups["workers"]
    return Drained(
        records=min(done, goal),
        started_to_first_commit_s=first_at - started,
        window_s=now - first_at,
        window_records=min(done, goal) - first_done,
        worker_cpu_s=worker_cpu,
        worker_cpu_total_s=end.groups["workers"],
        peak_rss_bytes=peaks,
        cores=procfs.cores_used(first_cpu, end),
        rss_samples=rss_samples[:: max(len(rss_samples) // 200, 1)],
    )


async def stop_all(workers: Sequence[WorkerProcess]) -> list[int | None]:
    return list(await asyncio.gather(*(w.stop() for w in workers)))


class Profiler:
    """`py-spy record` attached to a worker, writing collapsed stacks (`--format raw`),
    when py-spy is installed; a no-op otherwise."""

    def __init__(self, pid: int, output: Path) -> None:
        self.output = output
        self._proc: subprocess.Popen[bytes] | None = None
        exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(exe).exists():
            return
        output.parent.mkdir(parents=True, exist_ok=True)
        self._proc = subprocess.Popen(  # noqa: S603 - fixed arguments
            [
                *(exe, "record", "--pid", str(pid), "--rate", "100", "--format", "raw"),
                *("--output", str(output), "--nonblocking"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    @property
    def active(self) -> bool:
        return self._proc is not None

    async def stop(self) -> None:
        """Stop sampling; py-spy writes its output on SIGINT."""
        if self._proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self._proc.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(asyncio.to_thread(self._proc.wait), 30)
        except TimeoutError:
            self._proc.kill()
