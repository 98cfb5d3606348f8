"""`python -m bench` (`make bench`): the performance benchmark of usage-ingest.

In one run, on an embedded broker and PostgreSQL started for it, with a fixed seed: the
real worker draining a preloaded backlog, the physical limits measured on the same machine
in the same run (raw storage of the same rows, raw aiokafka consume of the same topic), a
naive one-record-at-a-time worker, latency at a fixed offered load, memory under a small
and a large backlog, two workers against one, and the API's read side over 1M stored
usages. Prints a table and writes it as JSON.

Linux only: CPU and memory are read from /proc.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from bench.report import print_table, write_json
from bench.run import MEASUREMENTS, BenchOptions, run
from usage_ingest.logs import configure_logging
from usage_ingest.settings import LogFormat

# Full run defaults, and the --quick ones (a smoke check of about two minutes).
DEFAULTS = {
    "events": (200_000, 20_000),
    "latency_seconds": (30.0, 10.0),
    # Quick mode's small backlog stays above what one fetch of the embedded broker returns
    # (about 5 MB per partition, whatever max_partition_fetch_bytes says): below that, the
    # comparison would show the broker's fetch size, not the worker's buffering.
    "backlog_small": (100_000, 70_000),
    "backlog_large": (1_000_000, 350_000),
    "memory_records": (0, 20_000),  # 0: as many as the small backlog
    "naive_records": (5000, 1000),
    "naive_seconds": (30.0, 10.0),
}


def _positive_int(text: str) -> int:
    value = int(text.replace("_", ""))
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def _measurements(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in MEASUREMENTS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown measurement {', '.join(unknown) or '(none)'}; choose from "
            + ", ".join(MEASUREMENTS)
        )
    return names


def _env_pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError("expected NAME=VALUE")
    name = name.upper()
    return (name if name.startswith("USAGE_INGEST_") else f"USAGE_INGEST_{name}"), value


def parse_args(argv: list[str]) -> BenchOptions:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--events", type=_positive_int, help="workload events (default 200000; --quick 20000)"
    )
    parser.add_argument("--partitions", type=_positive_int, default=6, help="input partitions")
    parser.add_argument("--seed", type=int, default=20261122, help="workload seed")
    parser.add_argument(
        "--latency-rate",
        type=_positive_float,
        default=2000.0,
        help="offered load of the latency measurement, events/s",
    )
    parser.add_argument(
        "--latency-seconds",
        type=_positive_float,
        help="how long the load is offered (default 30; --quick 10)",
    )
    parser.add_argument(
        "--backlog-small",
        type=_positive_int,
        help="small backlog of the memory measurement (default 100000; --quick 70000)",
    )
    parser.add_argument(
        "--memory-records",
        type=_positive_int,
        help="records both memory runs process before peak RSS is read (default: the small "
        "backlog; --quick 20000)",
    )
    parser.add_argument(
        "--backlog-large",
        type=_positive_int,
        help="large backlog (default 1000000; --quick 350000)",
    )
    parser.add_argument(
        "--naive-records",
        type=_positive_int,
        help="the naive worker stops after this many records (default 5000; --quick 1000)",
    )
    parser.add_argument(
        "--naive-seconds",
        type=_positive_float,
        help="... or after this many seconds (default 30; --quick 10)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="scale everything down: a smoke check of about two minutes",
    )
    parser.add_argument(
        "--only",
        type=_measurements,
        default=MEASUREMENTS,
        help="comma-separated measurements to run: " + ", ".join(MEASUREMENTS),
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("bench-results.json"),
        help="where the JSON document is written",
    )
    parser.add_argument(
        "--worker-env",
        type=_env_pair,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra setting for the worker processes, e.g. batch_max_records=2000 (repeatable)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="FILE",
        help="record the pipeline worker with py-spy (if installed) into FILE "
        "(collapsed stacks) and print a summary",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep server data and worker logs here (default: a temporary "
        "folder, removed at the end)",
    )
    parser.add_argument(
        "--drain-timeout",
        type=_positive_float,
        default=1200.0,
        help="give up when a backlog is not drained within this many seconds",
    )
    args = parser.parse_args(argv)
    pick = 1 if args.quick else 0
    values: dict[str, Any] = {
        name: getattr(args, name) if getattr(args, name) is not None else defaults[pick]
        for name, defaults in DEFAULTS.items()
    }
    if not values["memory_records"]:
        values["memory_records"] = values["backlog_small"]
    values["memory_records"] = min(values["memory_records"], values["backlog_small"])
    return BenchOptions(
        partitions=args.partitions,
        seed=args.seed,
        latency_rate=args.latency_rate,
        quick=args.quick,
        only=args.only,
        out=args.out,
        worker_env=dict(args.worker_env),
        profile=args.profile,
        workdir=args.workdir,
        drain_timeout_s=args.drain_timeout,
        **values,
    )


def main(argv: list[str] | None = None) -> int:
    if not sys.platform.startswith("linux"):
        sys.stderr.write("the benchmark reads CPU and memory from /proc: Linux only\n")
        return 2
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    # The naive worker runs in this process: it logs like the worker does (info level,
    # so no line per record), to standard error.
    configure_logging("info", LogFormat.CONSOLE, sys.stderr)
    document, rows = run(opts)
    mode = "quick" if opts.quick else "full"
    title = (
        f"usage-ingest benchmark ({mode}: {opts.events:,} events, {opts.partitions} partitions, "
        f"seed {opts.seed}; {document['durationSeconds']:.0f} s)"
    )
    print_table(rows, title)
    write_json(opts.out, document)
    failed = [c for c in document["checks"] if not c["ok"]]
    for check in document["checks"]:
        mark = "ok  " if check["ok"] else "FAIL"
        sys.stdout.write(f"  check {mark} {check['name']}: {check['detail']}\n")
    sys.stdout.write(f"written to {opts.out}\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
