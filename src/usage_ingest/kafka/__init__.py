"""The Kafka adapter: the only module that talks to aiokafka.

It hands the pipeline plain `InputRecord`s, takes `OutputRecord`s back, and
turns aiokafka's errors into the project's own (`BrokerUnavailable`, retryable;
`CommitRefused`, the group moved on).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import struct
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.conn import create_conn
from aiokafka.errors import (
    CommitFailedError,
    IllegalSaslStateError,
    KafkaError,
    SaslAuthenticationFailed,
    TopicAlreadyExistsError,
    UnsupportedSaslMechanismError,
)
from aiokafka.helpers import create_ssl_context
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.structs import OffsetAndMetadata

from usage_ingest.domain.records import InputRecord, OutputRecord, Partition
from usage_ingest.errors import BrokerUnavailable, ConfigurationError, UsageIngestError
from usage_ingest.settings import ENV_PREFIX, SecurityProtocol, Settings


class CommitRefused(UsageIngestError):
    """The group rebalanced before the commit: the new owner re-delivers the records."""


def connection_options(settings: Settings) -> dict[str, Any]:
    """Bootstrap servers and security (TLS, SASL) shared by every client."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "security_protocol": settings.kafka_security_protocol.value,
    }
    if settings.kafka_security_protocol in (SecurityProtocol.SSL, SecurityProtocol.SASL_SSL):
        options["ssl_context"] = create_ssl_context(
            cafile=settings.kafka_ssl_cafile,
            certfile=settings.kafka_ssl_certfile,
            keyfile=settings.kafka_ssl_keyfile,
        )
    if settings.kafka_sasl_mechanism is not None:
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism.value
        options["sasl_plain_username"] = settings.kafka_sasl_username
        password = settings.kafka_sasl_password
        options["sasl_plain_password"] = password.get_secret_value() if password else None
    return options


# How long the access check below waits for one broker before leaving it to the retries.
_ACCESS_CHECK_TIMEOUT_S = 10.0
_SASL_REFUSALS = (SaslAuthenticationFailed, UnsupportedSaslMechanismError, IllegalSaslStateError)


async def refuse_bad_security(settings: Settings) -> None:
    """Raise ConfigurationError when a broker refuses this client for good: its TLS
    certificate is not trusted, or it refuses the SASL credentials or mechanism.

    aiokafka reports either while bootstrapping only as "Unable to bootstrap" (it logs
    the cause and tries the next server), and SCRAM answered with an error even as a
    bare KeyError; the worker would retry that forever, or stop with a traceback. So
    one connection is opened the way aiokafka opens it, before the clients start. A
    broker that cannot be reached (or answers nothing in time) is left to the normal
    retries. Never names the password.
    """
    if settings.kafka_security_protocol is SecurityProtocol.PLAINTEXT:
        return
    options = connection_options(settings)
    security = {k: v for k, v in options.items() if k != "bootstrap_servers"}
    uses_sasl = settings.kafka_sasl_mechanism is not None
    for server in settings.kafka_bootstrap_servers.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            conn = await asyncio.wait_for(
                create_conn(host, int(port), client_id="usage-ingest", **security),
                _ACCESS_CHECK_TIMEOUT_S,
            )
        except ssl.SSLCertVerificationError as exc:
            raise ConfigurationError(
                f"the broker at {server.strip()} presented a TLS certificate that is not "
                f"trusted ({exc.verify_message}): set {ENV_PREFIX}KAFKA_SSL_CAFILE to the CA "
                "that signed it"
            ) from None
        except _SASL_REFUSALS as exc:
            raise _sasl_refused(settings, server, type(exc).__name__) from None
        except (KeyError, ValueError) as exc:
            # aiokafka's SCRAM client fails like this on an error answer ("e=...") or
            # a wrong server signature; without SASL these are not ours to explain.
            if not uses_sasl:
                raise
            raise _sasl_refused(settings, server, f"{type(exc).__name__} {exc}") from None
        except (OSError, TimeoutError, KafkaError):
            continue
        conn.close()
        return


