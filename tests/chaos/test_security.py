"""Scenario 6, security: TLS end to end, refusals of an untrusted broker and of bad
SASL credentials with one clear line, secrets never printed, no SQL built by string
formatting.

What the embedded broker (tansu 0.6.0) allows, and so what is tested how:
* TLS: its `--cert`/`--key` options cannot be combined (the command line rejects
  the pair), so it cannot serve TLS itself. The TLS here is real but terminated by
  the test's proxy (Python's ssl, a throw-away CA made with the openssl CLI) in
  front of a broker that advertises the proxy's address: the worker's TLS, CA
  verification and hostname check are exercised end to end, the broker's own TLS is not.
* SASL: `--authentication` makes it require SCRAM, but users live in its storage,
  which is in memory here, and `tansu user create` itself needs an authenticated
  connection: no user can exist. So refused credentials are tested for real
  (SCRAM-SHA-256 and -512, over plaintext and over TLS); accepted ones are not.
  tansu 0.6.0 does not offer PLAIN at all (it drops the connection).
"""

from __future__ import annotations

import ast
import asyncio
import io
import json
import logging
import time
import tomllib
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError
from pydantic import SecretStr, ValidationError

from tests.chaos.certificates import Certificates, make_certificates
from tests.chaos.checker import check
from tests.chaos.figures import record
from tests.chaos.harness import EXE, PROJECT, Chaos, WorkerProcess, unique, worker_env
from tests.support.broker import wait_committed
from tests.support.events import log_end, produce, sequence
from tests.support.waiting import eventually
from usage_ingest.dev.broker import EmbeddedBroker
from usage_ingest.dev.embedded import free_port
from usage_ingest.logs import configure_logging
from usage_ingest.settings import LogFormat, SaslMechanism, SecurityProtocol, Settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

DB_SECRET = "Db-S3cret-7f3a"
KAFKA_SECRET = "Kafka-S3cret-91c2"
REFUSED_WITHIN_S = 30


@asynccontextmanager
async def broker_behind(
    chaos: Chaos, *, certificates: Certificates | None = None, authentication: bool = False
) -> AsyncIterator[str]:
    """A broker of the test's own behind a proxy (terminating TLS when given
    certificates); yields the proxy's bootstrap address, the one the broker advertises."""
    port = free_port()
    broker = EmbeddedBroker(advertised_port=port, authentication=authentication)
    await asyncio.to_thread(broker.start)
    try:
        server_ssl = certificates.server_context() if certificates else None
        await chaos.proxy(broker.port, port=port, server_ssl=server_ssl)
        yield f"127.0.0.1:{port}"
    finally:
        await asyncio.to_thread(broker.stop)


def with_password(url: str) -> str:
    """The database URL with a password (the embedded Postgres trusts local users, so
    it is accepted and ignored: it is there to be looked for in the output)."""
    scheme, _, rest = url.partition("://")
    user, _, host = rest.partition("@")
    return f"{scheme}://{user}:{DB_SECRET}@{host}"


def assert_one_clear_line(worker: WorkerProcess, *expected: str) -> str:
    """Exit 2 with a single `usage-ingest:` line naming the problem, no traceback, no
    secret; every other line is a JSON log line."""
    output = worker.output()
    assert worker.exit_codes[-1] == 2, output[-3000:]
    lines = [line for line in output.splitlines() if line.strip()]
    [line] = [line for line in lines if line.startswith("usage-ingest:")]
    for text in expected:
        assert text in line, line
    assert "Traceback" not in output
    assert_no_secret(output)
    return line


def assert_no_secret(output: str) -> None:
    for secret in (DB_SECRET, KAFKA_SECRET):
        assert secret not in output
        # Not even a good part of it (a parse error may quote a fragment).
        assert secret[:8] not in output


# --- TLS ------------------------------------------------------------------------------------


