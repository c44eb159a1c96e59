-- API tokens (stored hashed) and idempotency keys of intake requests.

CREATE TABLE api_tokens (
    id          UUID PRIMARY KEY,
    name        TEXT NOT NULL,
    -- SHA-256 of the token, hex; the token itself is shown once and never stored.
    hash        TEXT NOT NULL UNIQUE,
    scopes      TEXT[] NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at  TIMESTAMPTZ
);

CREATE TABLE idempotency_keys (
    key          TEXT NOT NULL,
    token_id     UUID NOT NULL,
    request_hash TEXT NOT NULL,
    site_id      UUID NOT NULL,
    saga_id      UUID NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (token_id, key)
);
