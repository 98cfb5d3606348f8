-- API keys of the HTTP API (SPEC-API.md, "Authentication and permissions").
-- A key is `uik_<key_id>_<secret>`; only its sha256 is stored. The key id is not
-- secret (it is how `api-key list` and `api-key revoke` name a key).

CREATE TABLE api_keys (
    key_id       text PRIMARY KEY CHECK (key_id ~ '^[0-9a-f]{12}$'),
    name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    -- sha256 of the whole key, hex.
    key_hash     text NOT NULL CHECK (key_hash ~ '^[0-9a-f]{64}$'),
    permissions  text[] NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz
);