async def test_worker_over_tls_end_to_end(chaos: Chaos, tmp_path: Path) -> None:
    started = time.monotonic()
    certificates = make_certificates(tmp_path / "tls")
    async with broker_behind(chaos, certificates=certificates) as bootstrap:
        url = await chaos.database()
        settings = await chaos.settings(
            url,
            bootstrap=bootstrap,
            kafka_security_protocol="SSL",
            kafka_ssl_cafile=str(certificates.ca),
        )
        # The proxy speaks nothing but TLS: a plaintext client gets nowhere.
        plaintext = AIOKafkaProducer(bootstrap_servers=bootstrap, request_timeout_ms=3000)
        with pytest.raises(KafkaConnectionError):
            await plaintext.start()
        await plaintext.stop()
        worker = chaos.worker(settings)
        worker.start()
        sent = await produce(settings, sequence(unique("tls"), 0, 500))
        healed = time.monotonic()
        caught_up = await wait_committed(settings, log_end(sent), within_s=60)
        assert await worker.terminate() == 0
        verdict = await check(settings, url, sent)
    record(
        "6a TLS end to end",
        verdict,
        recovery_s=caught_up - healed,
        faults="worker, producer and checker over TLS (test CA), plaintext refused",
        started=started,
    )
    assert verdict.clean, verdict
    assert verdict.stored == 500


async def test_untrusted_broker_certificate_stops_the_worker_with_one_line(
    chaos: Chaos, tmp_path: Path
) -> None:
    certificates = make_certificates(tmp_path / "tls")
    async with broker_behind(chaos, certificates=certificates) as bootstrap:
        url = await chaos.database()
        for cafile in (certificates.other_ca, None):  # another CA; the system trust store
            settings = Settings(
                kafka_bootstrap_servers=bootstrap,
                database_url=SecretStr(with_password(url)),
                kafka_security_protocol=SecurityProtocol.SSL,
                kafka_ssl_cafile=str(cafile) if cafile else None,
            )
            worker = chaos.worker(settings, f"untrusting-{cafile is None}")
            worker.start()
            await worker.wait_exit(REFUSED_WITHIN_S)
            assert_one_clear_line(
                worker,
                f"the broker at {bootstrap} presented a TLS certificate that is not trusted",
                "USAGE_INGEST_KAFKA_SSL_CAFILE",
            )


# --- SASL -------------------------------------------------------------------------------------


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-512", "SCRAM-SHA-256"])
async def test_refused_sasl_credentials_stop_the_worker_with_one_line(
    chaos: Chaos, tmp_path: Path, mechanism: str
) -> None:
    certificates = make_certificates(tmp_path / "tls")
    url = with_password(await chaos.database())
    async with broker_behind(chaos, authentication=True) as plain:
        settings = Settings(
            kafka_bootstrap_servers=plain,
            database_url=SecretStr(url),
            kafka_security_protocol=SecurityProtocol.SASL_PLAINTEXT,
            kafka_sasl_mechanism=SaslMechanism(mechanism),
            kafka_sasl_username="usage-ingest",
            kafka_sasl_password=SecretStr(KAFKA_SECRET),
        )
        worker = chaos.worker(settings, "sasl-plaintext")
        worker.start()
        await worker.wait_exit(REFUSED_WITHIN_S)
        assert_one_clear_line(
            worker,
            f"the broker at {plain} refused SASL {mechanism} authentication as 'usage-ingest'",
            "USAGE_INGEST_KAFKA_SASL_PASSWORD",
        )
    async with broker_behind(chaos, certificates=certificates, authentication=True) as tls:
        over_tls = settings.model_copy(
            update={
                "kafka_bootstrap_servers": tls,
                "kafka_security_protocol": SecurityProtocol.SASL_SSL,
                "kafka_ssl_cafile": str(certificates.ca),
            }
        )
        worker = chaos.worker(over_tls, "sasl-ssl")
        worker.start()
        await worker.wait_exit(REFUSED_WITHIN_S)
        assert_one_clear_line(worker, f"the broker at {tls} refused SASL {mechanism}")


# --- secrets ----------------------------------------------------------------------------------


