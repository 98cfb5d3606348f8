"""The fault harness does what the scenarios rely on: the proxy forwards, cuts,
black-holes and heals; a broker advertises the proxy in front of it; the checker
sees a lost event, a doubled one and a missing outcome."""

from __future__ import annotations

import asyncio
import json

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from tests.chaos.checker import check
from tests.chaos.harness import Chaos, unique
from tests.chaos.proxy import TcpProxy
from tests.support.events import produce, sequence
from usage_ingest.dev.broker import EmbeddedBroker
from usage_ingest.dev.embedded import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


async def echo_server() -> asyncio.Server:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1024):
            writer.write(data)
            await writer.drain()
        writer.close()

    return await asyncio.start_server(echo, "127.0.0.1", 0)


async def roundtrip(port: int, payload: bytes, timeout: float = 2.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        await writer.drain()
        return await asyncio.wait_for(reader.readexactly(len(payload)), timeout)
    finally:
        writer.close()


async def test_proxy_forwards_cuts_black_holes_and_heals() -> None:
    server = await echo_server()
    proxy = await TcpProxy(server.sockets[0].getsockname()[1]).start()
    try:
        assert await roundtrip(proxy.port, b"hello") == b"hello"

        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"x")
        assert await reader.readexactly(1) == b"x"
        proxy.cut()
        assert await asyncio.wait_for(reader.read(), 2) == b"", "a cut resets open connections"
        writer.close()
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            await roundtrip(proxy.port, b"refused")
        proxy.heal()
        assert await roundtrip(proxy.port, b"again") == b"again"

        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        proxy.stall()
        writer.write(b"held")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.readexactly(4), 0.5)
        proxy.heal()
        assert await asyncio.wait_for(reader.readexactly(4), 2) == b"held", "delivered late"
        writer.close()

        # Stalling only the connections open now lets newcomers through.
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"1")
        assert await reader.readexactly(1) == b"1"
        proxy.stall(new_too=False)
        assert await roundtrip(proxy.port, b"newcomer") == b"newcomer"
        writer.write(b"2")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.readexactly(1), 0.5)
        proxy.heal()
        assert await asyncio.wait_for(reader.readexactly(1), 2) == b"2"
        writer.close()
    finally:
        await proxy.close()
        server.close()
        await server.wait_closed()


async def test_broker_advertises_the_proxy_in_front_of_it() -> None:
    port = free_port()
    broker = EmbeddedBroker(advertised_port=port)
    await asyncio.to_thread(broker.start)
    proxy = await TcpProxy(broker.port, port=port).start()
    try:
        producer = AIOKafkaProducer(bootstrap_servers=f"127.0.0.1:{port}")
        await producer.start()
        try:
            brokers = producer.client.cluster.brokers()
            assert {(b.host, b.port) for b in brokers} == {("127.0.0.1", port)}
            await producer.send_and_wait(unique("t"), b"through the proxy")
        finally:
            await producer.stop()
        assert proxy.connections > 0
    finally:
        await proxy.close()
        await asyncio.to_thread(broker.stop)


async def test_checker_counts_lost_doubled_and_missing(chaos: Chaos) -> None:
    """Fake a worker by hand: one event never stored, one reported `created` from two
    records, one without any outcome. The checker must count each."""
    url = await chaos.database()
    settings = await chaos.settings(url)
    records = sequence(unique("chk"), 0, 4)
    again = records[1].__class__(records[1].value, 2, records[1].key, records[1].reference)
    sent = await produce(settings, [*records, again])
    conn = await asyncpg.connect(url)
    try:
        for item in sent[1:3]:
            await conn.execute(
                "INSERT INTO usages (external_reference, contract_id, debtor_id, inventory_id,"
                " product_item_id, product_ident, start_date, end_date, billable,"
                " payload_hash, raw_payload, source_topic, source_partition, source_offset)"
                " VALUES ($1, 1, 1, 1, 1, 'demo.usage', now(), now(), true, 'h', '{}', $2,"
                " $3, $4)",
                item.reference,
                settings.topic_events,
                item.partition,
                item.offset,
            )
        ids: dict[str, int] = {
            r["external_reference"]: r["id"]
            for r in await conn.fetch("SELECT external_reference, id FROM usages")
        }
    finally:
        await conn.close()

    def outcome(index: int, status: str) -> bytes:
        item = sent[index]
        return json.dumps(
            {
                "status": status,
                "externalReference": item.reference,
                "usageId": ids.get(item.reference or ""),
                "source": {
                    "topic": settings.topic_events,
                    "partition": item.partition,
                    "offset": item.offset,
                },
            }
        ).encode()

    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await producer.start()
    try:
        # sent[0]: rejected for no good reason (lost); sent[1] created, and its copy
        # sent[4] created too (doubled); sent[2] created; sent[3]: no outcome (missing).
        for index, status in ((0, "rejected"), (1, "created"), (4, "created"), (2, "created")):
            await producer.send_and_wait(settings.topic_accepted, outcome(index, status))
    finally:
        await producer.stop()
    verdict = await check(settings, url, sent)
    assert (verdict.lost, verdict.outcomes_missing) == (2, 1)  # sent[0] and sent[3]
    assert verdict.doubled == 1
    assert any("valid record rejected" in p for p in verdict.problems)
    assert any("`created` but the row came from elsewhere" in p for p in verdict.problems)
