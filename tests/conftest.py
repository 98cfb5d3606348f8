"""The real servers of the integration and chaos suites, one of each per session.

Which servers, in order of preference:
1. existing ones named by environment variables
   (`USAGE_INGEST_TEST_KAFKA_BOOTSTRAP_SERVERS`, `USAGE_INGEST_TEST_DATABASE_URL`,
   the latter an admin URL on which fresh databases are created);
2. Apache Kafka and Postgres containers, when a Docker engine answers;
3. the embedded broker and Postgres of `usage_ingest.dev.embedded` (pip packages only).

They start only when a test asks for them: unit tests start nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.servers import docker_engine_answers
from usage_ingest.dev.broker import EmbeddedBroker
from usage_ingest.dev.postgres import EmbeddedPostgres


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    existing = os.environ.get("USAGE_INGEST_TEST_KAFKA_BOOTSTRAP_SERVERS")
    if existing:
        yield existing
    elif docker_engine_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer("confluentinc/cp-kafka:7.6.1").with_kraft() as kafka:
            yield kafka.get_bootstrap_server()
    else:
        with EmbeddedBroker() as broker:
            yield broker.bootstrap_servers


@pytest.fixture(scope="session")
def postgres_admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    existing = os.environ.get("USAGE_INGEST_TEST_DATABASE_URL")
    if existing:
        yield existing
    elif docker_engine_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16-alpine", driver=None) as pg:
            yield pg.get_connection_url()
    else:
        with EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "data") as server:
            yield server.url