async def test_secrets_never_appear_in_output(chaos: Chaos) -> None:
    """The CLI with a database password and a SASL password, against servers that are
    away, refuse, or are misconfigured: neither password shows on stdout or stderr."""
    unreachable_db = f"postgresql://ingest:{DB_SECRET}@127.0.0.1:1/usage"
    outputs: list[str] = []

    # 1. The worker while Postgres is unreachable: it logs every retry with the error.
    settings = await chaos.settings(unreachable_db)
    worker = chaos.worker(settings, "db-away")
    worker.start()
    await produce(settings, sequence(unique("secret"), 0, 20))
    await eventually(lambda: worker.count("dependency_unavailable") >= 3, 30, "db retries")
    assert await worker.terminate() == 0
    outputs.append(worker.output())

    # 2. Both unreachable, SASL configured: start-up retries.
    both_away = Settings(
        kafka_bootstrap_servers="127.0.0.1:1",
        database_url=SecretStr(unreachable_db),
        kafka_security_protocol=SecurityProtocol.SASL_PLAINTEXT,
        kafka_sasl_mechanism=SaslMechanism.SCRAM_SHA_256,
        kafka_sasl_username="usage-ingest",
        kafka_sasl_password=SecretStr(KAFKA_SECRET),
    )
    worker = chaos.worker(both_away, "all-away")
    worker.start()
    await eventually(lambda: worker.count("dependency_unavailable") >= 2, 30, "start retries")
    assert await worker.terminate() == 0
    outputs.append(worker.output())

    # 3. Bad settings, one line each (exit 2), and commands failing on an unreachable
    #    database (exit 1); given as environment variables and as flags.
    bad: list[dict[str, str]] = [
        {"USAGE_INGEST_DATABASE_URL": f"mysql://ingest:{DB_SECRET}@db/usage"},
        {"USAGE_INGEST_DATABASE_URL": f"postgresql://ingest:{DB_SECRET}/x@127.0.0.1:5432/u"},
        {"USAGE_INGEST_DATABASE_URL": f"postgresql://ingest:{DB_SECRET}#x@127.0.0.1:5432/u"},
        {"USAGE_INGEST_DATABASE_URL": f"postgresql://ingest:{DB_SECRET}?x@127.0.0.1:5432/u"},
        {
            "USAGE_INGEST_DATABASE_URL": unreachable_db,
            "USAGE_INGEST_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "USAGE_INGEST_KAFKA_SASL_PASSWORD": KAFKA_SECRET,
        },
        {
            "USAGE_INGEST_DATABASE_URL": unreachable_db,
            "USAGE_INGEST_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
            "USAGE_INGEST_KAFKA_SASL_PASSWORD": KAFKA_SECRET,
        },
    ]
    for env in bad:
        for name in ("run", "migrate"):
            outputs.append(await cli([name], env, expect=2))
    for args in (["migrate"], ["reference", "load", str(PROJECT / "README.md")]):
        outputs.append(await cli(args, {"USAGE_INGEST_DATABASE_URL": unreachable_db}, 1))
    outputs.append(
        await cli(["migrate", "--database-url", f"postgresql://u:{DB_SECRET}/x@h/d"], {}, 2)
    )
    outputs.append(await cli(["migrate", "--database-url", unreachable_db], {}, 1))
    for output in outputs:
        assert_no_secret(output)


async def cli(args: list[str], env: dict[str, str], expect: int) -> str:
    """Run the console script; returns stdout and stderr."""
    environment = worker_env(Settings(), USAGE_INGEST_METRICS_PORT="0", **env)
    proc = await asyncio.create_subprocess_exec(
        EXE,
        *args,
        env=environment,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    output = stdout.decode() + stderr.decode()
    assert proc.returncode == expect, (args, env, output[-2000:])
    assert "Traceback" not in output, output[-2000:]
    return output


# --- SQL is never built by string formatting ---------------------------------------------------

SQL_CALLS = {
    "execute",
    "executemany",
    "fetch",
    "fetchrow",
    "fetchval",
    "fetchmany",
    "prepare",
    "cursor",
    "copy_from_query",
    "copy_to_table",
    "copy_records_to_table",
}


def _formatted(node: ast.expr) -> str | None:
    """How `node` builds a string by formatting, if it does."""
    if isinstance(node, ast.JoinedStr):
        return "an f-string"
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod | ast.Add):
        return "% or + on strings"
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in {"format", "format_map", "join", "replace"}
    ):
        return f".{node.func.attr}()"
    return None


