"""Settings of a test's own: topics and a consumer group that no other test uses."""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import SecretStr

from usage_ingest.kafka.admin import ensure_topics
from usage_ingest.settings import Settings

# The embedded broker holds a group join for about half the session timeout.
TEST_SESSION_TIMEOUT_MS = 3000
INPUT_PARTITIONS = 3


def make_settings(kafka_bootstrap: str, database_url: str | None, **overrides: Any) -> Settings:
    """Settings with topics and a group of their own."""
    run = uuid.uuid4().hex[:8]
    values: dict[str, Any] = {
        "kafka_bootstrap_servers": kafka_bootstrap,
        "database_url": SecretStr(database_url) if database_url else None,
        "group_id": f"g-{run}",
        "topic_events": f"events-{run}",
        "topic_accepted": f"accepted-{run}",
        "topic_rejected": f"rejected-{run}",
        "topic_dlq": f"dlq-{run}",
        "kafka_session_timeout_ms": TEST_SESSION_TIMEOUT_MS,
        "batch_max_wait_ms": 100,
        "retry_initial_backoff_s": 0.05,
        "retry_max_backoff_s": 0.5,
        "shutdown_grace_s": 5.0,
        "metrics_port": 0,  # tests that read metrics ask for a free port
    }
    values.update(overrides)
    return Settings(**values)


async def create_topics(settings: Settings) -> None:
    await ensure_topics(settings, [settings.topic_events], partitions=INPUT_PARTITIONS)
    await ensure_topics(settings, settings.output_topics)
