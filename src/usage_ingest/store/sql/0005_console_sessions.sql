-- Sessions of the operations console (`usage-ingest api`, /console). Signing in with an
-- API key makes one: the browser keeps a random token in a cookie, and only the token's
-- sha256 is stored here, never the token or the key. Every request reads the key again
-- through `key_id`, so a revoked key ends its sessions at once.

CREATE TABLE console_sessions (
    -- sha256 of the session token, hex.
    token_hash  text PRIMARY KEY CHECK (token_hash ~ '^[0-9a-f]{64}$'),
    key_id      text NOT NULL REFERENCES api_keys (key_id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);

-- Signing in deletes the expired sessions.
CREATE INDEX console_sessions_expires_at_idx ON console_sessions (expires_at);
