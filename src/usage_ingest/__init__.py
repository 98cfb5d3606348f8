"""usage-ingest: usage events from Kafka to Postgres, idempotently, with an outcome for each."""