def _sasl_refused(settings: Settings, server: str, detail: str) -> ConfigurationError:
    mechanism = settings.kafka_sasl_mechanism
    return ConfigurationError(
        f"the broker at {server.strip()} refused SASL {mechanism} authentication as "
        f"{settings.kafka_sasl_username!r} ({detail}): check {ENV_PREFIX}KAFKA_SASL_MECHANISM, "
        f"{ENV_PREFIX}KAFKA_SASL_USERNAME and {ENV_PREFIX}KAFKA_SASL_PASSWORD"
    )


RevokeCallback = Callable[[set[Partition]], Awaitable[None]]


async def broker_reachable(bootstrap_servers: str, timeout_s: float = 2.0) -> bool:
    """Whether one of the bootstrap servers accepts a TCP connection."""
    for server in bootstrap_servers.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(host.strip("[]"), int(port)), timeout_s
            )
        except (OSError, TimeoutError, ValueError):
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True
    return False


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, on_revoked: RevokeCallback) -> None:
        self._on_revoked = on_revoked

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._on_revoked({(tp.topic, tp.partition) for tp in revoked})

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        """Nothing to do: fetching starts from the committed offsets."""


# Once a batch has its first records, it takes more only for this long: a backlog
# fills it in a few milliseconds, and a steady trickle adds at most this latency.
_FETCH_FILL_MS = 20

