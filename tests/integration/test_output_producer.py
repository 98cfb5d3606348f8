"""OutputProducer against the real broker: records go out as record batches built by
the adapter, and must land exactly where Kafka's default partitioner puts their key
(consumers of the outcome topics, and the worker for records the API or a replay
publishes, rely on one key staying on one partition)."""

from __future__ import annotations

from tests.support.broker import produce_values, read_topic
from usage_ingest.domain.records import OutputRecord
from usage_ingest.kafka.admin import ensure_topics
from usage_ingest.kafka.producer import OutputProducer
from usage_ingest.settings import Settings

PARTITIONS = 6


async def test_keys_land_on_the_partitions_of_the_default_partitioner(
    kafka_bootstrap: str, settings: Settings
) -> None:
    ours, theirs = f"{settings.topic_accepted}-ours", f"{settings.topic_accepted}-theirs"
    await ensure_topics(settings, [ours, theirs], partitions=PARTITIONS)
    keys = [f"ref-{i}".encode() for i in range(600)]
    producer = OutputProducer(settings)
    await producer.start()
    try:
        headers = (("h", b"1"),)
        assert (
            await producer.publish([OutputRecord(ours, k, b"v" + k, headers) for k in keys]) == []
        )
    finally:
        await producer.stop()
    await produce_values(kafka_bootstrap, theirs, [b"v" + k for k in keys], keys=list(keys))
    by_us = await read_topic(kafka_bootstrap, ours, len(keys))
    by_aiokafka = await read_topic(kafka_bootstrap, theirs, len(keys))
    assert len(by_us) == len(keys)
    assert {m.key: m.partition for m in by_us} == {m.key: m.partition for m in by_aiokafka}
    assert len({m.partition for m in by_us}) == PARTITIONS
    assert all(m.value == b"v" + (m.key or b"") and m.headers == {"h": b"1"} for m in by_us)
    # Per partition, in the order given.
    for partition in range(PARTITIONS):
        mine = [m.key for m in sorted(by_us, key=lambda m: m.offset) if m.partition == partition]
        assert mine == [k for k in keys if k in set(mine)]


async def test_records_larger_than_one_batch_all_arrive(
    kafka_bootstrap: str, settings: Settings
) -> None:
    """Twelve 60 KB dead letters on one partition need several record batches."""
    topic = f"{settings.topic_dlq}-big"
    await ensure_topics(settings, [topic], partitions=1)
    values = [bytes([65 + i]) * 60_000 for i in range(12)]
    producer = OutputProducer(settings)
    await producer.start()
    try:
        assert await producer.publish([OutputRecord(topic, None, v) for v in values]) == []
    finally:
        await producer.stop()
    arrived = await read_topic(kafka_bootstrap, topic, len(values))
    assert [m.value for m in sorted(arrived, key=lambda m: m.offset)] == values
