-- The read side (SPEC-API.md, "The read side"; SPEC.md §7): every refusal the worker
-- decided, written in the same transaction as its batch's usages, and the indexes the
-- read side's filters use. Nothing here rewrites `usages`: new indexes only.

CREATE TABLE usage_rejections (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- NULL when the record could not be read far enough to tell.
    external_reference  text,
    -- [{"code", "field", "message"}], as on the outcome (§5).
    errors              jsonb NOT NULL,
    -- The codes of `errors`, for the `code` filter (any of them matches).
    codes               text[] NOT NULL,
    retryable           boolean NOT NULL,
    source_topic        text NOT NULL,
    source_partition    integer NOT NULL,
    source_offset       bigint NOT NULL,
    -- The source record's timestamp, milliseconds since the epoch; NULL when it has none.
    source_timestamp    timestamptz,
    failed_at           timestamptz NOT NULL,
    replay_count        integer NOT NULL DEFAULT 0,
    -- A re-delivered record adds no second row.
    UNIQUE (source_topic, source_partition, source_offset)
);

CREATE INDEX usage_rejections_failed_at_idx ON usage_rejections (failed_at DESC, id DESC);
CREATE INDEX usage_rejections_reference_idx ON usage_rejections (external_reference);
CREATE INDEX usage_rejections_codes_idx ON usage_rejections USING gin (codes);

-- GET /usages and /usage-summaries: one contract (or debtor, inventory) and a period.
CREATE INDEX usages_contract_start_idx ON usages (contract_id, start_date, id);
CREATE INDEX usages_debtor_start_idx ON usages (debtor_id, start_date, id);
CREATE INDEX usages_inventory_start_idx ON usages (inventory_id, start_date, id);
CREATE INDEX usages_start_idx ON usages (start_date, id);
CREATE INDEX usages_received_idx ON usages (received_at, id);
