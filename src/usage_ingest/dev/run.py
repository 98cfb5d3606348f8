"""`usage-ingest dev`: the whole system on one machine, with nothing installed but pip
packages; and `usage-ingest produce`, to send events by hand."""

from __future__ import annotations

import asyncio
import json
import shlex
import sys
import tempfile
from importlib import resources
from pathlib import Path
from typing import TextIO

import click
from pydantic import SecretStr

from usage_ingest.api.keys import Permission
from usage_ingest.api.security import issue_key
from usage_ingest.api.server import listen_api, serve
from usage_ingest.dev.broker import EmbeddedBroker
from usage_ingest.dev.postgres import EmbeddedPostgres
from usage_ingest.domain.records import OutputRecord
from usage_ingest.domain.reference import ReferenceFile
from usage_ingest.errors import BrokerUnavailable, EmbeddedUnavailable
from usage_ingest.kafka.admin import ensure_topics
from usage_ingest.kafka.follow import follow
from usage_ingest.kafka.producer import OutputProducer
from usage_ingest.process import fail, with_stop_signals
from usage_ingest.settings import Settings
from usage_ingest.store.store import store_session
from usage_ingest.worker.runtime import run_worker

INPUT_PARTITIONS = 3
EMBEDDED_SESSION_TIMEOUT_MS = 3000
SAMPLE_EVENT = {
    "externalReference": "demo-0001",
    "debtorId": 1,
    "productIdent": "demo.usage",
    "startDate": "2026-11-22T10:00:00Z",
    "endDate": "2026-11-22T10:05:00Z",
    "unitQuantities": [{"unit": "minute", "quantity": "5"}],
}


def demo_reference() -> ReferenceFile:
    text = resources.files("usage_ingest.dev").joinpath("demo_reference.json").read_text()
    return ReferenceFile.model_validate_json(text)


def run_dev(settings: Settings, kafka_port: int | None, postgres_port: int | None) -> None:
    with tempfile.TemporaryDirectory(prefix="usage-ingest-dev-") as workdir:
        broker = EmbeddedBroker(port=kafka_port, log_path=Path(workdir) / "broker.log")
        postgres = EmbeddedPostgres(Path(workdir) / "pgdata", port=postgres_port)
        try:
            with broker, postgres:
                dev_settings = settings.model_copy(
                    update={
                        "kafka_bootstrap_servers": broker.bootstrap_servers,
                        "database_url": SecretStr(postgres.url),
                        # The embedded broker holds a group join for about half the
                        # session timeout; a short one keeps start-up quick.
                        "kafka_session_timeout_ms": EMBEDDED_SESSION_TIMEOUT_MS,
                    }
                )
                with_stop_signals(lambda stop: _dev_main(dev_settings, postgres.url, stop))
        except EmbeddedUnavailable as exc:
            fail(str(exc))


async def _dev_main(settings: Settings, database_url: str, stop: asyncio.Event) -> None:
    # Bound first: a taken port is one clear line before anything else starts.
    api_sockets = listen_api(settings)
    async with store_session(settings) as store:
        await store.migrate()
        await store.load_reference(demo_reference())
        # Every permission, for the console and the HTTP API on this throwaway database.
        key = await issue_key(store, "usage-ingest dev", [p.value for p in Permission])
    await ensure_topics(settings, [settings.topic_events], partitions=INPUT_PARTITIONS)
    await ensure_topics(settings, settings.output_topics)
    host, port = api_sockets[0].getsockname()[:2]
    _print_banner(settings, database_url, f"http://{host}:{port}", key.key)
    tail = asyncio.create_task(
        follow(settings, [settings.topic_accepted, settings.topic_rejected], _print_outcome, stop)
    )
    services = [
        asyncio.create_task(run_worker(settings, stop)),
        asyncio.create_task(serve(settings, stop, api_sockets)),
    ]
    try:
        for finished in asyncio.as_completed(services):
            await finished  # one that fails raises here
            stop.set()  # one that ended by itself: end the rest too
    finally:
        stop.set()  # end the other service and the outcome printer
        await asyncio.gather(*services, tail, return_exceptions=True)


def _print_banner(settings: Settings, database_url: str, api_url: str, key: str) -> None:
    command = _own_command()
    sample = json.dumps(SAMPLE_EVENT)
    click.echo(
        "\nusage-ingest dev is running\n"
        f"  Kafka bootstrap : {settings.kafka_bootstrap_servers}\n"
        f"  Database URL    : {database_url}\n"
        f"  Input topic     : {settings.topic_events} ({INPUT_PARTITIONS} partitions)\n"
        f"  Outcomes        : {settings.topic_accepted}, {settings.topic_rejected}"
        f"; dead letters: {settings.topic_dlq}\n"
        "  Demo data       : debtor 1, contract 1, product item 'demo.usage'\n"
        f"  HTTP API        : {api_url}\n"
        f"  Console         : {api_url}/console\n"
        f"  API key         : {key} (every permission; sign in to the console with it)\n\n"
        "Send a sample event from another terminal:\n"
        f"  echo {shlex.quote(sample)} | {command} produce "
        f"--kafka-bootstrap-servers {settings.kafka_bootstrap_servers}\n\n"
        "Outcomes appear below. Ctrl-C stops the worker, the API, the broker and Postgres.\n",
        err=False,
    )


def _own_command() -> str:
    """How to call this same executable from the current directory."""
    path = Path(sys.argv[0]).resolve()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path) if path.exists() else "usage-ingest"


def _print_outcome(value: bytes) -> None:
    click.echo(f"outcome: {value.decode(errors='replace')}")


async def produce_lines(settings: Settings, stream: TextIO, key: str | None) -> int:
    """Publish each non-blank line of `stream` as one event, keyed by its externalReference."""
    records = []
    for line in stream:
        text = line.strip()
        if text:
            records.append(
                OutputRecord(settings.topic_events, _key_for(text, key), text.encode("utf-8"))
            )
    producer = OutputProducer(settings)
    await producer.start()
    try:
        failed = await producer.publish(records)
    finally:
        await producer.stop()
    if failed:
        raise BrokerUnavailable(f"{len(failed)} of {len(records)} events were not acknowledged")
    return len(records)


def _key_for(text: str, key: str | None) -> bytes | None:
    if key is not None:
        return key.encode()
    try:
        reference = json.loads(text).get("externalReference")
    except (ValueError, AttributeError):
        return None
    return reference.encode() if isinstance(reference, str) else None


__all__ = ["produce_lines", "run_dev"]
