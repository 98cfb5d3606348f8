-- What every worker reports of itself, for the operations console (`usage-ingest api`),
-- which neither knows where the workers run nor sees their Prometheus counters. Each
-- worker writes only its own rows, every report interval (10 s), off its batch loop.

-- One row per worker process: its last readiness check, as its /readyz answers it.
CREATE TABLE worker_heartbeats (
    -- host:pid:random, new for every process (a restarted worker is a new one).
    worker_id           text PRIMARY KEY,
    host                text NOT NULL,
    pid                 integer NOT NULL,
    group_id            text NOT NULL,
    ready               boolean NOT NULL,
    -- {"group": bool, "database": bool, "broker": bool}, as /readyz has them.
    checks              jsonb NOT NULL,
    started_at          timestamptz NOT NULL,
    -- The database's clock, so that "stale" does not depend on the worker's.
    reported_at         timestamptz NOT NULL,
    -- How often this worker reports: three intervals without a report make it stale.
    report_interval_s   double precision NOT NULL,
    -- Set by the last report of a worker that stopped; NULL while it runs (or if it died).
    stopped_at          timestamptz
);

CREATE INDEX worker_heartbeats_reported_at_idx ON worker_heartbeats (reported_at);

-- Outcomes per worker and minute, as usage_ingest_events_total counts them. The key
-- starts with the worker: no two workers ever write the same row.
CREATE TABLE worker_outcome_counts (
    worker_id   text NOT NULL,
    -- UTC, the start of the minute (the worker's clock).
    minute      timestamptz NOT NULL,
    -- created, duplicate or rejected.
    status      text NOT NULL,
    -- The first error's code of a rejection; '' else.
    code        text NOT NULL,
    count       bigint NOT NULL CHECK (count >= 0),
    PRIMARY KEY (worker_id, minute, status, code)
);

CREATE INDEX worker_outcome_counts_minute_idx ON worker_outcome_counts (minute);