def formatted_sql_calls(source: str) -> Iterator[tuple[int, str, str]]:
    """(line, call, how) for each database call whose SQL argument is formatted in place."""
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        if node.func.attr not in SQL_CALLS:
            continue
        candidates: list[Any] = node.args[:1] + [k.value for k in node.keywords if k.arg == "query"]
        for argument in candidates:
            how = _formatted(argument)
            if how is not None:
                yield node.lineno, node.func.attr, how


def test_no_sql_is_built_by_string_formatting() -> None:
    sources = sorted((PROJECT / "src").rglob("*.py"))
    assert sources
    found = [
        f"{path.relative_to(PROJECT)}:{line}: {call}() given {how}"
        for path in sources
        for line, call, how in formatted_sql_calls(path.read_text())
    ]
    assert found == []
    # The checker itself sees what it must see.
    bad = 'conn.execute(f"SELECT {x}")\nc.fetch("SELECT %s" % x)\nc.fetchval(q.format(x))\n'
    assert [how for _, _, how in formatted_sql_calls(bad)] == [
        "an f-string",
        "% or + on strings",
        ".format()",
    ]


def test_ruff_keeps_flagging_sql_built_from_strings() -> None:
    """ruff's S608 (SQL built by string formatting) stays enabled for src/."""
    lint = tomllib.loads((PROJECT / "pyproject.toml").read_text())["tool"]["ruff"]["lint"]
    assert "S" in lint["select"] or "S608" in lint["select"]
    assert not {"S", "S6", "S60", "S608"} & set(lint.get("ignore", []))
    for pattern, ignored in lint.get("per-file-ignores", {}).items():
        if pattern.startswith("src"):
            assert not {"S", "S6", "S60", "S608"} & set(ignored), pattern


# --- what the two fixes above guard, without servers ---------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://ingest:{DB_SECRET}/x@db:5432/usage",
        f"postgresql://ingest:{DB_SECRET}#x@db:5432/usage",
        f"postgresql://ingest:{DB_SECRET}?x@db:5432/usage",
        "postgresql://ingest:1234/x@db:5432/usage",
        "postgresql://ingest@[::1/usage",
    ],
)
def test_a_database_url_that_does_not_parse_is_refused_without_quoting_it(url: str) -> None:
    """The driver's parse error would quote a fragment of the password: refused when the
    settings load, with a message that quotes nothing."""
    with pytest.raises(ValidationError) as refused:
        Settings(database_url=SecretStr(url))
    [error] = refused.value.errors(include_url=False, include_input=False)
    assert DB_SECRET[:4] not in error["msg"]
    assert "percent-encoded" in error["msg"]


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://ingest:Pa%2F55%23w@db:5432/usage?sslmode=require",
        "postgresql://db-1:5432,db-2:5433/usage",
        "postgres://ingest@[::1]:5432/usage",
        "postgresql:///usage?host=/var/run/postgresql",
    ],
)
def test_valid_database_urls_still_load(url: str) -> None:
    assert Settings(database_url=SecretStr(url)).require_database_url() == url


def test_library_log_lines_are_valid_json() -> None:
    """aiokafka's messages quote addresses ("Unable connect to "host:port""): each
    line must stay one JSON object, or a log pipeline drops or splits it."""
    root = logging.getLogger()
    handlers, level, structlog_config = root.handlers[:], root.level, structlog.get_config()
    out = io.StringIO()
    try:
        configure_logging("info", LogFormat.JSON, out)
        logging.getLogger("aiokafka").error('Unable connect to "%s": %s', "127.0.0.1:1", 'x "y"\nz')
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        structlog.configure(**structlog_config)
    [line] = out.getvalue().splitlines()
    logged = json.loads(line)
    assert logged.pop("timestamp").endswith("Z")
    assert logged == {
        "event": "library_log",
        "logger": "aiokafka",
        "level": "error",
        "message": 'Unable connect to "127.0.0.1:1": x "y"\nz',
    }