# Record batches of outcomes and dead letters: 1000 outcomes fill about one per partition.
_BATCH_BYTES = 256 * 1024
_PARTITIONER = DefaultPartitioner()
_MURMUR2_M, _U32 = 0x5BD1E995, 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (the Java client's `Utils.murmur2`), as aiokafka's but reading the
    key a 4-byte word at a time: about half its cost, and it runs once per outcome."""
    length = len(data)
    h = 0x9747B28C ^ length
    whole = length & ~3
    for (word,) in struct.iter_unpack("<I", data[:whole]):
        k = (word * _MURMUR2_M) & _U32
        k ^= k >> 24
        h = ((h * _MURMUR2_M) & _U32) ^ ((k * _MURMUR2_M) & _U32)
    tail = length & 3
    if tail:
        if tail == 3:  # noqa: PLR2004 - the bytes left after the last whole word
            h ^= data[whole + 2] << 16
        if tail >= 2:  # noqa: PLR2004
            h ^= data[whole + 1] << 8
        h = ((h ^ data[whole]) * _MURMUR2_M) & _U32
    h ^= h >> 13
    h = (h * _MURMUR2_M) & _U32
    return h ^ (h >> 15)


def partition_for(key: bytes | None, partitions: list[int]) -> int:
    """The partition Kafka's default partitioner gives `key` (random without one)."""
    if len(partitions) == 1:  # whatever the hash, modulo 1 it is this one
        return partitions[0]
    if key is None:
        return int(_PARTITIONER(key, partitions, partitions))
    return partitions[(murmur2(key) & 0x7FFFFFFF) % len(partitions)]


def _append(batch: BatchBuilder, record: OutputRecord) -> Any:
    """Add the record to the batch; None when the batch is full."""
    return batch.append(
        timestamp=None, key=record.key, value=record.value, headers=list(record.headers)
    )


class EventConsumer:
    """The input topic, read in batches, with offsets committed explicitly."""

    def __init__(self, settings: Settings, on_revoked: RevokeCallback) -> None:
        self._topic = settings.topic_events
        self._listener = _Listener(on_revoked)
        # Subscribed: holding partitions, or waiting for an assignment.
        self.in_group = False
        self._consumer = AIOKafkaConsumer(
            **connection_options(settings),
            group_id=settings.group_id,
            client_id="usage-ingest",
            enable_auto_commit=False,
            # A group with no committed offset starts at the beginning (SPEC.md §6).
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_poll_records=settings.batch_max_records,
            fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
            session_timeout_ms=settings.kafka_session_timeout_ms,
            heartbeat_interval_ms=max(settings.kafka_session_timeout_ms // 10, 100),
            max_poll_interval_ms=settings.kafka_max_poll_interval_ms,
            rebalance_timeout_ms=settings.kafka_max_poll_interval_ms,
        )

    async def start(self) -> None:
        self._consumer.subscribe([self._topic], listener=self._listener)
        try:
            await self._consumer.start()
        except KafkaError as exc:
            await self._consumer.stop()
            raise BrokerUnavailable(f"cannot join the consumer group: {exc}") from exc
        self.in_group = True

    async def stop(self) -> None:
        self.in_group = False
        await self._consumer.stop()

    async def fetch(self, max_records: int, timeout_ms: int) -> list[InputRecord]:
        """Up to `max_records` records: waits up to `timeout_ms` for the first ones,
        then keeps taking what arrives within a short linger, so a backlog is read
        in full batches (fewer round trips per record) and a trickle is not delayed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_ms / 1000
        records: list[InputRecord] = []
        while len(records) < max_records:
            wait_ms = int((deadline - loop.time()) * 1000)
            if wait_ms < 0:
                break
            batch = await self._get(max_records - len(records), wait_ms)
            if not batch:
                break
            if not records:
                deadline = min(deadline, loop.time() + _FETCH_FILL_MS / 1000)
            records.extend(batch)
        return records

    async def _get(self, max_records: int, timeout_ms: int) -> list[InputRecord]:
        try:
            batches = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        except KafkaError as exc:
            raise BrokerUnavailable(f"fetch failed: {exc}") from exc
        return [
            InputRecord(
                m.topic,
                m.partition,
                m.offset,
                m.key,
                m.value,
                tuple(m.headers or ()),
                m.timestamp,
            )
            for messages in batches.values()
            for m in messages
        ]

    def assignment(self) -> set[Partition]:
        return {(tp.topic, tp.partition) for tp in self._consumer.assignment()}

    async def commit(self, next_offsets: dict[Partition, int]) -> None:
        """Commit, per partition, the offset of the next record to read."""
        offsets = {
            TopicPartition(topic, partition): OffsetAndMetadata(offset, "")
            for (topic, partition), offset in next_offsets.items()
        }
        try:
            await self._consumer.commit(offsets)
        except CommitFailedError as exc:
            raise CommitRefused(str(exc)) from exc
        except KafkaError as exc:
            raise BrokerUnavailable(f"commit failed: {exc}") from exc

    async def rewind(self, partitions: Iterable[Partition]) -> None:
        """Go back to the committed offsets, so unfinished records are fetched again."""
        assigned = self._consumer.assignment()
        for topic, partition in partitions:
            tp = TopicPartition(topic, partition)
            if tp not in assigned:
                continue
            try:
                committed = await self._consumer.committed(tp)
            except KafkaError as exc:
                raise BrokerUnavailable(f"cannot read committed offset: {exc}") from exc
            if tp not in self._consumer.assignment():
                # A rebalance took it while we asked (seeking it now would raise): the
                # new owner starts from the committed offset anyway.
                continue
            if committed is None:
                await self._consumer.seek_to_beginning(tp)
            else:
                self._consumer.seek(tp, committed)

    async def reachable(self, timeout_s: float = 2.0) -> bool:
        """Whether a broker answers a metadata request now (for readiness)."""
        # aiokafka offers no public handle on the consumer's client connection.
        client = self._consumer._client
        if not client.cluster.brokers():
            # Not connected yet (the consumer is starting): asking now would only log
            # aiokafka's ERROR "Unable to update metadata from []" at every start.
            return False
        try:
            await asyncio.wait_for(client.fetch_all_metadata(), timeout_s)
        except (KafkaError, TimeoutError, OSError):
            return False
        return True

    def highwater(self, partition: Partition) -> int | None:
        tp = TopicPartition(*partition)
        if tp not in self._consumer.assignment():
            return None  # revoked by a rebalance meanwhile; aiokafka would assert it is ours
        value: int | None = self._consumer.highwater(tp)
        return value


class OutputProducer:
    """Outcomes and dead letters, each acknowledged by all in-sync replicas."""

    def __init__(self, settings: Settings) -> None:
        self._producer = AIOKafkaProducer(
            **connection_options(settings),
            client_id="usage-ingest",
            acks="all",
            # An idempotent producer would need InitProducerId, which not every
            # Kafka-compatible broker offers; repeats are harmless here (§6).
            enable_idempotence=False,
            linger_ms=5,
            max_batch_size=_BATCH_BYTES,
            max_request_size=max(settings.max_message_bytes * 2, 1_048_576),
        )

    async def start(self) -> None:
        try:
            await self._producer.start()
        except KafkaError as exc:
            await self._producer.stop()
            raise BrokerUnavailable(f"cannot connect the producer: {exc}") from exc

    async def stop(self) -> None:
        await self._producer.stop()

    async def publish(self, records: Sequence[OutputRecord]) -> list[OutputRecord]:
        """Send all records and wait for every acknowledgement.

        Returns the records that were not acknowledged (empty when all were), so
        the caller can retry exactly those. The records go out as record batches
        built here, one per partition (more if one would pass `_BATCH_BYTES`), each
        with one acknowledgement to wait for rather than one per record.
        """
        by_partition, unsent = await self._by_partition(records)
        pending: list[tuple[list[OutputRecord], asyncio.Future[Any]]] = []
        for (topic, partition), group in by_partition.items():
            for chunk, batch in self._record_batches(group):
                batch.close()  # nothing but this chunk goes into it
                try:
                    future = await self._producer.send_batch(batch, topic, partition=partition)
                except KafkaError:
                    unsent.extend(chunk)
                    continue
                pending.append((chunk, future))
        if pending:
            await asyncio.wait([future for _, future in pending])
        failed = [
            record
            for chunk, future in pending
            if future.cancelled() or future.exception() is not None
            for record in chunk
        ]
        return unsent + failed

    async def _by_partition(
        self, records: Sequence[OutputRecord]
    ) -> tuple[dict[Partition, list[OutputRecord]], list[OutputRecord]]:
        """Records by the partition Kafka's default partitioner gives their key (murmur2,
        as the Java client; a random one without a key); those of topics whose
        partitions cannot be learnt now come back apart."""
        partitions: dict[str, list[int]] = {}
        grouped: dict[Partition, list[OutputRecord]] = {}
        unsent: list[OutputRecord] = []
        for record in records:
            if record.topic not in partitions:
                try:
                    partitions[record.topic] = sorted(
                        await self._producer.partitions_for(record.topic)
                    )
                except KafkaError:
                    partitions[record.topic] = []
            known = partitions[record.topic]
            if not known:
                unsent.append(record)
                continue
            partition = partition_for(record.key, known)
            grouped.setdefault((record.topic, partition), []).append(record)
        return grouped, unsent

    def _record_batches(
        self, records: list[OutputRecord]
    ) -> Iterator[tuple[list[OutputRecord], BatchBuilder]]:
        """The records in as few batches as `_BATCH_BYTES` allows (a batch takes its
        first record whatever its size)."""
        batch = self._producer.create_batch()
        chunk: list[OutputRecord] = []
        for record in records:
            if _append(batch, record) is None:
                if chunk:
                    yield chunk, batch
                batch, chunk = self._producer.create_batch(), []
                if _append(batch, record) is None:  # cannot happen: it is the first record
                    raise RuntimeError("an empty record batch refused a record")
            chunk.append(record)
        if chunk:
            yield chunk, batch


async def ensure_topics(
    settings: Settings, topics: Iterable[str], partitions: int = 1
) -> list[str]:
    """Create the topics that do not exist yet; returns those it created."""
    admin = AIOKafkaAdminClient(**connection_options(settings), client_id="usage-ingest-admin")
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        missing = [t for t in topics if t not in existing]
        if missing:
            # Another process may create the same topic at the same moment.
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(
                    [
                        NewTopic(name, num_partitions=partitions, replication_factor=1)
                        for name in missing
                    ]
                )
    except KafkaError as exc:
        raise BrokerUnavailable(f"cannot create topics: {exc}") from exc
    finally:
        await admin.close()
    return missing


async def follow(
    settings: Settings,
    topics: Sequence[str],
    on_value: Callable[[bytes], None],
    stop: asyncio.Event,
) -> None:
    """Hand every new record of `topics` to `on_value` until `stop` (no group, no commits)."""
    consumer = AIOKafkaConsumer(
        *topics, **connection_options(settings), group_id=None, auto_offset_reset="latest"
    )
    try:
        await consumer.start()
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=200)
            for messages in batches.values():
                for message in messages:
                    on_value(message.value or b"")
    except KafkaError as exc:
        raise BrokerUnavailable(f"cannot follow {', '.join(topics)}: {exc}") from exc
    finally:
        await consumer.stop()


# =============================================================================
# Consumer lag (`usage-ingest lag`, see `usage_ingest.lag`)
#
# Committed offsets are read the way a member of the group reads them, without
# joining it. The log end is the high watermark of a fetch response: some
# Kafka-compatible brokers under-report it in ListOffsets, so the larger of the
# two is taken. The record at the committed offset gives the time lag.
# =============================================================================

_LAG_FETCH_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class PartitionPosition:
    topic: str
    partition: int
    committed: int | None
    log_start: int
    log_end: int
    # Timestamp (ms) of the record at the committed offset: the oldest unprocessed one.
    oldest_unprocessed_ms: int | None


@dataclass(frozen=True, slots=True)
class GroupDescription:
    group_id: str
    state: str
    members: tuple[str, ...]


async def describe_group(settings: Settings, group_id: str) -> GroupDescription:
    """The group's state (Stable, Empty, Dead...) and its members' client ids and hosts."""
    admin = AIOKafkaAdminClient(**connection_options(settings), client_id="usage-ingest-lag")
    try:
        await admin.start()
        [response] = await admin.describe_consumer_groups([group_id])
        _, _, state, _, _, members = response.groups[0][:6]
        return GroupDescription(
            group_id,
            state or "Unknown",
            tuple(sorted(f"{m[1] or m[0]}@{m[2] or '?'}" for m in members)),
        )
    except KafkaError as exc:
        raise BrokerUnavailable(f"cannot describe group {group_id}: {exc}") from exc
    finally:
        await admin.close()


async def read_positions(
    settings: Settings, group_id: str, topics: Sequence[str]
) -> list[PartitionPosition]:
    """Committed offset, log end and oldest unprocessed record of every partition."""
    consumer = AIOKafkaConsumer(
        **connection_options(settings),
        group_id=group_id,
        client_id="usage-ingest-lag",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=1,
    )
    try:
        await consumer.start()
        partitions = await _partitions_of(consumer, topics)
        committed = {tp: await consumer.committed(tp) for tp in partitions}
        listed = await consumer.end_offsets(partitions) if partitions else {}
        starts = await consumer.beginning_offsets(partitions) if partitions else {}
        consumer.assign(partitions)
        for tp in partitions:
            consumer.seek(tp, committed[tp] if committed[tp] is not None else starts[tp])
        oldest = await _first_records(consumer, committed)
        return [
            PartitionPosition(
                tp.topic,
                tp.partition,
                committed[tp],
                starts[tp],
                max(listed.get(tp, 0), consumer.highwater(tp) or 0),
                oldest.get(tp),
            )
            for tp in partitions
        ]
    except KafkaError as exc:
        raise BrokerUnavailable(f"cannot read offsets of group {group_id}: {exc}") from exc
    finally:
        await consumer.stop()


async def _partitions_of(consumer: AIOKafkaConsumer, topics: Sequence[str]) -> list[TopicPartition]:
    known = await consumer.topics()
    missing = [t for t in topics if t not in known]
    if missing:
        raise BrokerUnavailable(f"no such topic: {', '.join(missing)}")
    return sorted(
        TopicPartition(topic, p)
        for topic in topics
        for p in consumer.partitions_for_topic(topic) or ()
    )


async def _first_records(
    consumer: AIOKafkaConsumer, committed: dict[TopicPartition, int | None]
) -> dict[TopicPartition, int]:
    """Timestamps of the records at the committed offsets. Fetches until every
    partition has shown that record, or a high watermark saying there is none."""
    first: dict[TopicPartition, int] = {}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _LAG_FETCH_TIMEOUT_S

    def caught_up(tp: TopicPartition) -> bool:
        high = consumer.highwater(tp)
        return high is not None and high <= consumer_position(tp)

    def consumer_position(tp: TopicPartition) -> int:
        offset = committed[tp]
        return offset if offset is not None else 0

    pending = set(committed)
    while pending and loop.time() < deadline:
        batches = await consumer.getmany(*pending, timeout_ms=200, max_records=len(pending))
        for tp, messages in batches.items():
            if messages:
                first.setdefault(tp, messages[0].timestamp)
                consumer.pause(tp)
        pending = {tp for tp in pending if tp not in first and not caught_up(tp)}
    return first


# =============================================================================
# Dead-letter replay (`usage-ingest replay`, see `usage_ingest.replay.run`)
#
# A bounded read of one topic: from the replay group's committed offsets (or
# the beginning, or a given offset) up to the log end seen at start, then it is
# done. Partitions are assigned by hand, so there is no group membership and no
# rebalance; the group only keeps the committed offsets between runs.
# =============================================================================

# A short long-poll: the log end of an empty partition is known after one fetch.
_REPLAY_FETCH_WAIT_MS = 100
_REPLAY_END_TIMEOUT_S = 15.0


class ReplayRefused(UsageIngestError):
    """The replay cannot read its source as asked (no such topic, partition or offset)."""


class ReplayReader:
    """Reads `topic` once, up to the log end each partition had at start.

    The log end is the high watermark of the first fetch response of each
    partition, learnt before any record is handed out. ListOffsets is not used
    for it: the embedded broker under-reports the latest offset (DESIGN.md).
    Records appended later (e.g. dead letters of records this run replayed) are
    never handed out, so a run cannot feed itself.

    `read_only` (dry run): offsets are read from the group but never committed.
    """

    def __init__(
        self, settings: Settings, topic: str, group_id: str, *, read_only: bool = False
    ) -> None:
        self.topic = topic
        self.group_id = group_id
        self.read_only = read_only
        self._consumer = AIOKafkaConsumer(
            **connection_options(settings),
            group_id=group_id,
            client_id="usage-ingest-replay",
            enable_auto_commit=False,
            # Only where a position is no longer on the log (retention): its earliest record.
            auto_offset_reset="earliest",
            fetch_max_wait_ms=_REPLAY_FETCH_WAIT_MS,
        )
        self._started = False
        self._partitions: list[TopicPartition] = []
        self._starts: dict[int, int] = {}
        self._ends: dict[int, int] = {}
        self._buffer: list[InputRecord] = []

    async def start(
        self,
        partitions: Sequence[int] = (),
        *,
        from_beginning: bool = False,
        offset: int | None = None,
        end_timeout_s: float = _REPLAY_END_TIMEOUT_S,
    ) -> None:
        """Position every selected partition (all when `partitions` is empty) and
        learn where each one ends; nothing is handed out before that is known."""
        try:
            await self._consumer.start()
            self._started = True
            available = await self._topic_partitions(self.topic)
            if available is None:
                raise ReplayRefused(f"topic {self.topic!r} does not exist")
            unknown = sorted(set(partitions) - available)
            if unknown:
                raise ReplayRefused(
                    f"topic {self.topic!r} has no partition {', '.join(map(str, unknown))} "
                    f"(it has {len(available)}: 0-{len(available) - 1})"
                )
            self._partitions = [
                TopicPartition(self.topic, p) for p in sorted(set(partitions) or available)
            ]
            self._consumer.assign(self._partitions)
            await self._seek(from_beginning=from_beginning, offset=offset)
            self._starts = {
                tp.partition: await self._consumer.position(tp) for tp in self._partitions
            }
            await self._learn_ends(end_timeout_s)
        except KafkaError as exc:
            raise BrokerUnavailable(f"cannot read {self.topic!r}: {exc}") from exc
        beyond = {p: s for p, s in self._starts.items() if s > self._ends[p]}
        if beyond:
            raise ReplayRefused(
                "offset beyond the end of "
                + ", ".join(f"partition {p} (ends at {self._ends[p]})" for p in sorted(beyond))
            )

    async def _topic_partitions(self, topic: str) -> set[int] | None:
        """The partitions of `topic`, None when it does not exist (before `assign`,
        the client holds the metadata of every topic, fetched when it started)."""
        if not await self.has_topic(topic):
            return None
        found: set[int] | None = self._consumer.partitions_for_topic(topic)
        if not found:
            raise BrokerUnavailable(f"no partition metadata for topic {topic!r}")
        return set(found)

    async def has_topic(self, topic: str) -> bool:
        """Whether `topic` exists (asks the broker; never creates it)."""
        try:
            names: set[str] = await self._consumer.topics()
        except KafkaError as exc:
            raise BrokerUnavailable(f"cannot read the topic list: {exc}") from exc
        return topic in names

    async def _seek(self, *, from_beginning: bool, offset: int | None) -> None:
        if offset is not None:
            for tp in self._partitions:
                self._consumer.seek(tp, offset)
            return
        if from_beginning:
            await self._consumer.seek_to_beginning(*self._partitions)
            return
        for tp in self._partitions:
            committed = await self._consumer.committed(tp)
            if committed is None:  # a group with no committed offset starts at the earliest
                await self._consumer.seek_to_beginning(tp)
            else:
                self._consumer.seek(tp, committed)

    async def _learn_ends(self, timeout_s: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            highwater = {tp.partition: self._consumer.highwater(tp) for tp in self._partitions}
            unknown = sorted(p for p, end in highwater.items() if end is None)
            if not unknown:
                break
            if loop.time() > deadline:
                raise BrokerUnavailable(
                    f"no fetch response for {self.topic!r} partition(s) "
                    f"{', '.join(map(str, unknown))} within {timeout_s:g} s: "
                    "cannot tell where they end"
                )
            batches = await self._consumer.getmany(timeout_ms=_REPLAY_FETCH_WAIT_MS)
            self._buffer.extend(_input_records(batches))
        self._ends = {p: end for p, end in highwater.items() if end is not None}
        self._buffer = [r for r in self._buffer if r.offset < self._ends[r.partition]]
        await self._pause_finished()

    @property
    def starts(self) -> dict[int, int]:
        """Per partition, the offset this run started at."""
        return dict(self._starts)

    @property
    def ends(self) -> dict[int, int]:
        """Per partition, the log end seen at start: this run reads up to it."""
        return dict(self._ends)

    @property
    def total(self) -> int:
        """How many offsets lie between the start and the end (the scan's length)."""
        return sum(max(self._ends[p] - s, 0) for p, s in self._starts.items())

    async def fetch(self, max_records: int, timeout_ms: int) -> list[InputRecord]:
        """The next records before the end, in offset order per partition."""
        if self._buffer:
            records, self._buffer = self._buffer[:max_records], self._buffer[max_records:]
            return records
        try:
            batches = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
            records = [r for r in _input_records(batches) if r.offset < self._ends[r.partition]]
            await self._pause_finished()
        except KafkaError as exc:
            raise BrokerUnavailable(f"fetch from {self.topic!r} failed: {exc}") from exc
        return records

    async def _pause_finished(self) -> None:
        """Stop fetching partitions that reached their end."""
        paused = self._consumer.paused()
        for tp in self._partitions:
            if tp not in paused and await self._consumer.position(tp) >= self._ends[tp.partition]:
                self._consumer.pause(tp)

    async def done(self) -> bool:
        """True once every record before the end has been handed out."""
        if self._buffer:
            return False
        try:
            for tp in self._partitions:
                if await self._consumer.position(tp) < self._ends[tp.partition]:
                    return False
        except KafkaError as exc:
            raise BrokerUnavailable(f"cannot read positions of {self.topic!r}: {exc}") from exc
        return True

    async def commit(self, next_offsets: dict[Partition, int]) -> None:
        """Commit, per partition, the offset of the next record to read."""
        if self.read_only:
            raise RuntimeError("a read-only (dry-run) reader never commits")
        offsets = {
            TopicPartition(topic, partition): OffsetAndMetadata(offset, "")
            for (topic, partition), offset in next_offsets.items()
        }
        try:
            await self._consumer.commit(offsets)
        except KafkaError as exc:
            raise BrokerUnavailable(f"commit to group {self.group_id!r} failed: {exc}") from exc

    async def stop(self) -> None:
        if self._started:
            self._started = False
            await self._consumer.stop()


def _input_records(batches: dict[Any, list[Any]]) -> list[InputRecord]:
    return [
        InputRecord(
            m.topic, m.partition, m.offset, m.key, m.value, tuple(m.headers or ()), m.timestamp
        )
        for messages in batches.values()
        for m in messages
    ]
